"""Character- and byte-level tokenizers, and their JSON-able description that checkpoints keep.

A character vocabulary is built from the training text, so a model trained on it can only be
sampled with the same vocabulary: `info` describes a tokenizer in a few JSON values and
`from_info` rebuilds it, which is how `--mode=sample` decodes text without reading any data.
"""

from typing import Callable, Protocol

import numpy as np

from aigc_jax.errors import UserError

KINDS = ('char', 'byte')


class Tokenizer(Protocol):
  """Text to int32 token ids and back."""
  vocab_size: int
  unit: str  # what one token is: 'char' or 'byte' (names the bits-per-<unit> metric)

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

  def encode(self, text: str, what: str = 'the text') -> np.ndarray:
    del what  # every text has a UTF-8 encoding
    return np.frombuffer(text.encode('utf-8'), np.uint8).astype(np.int32)

  def decode(self, ids: np.ndarray) -> str:
    return bytes(np.asarray(ids, np.uint8)).decode('utf-8', errors='replace')

  @property
  def info(self) -> dict[str, str]:
    return {'tokenizer': 'byte'}


def build(kind: str, train_text: str) -> Tokenizer:
  """A tokenizer of `kind` ('char' or 'byte'); a char vocabulary is that of `train_text`."""
  if kind == 'char':
    return CharTokenizer(train_text)
  if kind == 'byte':
    return ByteTokenizer()
  raise UserError(f"data.tokenizer={kind!r} is unknown: use one of {KINDS}")


def from_info(info: dict[str, str] | None) -> Tokenizer:
  """The tokenizer `info` (a `Tokenizer.info`, e.g. from a checkpoint) describes."""
  kind = (info or {}).get('tokenizer')
  if kind == 'char':
    return CharTokenizer(info['vocab'])
  if kind == 'byte':
    return ByteTokenizer()
  raise UserError(f'no tokenizer is recorded in {info!r}: the checkpoints were not written by a language model; '
                  'use the config that wrote them, or a new workdir')


def resolve(kind: str, data_info: dict[str, str] | None, train_text: Callable[[], str]) -> Tokenizer:
  """The tokenizer `data_info` records (from a checkpoint: it must be of `kind`), else a new one of `kind`.

  A new char vocabulary is that of `train_text()`, read only then.
  """
  if not data_info:
    return build(kind, train_text())
  tokenizer = from_info(data_info)
  if tokenizer.unit != kind:
    raise UserError(f'data.tokenizer={kind!r}, but the checkpoints were trained with {tokenizer.unit!r}: set '
                    f'data.tokenizer={tokenizer.unit!r}, or use a new workdir')
  return tokenizer
