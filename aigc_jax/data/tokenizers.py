"""Character-, byte- and BPE tokenizers, and their JSON-able description that checkpoints keep.

A character vocabulary is built from the training text, so a model trained on it can only be
sampled with the same vocabulary: `info` describes a tokenizer in a few JSON values and
`from_info` rebuilds it, which is how `--mode=sample` decodes text without reading any data. A BPE tokenizer (GPT-2's
byte-level BPE, `data/bpe.py`) is kept whole, as its tokenizer.json.
"""

from typing import Callable, Protocol

import numpy as np

from aigc_jax.errors import UserError

KINDS = ('char', 'byte', 'bpe')


class Tokenizer(Protocol):
  """Text to int32 token ids and back."""
  vocab_size: int
  unit: str  # what one token is: 'char', 'byte' or 'token' (BPE) (names the bits-per-<unit> metric)
  end_id: int | None  # the end-of-text token (BPE's <|endoftext|>), if the vocabulary has one

  def encode(self, text: str, what: str = 'the text') -> np.ndarray:
    """int32 [len] token ids of `text`; `what` names the text in errors."""

  def decode(self, ids: np.ndarray) -> str:
    """The text of token ids."""

  @property
  def info(self) -> dict[str, str]:
    """A JSON-able description from which `from_info` rebuilds this tokenizer."""


class CharTokenizer:
  """One token per Unicode character of a fixed vocabulary, ids in code-point order."""
  unit = 'char'
  end_id = None

  def __init__(self, text: str):
    """The vocabulary is the set of characters of `text` (a training text, or a saved vocabulary)."""
    self.vocab = ''.join(sorted(set(text)))
    self.vocab_size = len(self.vocab)
    self._codes_V = np.frombuffer(self.vocab.encode('utf-32-le'), np.uint32)

  def encode(self, text: str, what: str = 'the text') -> np.ndarray:
    codes_N = np.frombuffer(text.encode('utf-32-le'), np.uint32)
    ids_N = np.searchsorted(self._codes_V, codes_N)
    unknown = self._codes_V[np.minimum(ids_N, self.vocab_size - 1)] != codes_N
    if unknown.any():
      chars = ''.join(sorted({chr(c) for c in codes_N[unknown]}))
      raise UserError(f'{what} has characters outside the vocabulary of the training text: {chars[:20]!r}; '
                      "remove them, or train with data.tokenizer='byte'")
    return ids_N.astype(np.int32)

  def decode(self, ids: np.ndarray) -> str:
    return ''.join(self.vocab[i] for i in np.asarray(ids).tolist())

  @property
  def info(self) -> dict[str, str]:
    return {'tokenizer': 'char', 'vocab': self.vocab}


class ByteTokenizer:
  """The 256 byte values of the UTF-8 encoding: any text, no vocabulary to keep."""
  unit = 'byte'
  vocab_size = 256
  end_id = None

  def encode(self, text: str, what: str = 'the text') -> np.ndarray:
    del what  # every text has a UTF-8 encoding
    return np.frombuffer(text.encode('utf-8'), np.uint8).astype(np.int32)

  def decode(self, ids: np.ndarray) -> str:
    return bytes(np.asarray(ids, np.uint8)).decode('utf-8', errors='replace')

  @property
  def info(self) -> dict[str, str]:
    return {'tokenizer': 'byte'}


class BPETokenizer:
  """GPT-2's byte-level BPE (Hugging Face `tokenizers`): any text, `<|endoftext|>` as one token."""
  unit = 'token'

  def __init__(self, tokenizer_json: str):
    """The tokenizer a tokenizer.json's text describes (`bpe.load(dir).to_str()`, or a checkpoint's copy)."""
    from aigc_jax.data import bpe  # not at import: `python -m aigc_jax.data.bpe` runs it as __main__
    self._json = tokenizer_json
    self._tok = bpe.from_json(tokenizer_json)
    self.vocab_size = self._tok.get_vocab_size()
    self.end_id = self._tok.token_to_id(bpe.END_OF_TEXT)

  def encode(self, text: str, what: str = 'the text') -> np.ndarray:
    del what  # every text has a UTF-8 encoding, and every byte a token
    return np.asarray(self._tok.encode(text).ids, np.int32)

  def decode(self, ids: np.ndarray) -> str:
    return self._tok.decode(np.asarray(ids).tolist(), skip_special_tokens=False)

  @property
  def info(self) -> dict[str, str]:
    return {'tokenizer': 'bpe', 'tokenizer_json': self._json}


def build(kind: str, train_text: str, bpe_dir: str = '') -> Tokenizer:
  """A tokenizer of `kind`: a char vocabulary is that of `train_text`, a BPE that of `bpe_dir`'s files."""
  if kind == 'char':
    return CharTokenizer(train_text)
  if kind == 'byte':
    return ByteTokenizer()
  if kind == 'bpe':
    if not bpe_dir:
      raise UserError("data.tokenizer='bpe' needs data.bpe_dir: a folder with GPT-2's vocab.json + merges.txt "
                      '(or tokenizer.json), or one made by python -m aigc_jax.data.bpe')
    from aigc_jax.data import bpe
    return BPETokenizer(bpe.load(bpe_dir).to_str())
  raise UserError(f"data.tokenizer={kind!r} is unknown: use one of {KINDS}")


def from_info(info: dict[str, str] | None) -> Tokenizer:
  """The tokenizer `info` (a `Tokenizer.info`, e.g. from a checkpoint) describes."""
  kind = (info or {}).get('tokenizer')
  if kind == 'char':
    return CharTokenizer(info['vocab'])
  if kind == 'byte':
    return ByteTokenizer()
  if kind == 'bpe':
    return BPETokenizer(info['tokenizer_json'])
  raise UserError(f'no tokenizer is recorded in {info!r}: the checkpoints were not written by a language model; '
                  'use the config that wrote them, or a new workdir')


def resolve(kind: str, data_info: dict[str, str] | None, train_text: Callable[[], str],
            bpe_dir: str = '') -> Tokenizer:
  """The tokenizer `data_info` records (from a checkpoint: it must be of `kind`), else a new one of `kind`.

  A new char vocabulary is that of `train_text()`, read only then; a BPE is that of `bpe_dir`.
  """
  if not data_info:
    return build(kind, train_text() if kind == 'char' else '', bpe_dir)
  recorded = data_info.get('tokenizer')
  if recorded != kind:
    raise UserError(f'data.tokenizer={kind!r}, but the checkpoints were trained with {recorded!r}: set '
                    f'data.tokenizer={recorded!r}, or use a new workdir')
  return from_info(data_info)
