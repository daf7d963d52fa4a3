"""GPT-2: byte-level BPE, Hugging Face checkpoints in and out, and generate() as transformers has it.

The transformers checks build one small `GPT2LMHeadModel` with random weights, train it briefly on
a sonnet (so that its next-token distributions are peaked and beams differ), and save it as
`save_pretrained` does; they skip without torch and transformers.
"""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aigc_jax.data import bpe
from aigc_jax.data import tokenizers
from aigc_jax.errors import UserError
from aigc_jax.interop import gpt2
from aigc_jax.methods import generation
from aigc_jax.methods.beam_search import beam_search
from aigc_jax.models.transformer import Transformer
from aigc_jax.train import loop
from configs import gpt2 as gpt2_config
from tests.conftest import shrink_training
from tests.test_lm import SONNET

VOCAB = 300
CONTEXT = 64
ODD_TEXT = 'naïve café 🙂👍🏽 中文字符 日本語 한국어 \x00\x01\x07\x1b[0m\r\n\t \u200b\ufeff <|endoftext|> end'


@pytest.fixture(scope='module')
def bpe_dir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('bpe'))
  assert bpe.train(SONNET, VOCAB, out) == VOCAB
  return out


def test_bpe_files_and_end_of_text_as_gpt2_has_them(bpe_dir):
  assert sorted(os.listdir(bpe_dir)) == ['merges.txt', 'tokenizer.json', 'tokenizer_config.json', 'vocab.json']
  with open(os.path.join(bpe_dir, 'vocab.json'), encoding='utf-8') as f:
    vocab = json.load(f)
  assert len(vocab) == VOCAB and vocab[bpe.END_OF_TEXT] == VOCAB - 1  # the last id, as GPT-2's 50256
  tok = tokenizers.build('bpe', '', bpe_dir)
  np.testing.assert_array_equal(tok.encode('to be <|endoftext|>')[-1:], [VOCAB - 1])
  assert len(tok.encode('Shall I compare thee')) <= 12  # merges were learned (20 bytes)


def test_bpe_round_trips_any_utf8_text(bpe_dir):
  tok = tokenizers.build('bpe', '', bpe_dir)
  rng = np.random.default_rng(0)
  random_text = ''.join(chr(c) for c in rng.integers(1, 0x2FFFF, 400) if not 0xD800 <= c < 0xE000)
  for text in (ODD_TEXT, random_text, SONNET):
    assert tok.decode(tok.encode(text)) == text
  from_files = bpe.load(bpe_dir)  # its tokenizer.json
  os.rename(os.path.join(bpe_dir, 'tokenizer.json'), os.path.join(bpe_dir, 'tokenizer.json.aside'))
  try:  # vocab.json + merges.txt alone (GPT-2's two files) tokenize the same
    np.testing.assert_array_equal(tokenizers.build('bpe', '', bpe_dir).encode(random_text + ODD_TEXT),
                                  from_files.encode(random_text + ODD_TEXT).ids)
  finally:
    os.rename(os.path.join(bpe_dir, 'tokenizer.json.aside'), os.path.join(bpe_dir, 'tokenizer.json'))
  again = tokenizers.from_info(json.loads(json.dumps(tok.info)))  # as a checkpoint keeps it
  np.testing.assert_array_equal(again.encode(random_text), tok.encode(random_text))


def _torch_and_transformers():
  """torch and transformers, or a skip. A torchvision built for another torch (it breaks transformers'
  imports of GPT-2, which needs none of it) is hidden."""
  torch = pytest.importorskip('torch', reason='torch is not installed')
  try:
    import torchvision  # noqa: F401
  except Exception:  # e.g. RuntimeError: operator torchvision::nms does not exist
    sys.modules['torchvision'] = None
  return torch, pytest.importorskip('transformers', reason='transformers is not installed')


def test_bpe_ids_equal_transformers_gpt2_tokenizer(bpe_dir):
  _, transformers = _torch_and_transformers()
  tok = tokenizers.build('bpe', '', bpe_dir)
  theirs = [transformers.GPT2TokenizerFast.from_pretrained(bpe_dir),
            transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(bpe_dir, 'tokenizer.json'))]
  for text in (ODD_TEXT, SONNET[:600]):
    for t in theirs:
      assert t(text)['input_ids'] == tok.encode(text).tolist()
      assert t.decode(tok.encode(text)) == text


# ------------------------------------------------------------------ checkpoints without transformers

SETTINGS = {'vocab_size': VOCAB, 'block_size': CONTEXT, 'num_layers': 2, 'num_heads': 2, 'width': 32,
            'activation': 'gelu_tanh', 'use_bias': True}


@pytest.fixture(scope='module')
def ours():
  """Our GPT-2-shaped Transformer with random weights (biases drawn too), and its jitted forward."""
  model = Transformer(**SETTINGS)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, CONTEXT), jnp.int32))['params']
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  return model, params, jax.jit(lambda p, tok: model.apply({'params': p}, tok))


def test_export_then_import_is_the_identity(ours, bpe_dir, tmp_path):
  model, params, _ = ours
  tok = tokenizers.build('bpe', '', bpe_dir)
  gpt2.save(str(tmp_path), jax.device_get(params), SETTINGS, tok.info['tokenizer_json'])
  settings, back = gpt2.load(str(tmp_path), CONTEXT)
  assert settings == SETTINGS
  jax.tree.map(np.testing.assert_array_equal, back, jax.device_get(params))
  np.testing.assert_array_equal(tokenizers.build('bpe', '', str(tmp_path)).encode(ODD_TEXT), tok.encode(ODD_TEXT))


def _edit(folder, config=None, drop=None, reshape=None):
  """The GPT-2 folder with config.json values changed, a tensor dropped or one cut short."""
  if config:
    with open(os.path.join(folder, 'config.json')) as f:
      c = json.load(f)
    with open(os.path.join(folder, 'config.json'), 'w') as f:
      json.dump({**c, **config}, f)
  if drop or reshape:
    from safetensors.numpy import load_file, save_file
    tensors = load_file(os.path.join(folder, 'model.safetensors'))
    tensors.pop(drop, None)
    if reshape:
      tensors[reshape] = tensors[reshape][:-1]
    save_file(tensors, os.path.join(folder, 'model.safetensors'), metadata={'format': 'pt'})


@pytest.mark.parametrize('edit, message', [
    (dict(config={'model_type': 'llama'}), "model_type='llama', not a GPT-2"),
    (dict(config={'activation_function': 'relu'}), "activation_function='relu'"),
    (dict(config={'n_inner': 64}), 'n_inner=64'),
    (dict(config={'scale_attn_by_inverse_layer_idx': True}), 'scale_attn_by_inverse_layer_idx=True'),
    (dict(drop='transformer.h.1.mlp.c_fc.bias'), "no tensor 'h.1.mlp.c_fc.bias'"),
    (dict(reshape='transformer.h.0.attn.c_attn.weight'), "'h.0.attn.c_attn.weight' has shape [31, 96]"),
    (dict(config={'n_layer': 1}), "tensor our GPT-2 has no place for: 'h.1."),
])
def test_import_errors_are_one_line_naming_the_problem(ours, tmp_path, edit, message):
  _, params, _ = ours
  gpt2.save(str(tmp_path), jax.device_get(params), SETTINGS, None)
  _edit(str(tmp_path), **edit)
  with pytest.raises(UserError) as e:
    gpt2.load(str(tmp_path), CONTEXT)
  assert message in str(e.value) and '\n' not in str(e.value), str(e.value)


def test_train_and_sample_start_from_init_from_and_export_writes_the_checkpoint(ours, bpe_dir, tmp_path):
  model, params, _ = ours
  init = str(tmp_path / 'init')
  gpt2.save(init, jax.device_get(params), SETTINGS, tokenizers.build('bpe', '', bpe_dir).info['tokenizer_json'])
  (tmp_path / 'sonnet.txt').write_text(SONNET, encoding='utf-8')
  config = shrink_training(gpt2_config.get_config())
  config.init_from = init  # the sizes and the tokenizer come from it
  config.data.text_file = str(tmp_path / 'sonnet.txt')
  config.data.block_size = 16
  config.training.sample_every = 0
  config.sample.update({'method': 'greedy', 'num': 2, 'prompt': 'Shall I', 'length': 6})

  # Sampling a workdir without checkpoints takes init_from's weights, and writes step_0.jsonl.
  out = loop.sample(config, str(tmp_path / 'fresh'))
  prompt = tokenizers.build('bpe', '', bpe_dir).encode('Shall I')[None]
  want = generation.generate(model, params, prompt, jax.random.PRNGKey(0), 6, temperature=0.0)[0][0, prompt.shape[1]:]
  with open(tmp_path / 'fresh' / 'samples' / 'step_0.jsonl', encoding='utf-8') as f:
    records = [json.loads(line) for line in f]
  assert records == out['records'] and len(records) == 2
  assert records[0]['prompt'] == 'Shall I' and records[0]['tokens'] == np.asarray(want).tolist()
  assert out['text'][0] == 'Shall I' + records[0]['text'] and len(records[0]['logprobs']) == 6

  # Training starts from them (lr 3e-5: a few steps move them little), and export writes what it trained.
  state = loop.train(config, str(tmp_path / 'run'))
  trained = jax.device_get(state.ema_params)
  start = jax.tree.map(lambda p: p[:16] if p.shape[0] == CONTEXT else p, jax.device_get(params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-3), trained, start)
  assert gpt2.export(str(tmp_path / 'run'), str(tmp_path / 'out')) == 4
  settings, back = gpt2.load(str(tmp_path / 'out'), 16)
  assert settings == {**SETTINGS, 'block_size': 16}
  jax.tree.map(np.testing.assert_array_equal, back, trained)


# ------------------------------------------------------------------ against transformers


@pytest.fixture(scope='module')
def hf(bpe_dir, tmp_path_factory):
  """A transformers GPT2LMHeadModel (2 layers, width 32) trained 150 steps on the sonnet, saved twice:
  by save_pretrained (model.safetensors) and by torch.save (pytorch_model.bin)."""
  torch, transformers = _torch_and_transformers()
  torch.set_num_threads(1)  # a tiny model: threads only contend
  torch.manual_seed(0)
  config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=CONTEXT, n_embd=32, n_layer=2, n_head=2,
                                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                   bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1)
  model = transformers.GPT2LMHeadModel(config)
  ids = torch.tensor(tokenizers.build('bpe', '', bpe_dir).encode(SONNET), dtype=torch.long)
  opt = torch.optim.Adam(model.parameters(), lr=1e-2)
  gen = torch.Generator().manual_seed(0)
  for _ in range(150):
    starts = torch.randint(0, len(ids) - 33, (16,), generator=gen)
    batch = torch.stack([ids[s:s + 33] for s in starts])
    loss = model(batch, labels=batch).loss
    opt.zero_grad()
    loss.backward()
    opt.step()
  model.eval()
  st = str(tmp_path_factory.mktemp('hf_safetensors'))
  model.save_pretrained(st, safe_serialization=True)
  pt = str(tmp_path_factory.mktemp('hf_bin'))
  model.config.save_pretrained(pt)
  torch.save(model.state_dict(), os.path.join(pt, 'pytorch_model.bin'))
  return torch, transformers, model, st, pt, loss.item()


def _hf_logits(torch, model, tok):
  with torch.no_grad():
    return model(torch.tensor(np.asarray(tok), dtype=torch.long)).logits.numpy()


def test_imported_logits_equal_transformers_and_export_reloads(hf, bpe_dir, tmp_path):
  torch, transformers, model, st, pt, loss = hf
  assert loss < 3.0  # trained: peaked next-token distributions
  tok = np.random.default_rng(0).integers(0, VOCAB, (3, CONTEXT))
  want = _hf_logits(torch, model, tok)
  ours_model = Transformer(**SETTINGS)
  for folder in (st, pt):
    settings, params = gpt2.load(folder, CONTEXT)
    assert settings == SETTINGS
    np.testing.assert_allclose(ours_model.apply({'params': params}, tok), want, atol=1e-4)
  tokenizer_json = tokenizers.build('bpe', '', bpe_dir).info['tokenizer_json']
  gpt2.save(str(tmp_path), params, settings, tokenizer_json)
  again = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path))
  np.testing.assert_allclose(_hf_logits(torch, again, tok), want, atol=1e-4)
  assert transformers.AutoTokenizer.from_pretrained(str(tmp_path))(ODD_TEXT)['input_ids'] == \
      tokenizers.build('bpe', '', bpe_dir).encode(ODD_TEXT).tolist()


PROMPTS = ['Shall I compare', 'And every fair from fair', 'So long']
NEW = 24


@pytest.fixture(scope='module')
def setup(hf, bpe_dir):
  """The imported model, the prompts' ids, transformers' generate, and the newline token as EOS."""
  torch, transformers, model, st, _, _ = hf
  _, params = gpt2.load(st, CONTEXT)
  tok = tokenizers.build('bpe', '', bpe_dir)
  prompts = [tok.encode(p).tolist() for p in PROMPTS]
  eos = int(tok.encode('\n')[0])

  def theirs(batch, **kw):
    padded, start = generation.left_pad(batch, eos)
    mask = (np.arange(padded.shape[1]) >= start[:, None]).astype(np.int64)
    with torch.no_grad():
      out = model.generate(torch.tensor(padded, dtype=torch.long), attention_mask=torch.tensor(mask),
                           max_new_tokens=NEW, eos_token_id=eos, pad_token_id=eos, do_sample=False, **kw)
    return padded, start, out.numpy()
  return Transformer(**SETTINGS), params, prompts, eos, theirs


def _check(ours_BL, theirs_BL, eos):
  """transformers cuts its output after the longest row; the rest of ours is the EOS filling."""
  np.testing.assert_array_equal(ours_BL[:, :theirs_BL.shape[1]], theirs_BL)
  assert np.all(ours_BL[:, theirs_BL.shape[1]:] == eos)


def test_greedy_equals_transformers_alone_and_batched(setup):
  model, params, prompts, eos, theirs = setup
  run = jax.jit(lambda p, pr, st: generation.generate(model, p, pr, jax.random.PRNGKey(0), NEW, temperature=0.0,
                                                      end_id=eos, start_B=st)[0])
  for batch in [prompts] + [[p] for p in prompts]:
    padded, start, want = theirs(batch, num_beams=1)
    _check(np.asarray(run(params, padded, start)), want, eos)


@pytest.mark.parametrize('length_penalty, early_stopping', [(1.0, True), (0.6, True), (1.0, False)])
def test_beam_search_equals_transformers_alone_and_batched(setup, length_penalty, early_stopping):
  model, params, prompts, eos, theirs = setup
  kw = dict(num_beams=5, no_repeat_ngram_size=2, length_penalty=length_penalty, early_stopping=early_stopping)
  run = jax.jit(lambda p, pr, st: beam_search(model, p, pr, NEW, 5, length_penalty, 2, eos, early_stopping, st))
  ended = 0
  alone = prompts if (length_penalty, early_stopping) == (1.0, True) else prompts[:1]
  for batch in [prompts] + [[p] for p in alone]:
    padded, start, want = theirs(batch, **kw)
    beams = jax.device_get(run(params, padded, start))
    _check(beams.tokens_BL, want, eos)
    ended += int(np.sum(beams.num_new_B < NEW))
  assert ended > 0  # some best hypothesis ended at the EOS inside the new tokens
