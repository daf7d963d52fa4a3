"""GPT-2's byte-level BPE through Hugging Face `tokenizers`: trained on any text, or read from GPT-2's files.

    python -m aigc_jax.data.bpe --text=input.txt --vocab_size=1024 --out=bpe_dir

writes `vocab.json` + `merges.txt` (GPT-2's two files) and `tokenizer.json` (the same tokenizer
in one file) into `bpe_dir`; train on it with `--config.data.tokenizer=bpe
--config.data.bpe_dir=bpe_dir`. GPT-2's own files (vocab.json + merges.txt, or tokenizer.json, as
Hugging Face's `gpt2` repository holds them) load the same way. Text is split as GPT-2 splits it,
every UTF-8 byte is a base token (so any text round-trips), and `<|endoftext|>` is the last id,
as in GPT-2 (50256 of 50257).
"""

import json
import os

from absl import app
from absl import flags

from aigc_jax.errors import UserError

END_OF_TEXT = '<|endoftext|>'
FILES = ('vocab.json', 'merges.txt', 'tokenizer.json')


def _gpt2_pipeline(tok):
  """GPT-2's pre-tokenization (its regex, no prefix space), byte-level decoding and `<|endoftext|>`."""
  from tokenizers import decoders, pre_tokenizers, processors
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.post_processor = processors.ByteLevel(trim_offsets=False)
  tok.add_special_tokens([END_OF_TEXT])
  return tok


def load(bpe_dir: str):
  """The `tokenizers.Tokenizer` of `bpe_dir`: its tokenizer.json, or else its vocab.json + merges.txt."""
  from tokenizers import Tokenizer, models
  path = os.path.join(bpe_dir, 'tokenizer.json')
  if os.path.isfile(path):
    try:
      return Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises a bare Exception on a malformed file
      raise UserError(f'{path} is not a tokenizers file ({" ".join(str(e).split())[:200]})') from None
  vocab, merges = os.path.join(bpe_dir, 'vocab.json'), os.path.join(bpe_dir, 'merges.txt')
  if not (os.path.isfile(vocab) and os.path.isfile(merges)):
    raise UserError(f'data.bpe_dir={bpe_dir!r} holds neither tokenizer.json nor vocab.json + merges.txt: '
                    'point it to GPT-2\'s tokenizer files, or make them with python -m aigc_jax.data.bpe')
  return _gpt2_pipeline(Tokenizer(models.BPE.from_file(vocab, merges)))


def from_json(text: str):
  """The `tokenizers.Tokenizer` of a tokenizer.json's text (as a checkpoint keeps it)."""
  from tokenizers import Tokenizer
  return Tokenizer.from_str(text)


def save(tok, out: str, max_length: int = 1024) -> int:
  """Writes `tok` as GPT-2's files (FILES, and a tokenizer_config.json for transformers) into `out`.

  Returns the id of `<|endoftext|>`, which vocab.json lists as GPT-2's does.
  """
  os.makedirs(out, exist_ok=True)
  tok.save(os.path.join(out, 'tokenizer.json'))
  tok.model.save(out)  # vocab.json and merges.txt, without the special token
  end_id = tok.token_to_id(END_OF_TEXT)
  with open(os.path.join(out, 'vocab.json'), encoding='utf-8') as f:
    vocab = json.load(f)
  vocab[END_OF_TEXT] = end_id
  with open(os.path.join(out, 'vocab.json'), 'w', encoding='utf-8') as f:
    json.dump(vocab, f, ensure_ascii=False)
  with open(os.path.join(out, 'tokenizer_config.json'), 'w', encoding='utf-8') as f:
    json.dump({'tokenizer_class': 'GPT2Tokenizer', 'model_max_length': max_length, 'add_prefix_space': False,
               'bos_token': END_OF_TEXT, 'eos_token': END_OF_TEXT, 'unk_token': END_OF_TEXT}, f, indent=2)
  return end_id


def train(text: str, vocab_size: int, out: str) -> int:
  """Learns a byte-level BPE of `vocab_size` ids (the last `<|endoftext|>`) on `text`, writing FILES into `out`."""
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers
  if vocab_size < 258:
    raise UserError(f'--vocab_size={vocab_size} must be at least 258: the 256 bytes, one merge and {END_OF_TEXT}')
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator([text], trainer)
  tok = _gpt2_pipeline(tok)  # <|endoftext|> gets the next id, the last
  save(tok, out)
  return tok.get_vocab_size()


def main(argv: list[str]) -> None:
  del argv
  with open(flags.FLAGS.text, encoding='utf-8') as f:
    text = f.read()
  try:
    n = train(text, flags.FLAGS.vocab_size, flags.FLAGS.out)
  except UserError as e:
    raise SystemExit(f'error: {e}') from None
  print(f'wrote {", ".join(os.path.join(flags.FLAGS.out, f) for f in FILES)}: {n} tokens')


if __name__ == '__main__':
  flags.DEFINE_string('text', None, 'UTF-8 text file to learn the merges from', required=True)
  flags.DEFINE_integer('vocab_size', None, 'number of token ids, <|endoftext|> included', required=True)
  flags.DEFINE_string('out', None, 'folder to write vocab.json, merges.txt and tokenizer.json into', required=True)
  app.run(main)
