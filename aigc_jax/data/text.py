"""Text data sets as token ids in host memory, from a UTF-8 file or a TFDS text data set.

Sources, by config: any UTF-8 file (`data.text_file`, its last `data.val_fraction` the
'validation' split, as nanoGPT splits Tiny Shakespeare), or a TFDS data set with a 'text'
feature (`data.name`, e.g. 'tiny_shakespeare'), prepared offline from `data.manual_dir`
when it holds the file TFDS would download (for tiny_shakespeare: input.txt).

In a multi-process run every process reads the whole text (a character vocabulary must be
the same everywhere, and a TFDS text split is often one record) and keeps its contiguous
shard of the tokens (`data.shards`).
"""

import os

import ml_collections

from aigc_jax import tf_cpu
from aigc_jax.data import images
from aigc_jax.data import shards
from aigc_jax.data import tokenizers
from aigc_jax.data.pipeline import TextBatches
from aigc_jax.errors import UserError


def _text_file(path: str, split: str, val_fraction: float) -> str:
  if not 0.0 < val_fraction < 1.0:
    raise UserError(f'data.val_fraction={val_fraction} must be between 0 and 1 (exclusive)')
  try:
    with open(path, encoding='utf-8') as f:
      text = f.read()
  except OSError as e:
    raise UserError(f'cannot read data.text_file={path!r} ({e.strerror}): point it to a UTF-8 text file') from None
  except UnicodeDecodeError as e:
    raise UserError(f'data.text_file={path!r} is not UTF-8 ({e.reason} at byte {e.start}): convert it, '
                    'or point to a UTF-8 text file') from None
  cut = int(len(text) * (1.0 - val_fraction))
  if split == 'train':
    return text[:cut]
  if split == 'validation':
    return text[cut:]
  raise UserError(f"data.text_file has splits 'train' and 'validation', not {split!r}")


def _tfds_text(name: str, split: str, data_dir: str, manual_dir: str) -> str:
  """All 'text' features of the TFDS split, joined by newlines; prepared from `manual_dir` if set."""
  tf_cpu.tensorflow()
  import tensorflow_datasets as tfds
  data_dir = data_dir or None
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise UserError(f'data.name={name!r} is not a TFDS data set: check the name, or set data.text_file '
                    'to a UTF-8 text file') from None
  if 'text' not in builder.info.features.keys():
    raise UserError(f"TFDS data set {name!r} has no 'text' feature: choose a text data set, or set data.text_file")
  if not builder.is_prepared():
    if manual_dir:
      if not os.path.isdir(manual_dir):
        raise UserError(f'data.manual_dir={manual_dir!r} is not a folder: point it to the folder holding the '
                        f'file {name!r} downloads (for tiny_shakespeare: input.txt)')
    elif not images.network_up():
      raise UserError(f'TFDS data set {name!r} is not prepared in {builder.data_dir} and there is no network to '
                      f'download it: set data.manual_dir to a folder holding the file it downloads (for '
                      'tiny_shakespeare: input.txt), or set data.text_file to a UTF-8 text file')
    config = tfds.download.DownloadConfig(manual_dir=manual_dir or None)
    try:
      builder.download_and_prepare(download_config=config)
    except Exception as e:  # a missing or wrong manual file, a failed download, or another writer
      if not tfds.builder(name, data_dir=data_dir).is_prepared():
        raise UserError(f'TFDS could not prepare {name!r} (data.manual_dir={manual_dir!r}): '
                        f'{type(e).__name__}: {" ".join(str(e).split())[:300]}') from None
    # What is prepared now: by this process, or by another process or run that prepared it at the
    # same time and finished first (TFDS then keeps that copy; this builder may not know of it).
    builder = tfds.builder(name, data_dir=data_dir)
  try:
    ds = builder.as_dataset(split=split, shuffle_files=False)
  except (ValueError, KeyError):
    raise UserError(f'TFDS data set {name!r} has splits {sorted(builder.info.splits)}, not {split!r}: '
                    'set data.train_split / data.eval_split') from None
  return '\n'.join(ex['text'].decode('utf-8') for ex in tfds.as_numpy(ds))


def load(cfg: ml_collections.ConfigDict, split: str) -> tuple[str, str]:
  """The text of `split` and a description of its source for messages; empty text is an error."""
  if cfg.text_file:
    text, source = _text_file(cfg.text_file, split, cfg.val_fraction), f'data.text_file={cfg.text_file!r}'
  else:
    text, source = _tfds_text(cfg.name, split, cfg.tfds_data_dir, cfg.manual_dir), f'TFDS {cfg.name!r}'
  if not text:
    raise UserError(f'{source} split {split!r} is empty: use a longer text')
  return text, source


def create(cfg: ml_collections.ConfigDict, split: str, global_batch: int, *, seed: int,
           process_index: int, process_count: int, local_devices: int, train: bool,
           data_info: dict[str, str] | None) -> TextBatches:
  """Token windows of `split`, tokenized as `data_info` says (from a checkpoint) or as the config says.

  Without `data_info` a character vocabulary is built from the training split, whatever
  `split` is, so that training and evaluation share it.
  """
  text, source = load(cfg, split)
  tokenizer = tokenizers.resolve(cfg.tokenizer, data_info,
                                 lambda: text if split == cfg.train_split else load(cfg, cfg.train_split)[0],
                                 cfg.bpe_dir)
  tokens = tokenizer.encode(text, what=f'{source} split {split!r}')
  lo, hi = shards.bounds(len(tokens), process_index, process_count)
  tokens = tokens[lo:hi]
  if len(tokens) < cfg.block_size + 1:
    raise UserError(f'{source} split {split!r}{shards.describe(process_index, process_count)} has '
                    f'{len(tokens)} tokens, fewer than data.block_size + 1 = {cfg.block_size + 1}: '
                    'use a longer text or a smaller data.block_size')
  return TextBatches(tokens, global_batch, cfg.block_size, seed=seed, process_index=process_index,
                     process_count=process_count, local_devices=local_devices, shuffle=train,
                     info=tokenizer.info)
