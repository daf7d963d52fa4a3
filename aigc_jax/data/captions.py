"""Captioned images (`data.kind='captioned'`): images with one caption each, as tokens and a padding mask.

Sources, first match wins, in the conventions users already have:
  - an `.npz` file (`data.npz_path`) with `images` (uint8 [N, H, W(, C)]) and `captions` ([N] strings),
    its last `data.npz_holdout` examples the 'test' split;
  - an image folder (`data.image_folder`) in the Hugging Face imagefolder layout that diffusers'
    text-to-image scripts read: <root>/<split>/metadata.jsonl with one {"file_name": ..., "text": ...}
    row per image, `file_name` relative to <root>/<split> (`python -m aigc_jax.data.scenes` writes one);
  - a TFDS data set (`data.name`) with an image feature 'image' and a text feature `data.caption_key`.

Captions are tokenized by `data.tokenizer` (char: the characters of the training captions; byte) into
`data.caption_length` positions: a start token (id = the tokenizer's vocabulary size), the caption's
tokens, then padding (id 0, masked out). The start token is never masked, so the empty caption — the
"null" condition classifier-free guidance trains with — is a start token alone.
"""

import json
import os

import ml_collections
import numpy as np

from aigc_jax import tf_cpu
from aigc_jax.data import images as images_lib
from aigc_jax.data import shards
from aigc_jax.data import tokenizers
from aigc_jax.data.pipeline import ImageBatches
from aigc_jax.errors import UserError


def vocab_size(tokenizer: tokenizers.Tokenizer) -> int:
  """Token ids of encoded captions: the tokenizer's, and the start token."""
  return tokenizer.vocab_size + 1


def encode(tokenizer: tokenizers.Tokenizer, texts: list[str], length: int,
           what: str = 'caption') -> tuple[np.ndarray, np.ndarray]:
  """(int32 tokens [N, T], bool mask [N, T]) of `texts`: a start token, the text's tokens, padding (mask False).

  T = `length`; a text of more than T - 1 tokens is an error naming it.
  """
  tokens_NT = np.zeros((len(texts), length), np.int32)
  mask_NT = np.zeros((len(texts), length), bool)
  for i, text in enumerate(texts):
    ids = tokenizer.encode(text, what=f'{what} {text!r}')
    if len(ids) > length - 1:
      raise UserError(f'{what} {text!r} has {len(ids)} tokens, more than data.caption_length - 1 = {length - 1} '
                      '(one position is the start token): shorten it or raise data.caption_length')
    tokens_NT[i, 0] = tokenizer.vocab_size
    tokens_NT[i, 1:1 + len(ids)] = ids
    mask_NT[i, :1 + len(ids)] = True
  return tokens_NT, mask_NT


def prompts(sample: ml_collections.ConfigDict) -> list[str]:
  """The prompts to draw: `sample.prompt`, else the non-empty lines of `sample.prompts_file`, else `sample.prompts`."""
  if sample.prompt:
    return [sample.prompt]
  if sample.prompts_file:
    try:
      with open(sample.prompts_file, encoding='utf-8') as f:
        lines = [line.strip() for line in f if line.strip()]
    except OSError as e:
      raise UserError(f'cannot read sample.prompts_file={sample.prompts_file!r} ({e.strerror}): give a text file '
                      'with one prompt per line') from None
    if not lines:
      raise UserError(f'sample.prompts_file={sample.prompts_file!r} holds no prompt: write one per line')
    return lines
  if not sample.prompts:
    raise UserError('no prompt to draw: set sample.prompt, sample.prompts_file or sample.prompts')
  return list(sample.prompts)


def _npz(path: str, holdout: int, split: str) -> tuple[np.ndarray, list[str]]:
  if not os.path.isfile(path):
    raise UserError(f'data.npz_path={path!r} does not exist: give an .npz file with `images` (uint8 [N, H, W] or '
                    '[N, H, W, C]) and `captions` ([N] strings)')
  with np.load(path) as f:
    if 'images' not in f.files or 'captions' not in f.files:
      raise UserError(f'data.npz_path={path!r} holds {f.files}: captioned data need `images` and `captions`')
    x, texts = f['images'], [str(t) for t in f['captions']]
  if len(texts) != len(x):
    raise UserError(f'data.npz_path={path!r}: {len(texts)} captions for {len(x)} images')
  x = x[..., None] if x.ndim == 3 else x
  cut = images_lib.holdout_split(x, None, holdout, split, f'data.npz_path={path!r} (data.npz_holdout)')[0]
  return cut, texts[:-holdout] if split == 'train' else texts[-holdout:]


def _tfds(cfg: ml_collections.ConfigDict, split: str, process_index: int,
          process_count: int) -> tuple[np.ndarray, list[str]]:
  tf_cpu.tensorflow()
  import tensorflow_datasets as tfds
  if process_count > 1:
    split = tfds.split_for_jax_process(split, process_index=process_index, process_count=process_count,
                                       drop_remainder=True)
  try:
    builder = tfds.builder(cfg.name, data_dir=cfg.tfds_data_dir or None)
  except tfds.core.registered.DatasetNotFoundError:
    raise UserError(f'data.name={cfg.name!r} is not a TFDS data set: check the name, or set data.image_folder to '
                    'a folder with a metadata.jsonl per split, or data.npz_path') from None
  features = builder.info.features
  if 'image' not in features or cfg.caption_key not in features:
    raise UserError(f'TFDS data set {cfg.name!r} has features {sorted(features)}: captioned data need an image '
                    f"feature 'image' and the text feature data.caption_key={cfg.caption_key!r}")
  ds = builder.as_dataset(split=split, shuffle_files=False)
  ds = ds.map(lambda ex: {'image': ex['image'], 'text': ex[cfg.caption_key]}).batch(1024)
  parts = list(tfds.as_numpy(ds))
  if not parts:
    return np.zeros((0, 0, 0, 0), np.uint8), []
  return (np.concatenate([p['image'] for p in parts]),
          [t.decode('utf-8') for p in parts for t in p['text']])


def load(cfg: ml_collections.ConfigDict, split: str, process_index: int = 0,
         process_count: int = 1) -> tuple[np.ndarray, list[str]]:
  """This process's shard of `split`: images uint8 [N, H, W, C] (padded and checked as image data are) and captions."""
  if cfg.npz_path:
    x, texts = _npz(cfg.npz_path, cfg.npz_holdout, split)
    lo, hi = shards.bounds(len(x), process_index, process_count)
    x, texts, source = x[lo:hi], texts[lo:hi], f'data.npz_path={cfg.npz_path!r}'
  elif cfg.image_folder:
    if not images_lib.has_metadata(cfg.image_folder, split):
      raise UserError(f'data.image_folder={cfg.image_folder!r} has no {split}/{images_lib.METADATA}: captioned '
                      f'images are laid out as <root>/<split>/{images_lib.METADATA} with one '
                      '{"file_name": ..., "text": ...} row per image')
    x, texts = images_lib.metadata_folder(cfg.image_folder, split, cfg.channels, process_index, process_count)
    source = f'data.image_folder={cfg.image_folder!r}'
  else:
    x, texts = _tfds(cfg, split, process_index, process_count)
    source = f'TFDS {cfg.name!r}'
  return images_lib.finish(x, cfg, source, split, process_index, process_count), texts


def _training_captions(cfg: ml_collections.ConfigDict) -> str:
  """All training captions joined, for a char vocabulary; a metadata folder is read without its images."""
  if cfg.image_folder and not cfg.npz_path:
    path = os.path.join(cfg.image_folder, cfg.train_split, images_lib.METADATA)
    if os.path.isfile(path):
      with open(path, encoding='utf-8') as f:
        return ''.join(json.loads(line)['text'] for line in f if line.strip())
  return ''.join(load(cfg, cfg.train_split)[1])


class CaptionBatches(ImageBatches):
  """Image batches that also hold each image's caption: 'captions' int32 and 'caption_mask' bool [devices, B, T]."""

  def __init__(self, images: np.ndarray, tokens_NT: np.ndarray, mask_NT: np.ndarray, info: dict[str, str],
               global_batch: int, **kwargs):
    super().__init__(images, global_batch, **kwargs)
    self.tokens_NT, self.mask_NT, self._info = tokens_NT, mask_NT, info

  @property
  def info(self) -> dict[str, str]:
    """The caption tokenizer, which a method needs to encode prompts (saved with the checkpoints)."""
    return self._info

  def batch(self, step: int) -> dict[str, np.ndarray]:
    out = super().batch(step)
    idx = self.indices(step)
    return {**out, 'captions': self.per_device(self.tokens_NT[idx]), 'caption_mask': self.per_device(self.mask_NT[idx])}


def create(cfg: ml_collections.ConfigDict, split: str, global_batch: int, *, seed: int, process_index: int,
           process_count: int, local_devices: int, train: bool,
           data_info: dict[str, str] | None = None) -> CaptionBatches:
  """Batches of images and caption tokens of `split`, tokenized as `data_info` says (resuming) or the config says."""
  x, texts = load(cfg, split, process_index, process_count)
  tokenizer = tokenizers.resolve(
      cfg.tokenizer, data_info, lambda: ''.join(texts) if split == cfg.train_split else _training_captions(cfg),
      cfg.bpe_dir)
  tokens_NT, mask_NT = encode(tokenizer, texts, cfg.caption_length, what=f'a {split!r} caption')
  return CaptionBatches(x, tokens_NT, mask_NT, tokenizer.info, global_batch, seed=seed, process_index=process_index,
                        process_count=process_count, local_devices=local_devices, shuffle=train,
                        random_flip=train and cfg.random_flip)
