"""Labelled image data sets as uint8 [N, H, W, C] arrays in host memory, from offline-capable sources.

Sources, first match wins: an `.npz` file (`data.npz_path`, keys `images` and optionally
`labels`; its last `data.npz_holdout` examples are the 'test' split, the rest 'train'), an
image folder (`data.image_folder`: a `tfds.ImageFolder` tree laid out as <split>/<class>/<image>,
or, where <split>/metadata.jsonl exists, the Hugging Face imagefolder layout of captioned images,
one {"file_name": ..., "text": ...} row per image; each file decoded to `data.channels` channels: 1, 3 or 4),
scikit-learn's 8x8 digits (`data.name='digits'`), or a TFDS data set (`data.name`, e.g.
'cifar10', 'mnist'). `data.pad` > 0 adds that many pixels of value 0 on every side (MNIST's
28x28 digits on their black background become 32x32 with 2). `data.binarize` > 0 maps pixels
to 0 or 255 at that threshold (a fraction of 255), for Bernoulli likelihoods. Image files that
do not decode are skipped, and their number and first paths logged once.

In a multi-process run each process reads only its shard of the split (`data.shards`): TFDS
through `tfds.split_for_jax_process`; image folders decode only the shard's files (those
before it are skipped undecoded, since `tfds.ImageFolder` has no sub-splits); the in-memory
sources by slicing.
"""

import json
import logging
import os
import socket
from typing import Any

import ml_collections
import numpy as np

from aigc_jax import tf_cpu
from aigc_jax.data import shards
from aigc_jax.errors import UserError

# The last DIGITS_TEST of scikit-learn's 1,797 digits form the 'test' split, the rest 'train'.
DIGITS_TEST = 200
# The channel counts image files decode to (tf.io.decode_image): gray, RGB, RGBA.
IMAGE_FILE_CHANNELS = (1, 3, 4)


# Images uint8 [N, H, W, C] and their int32 class labels [N] (None where the source has none).
Labeled = tuple[np.ndarray, np.ndarray | None]


def holdout_split(x: np.ndarray, y: np.ndarray | None, holdout: int, split: str, source: str) -> Labeled:
  """'train' = all but the last `holdout` examples, 'test' = those."""
  if not 0 < holdout < len(x):
    raise UserError(f'{source} holds {len(x)} examples: its held-out count must be in 1..{len(x) - 1}, '
                    f'not {holdout}')
  if split == 'train':
    return x[:-holdout], None if y is None else y[:-holdout]
  if split == 'test':
    return x[-holdout:], None if y is None else y[-holdout:]
  raise UserError(f"{source} has splits 'train' and 'test', not {split!r}")


def _digits(split: str) -> Labeled:
  from sklearn.datasets import load_digits
  digits = load_digits()
  x = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # [1797, 8, 8] from 0..16
  return holdout_split(x, digits.target.astype(np.int32), DIGITS_TEST, split, "data.name='digits'")


def _npz(path: str, holdout: int, split: str) -> Labeled:
  if not os.path.isfile(path):
    raise UserError(f'data.npz_path={path!r} does not exist: give an .npz file with an `images` array '
                    '(uint8 [N, H, W] or [N, H, W, C]) and optionally `labels` [N]')
  try:
    with np.load(path) as f:
      x = f['images']
      y = f['labels'].astype(np.int32) if 'labels' in f.files else None
  except (OSError, ValueError, KeyError) as e:
    raise UserError(f'data.npz_path={path!r} is not an .npz file with an `images` array: {e}') from None
  if x.dtype != np.uint8 or x.ndim not in (3, 4):
    raise UserError(f'data.npz_path={path!r}: `images` must be uint8 [N, H, W] or [N, H, W, C], '
                    f'not {x.dtype} {list(x.shape)}')
  if y is not None and y.shape != x.shape[:1]:
    raise UserError(f'data.npz_path={path!r}: `labels` has shape {list(y.shape)}, expected [{len(x)}]')
  x = x[..., None] if x.ndim == 3 else x
  return holdout_split(x, y, holdout, split, f'data.npz_path={path!r} (data.npz_holdout)')


def _stack(ds: Any) -> Labeled:
  """All images (and labels, if the data set has them) of a tf.data.Dataset, read in large batches."""
  import tensorflow_datasets as tfds
  has_label = 'label' in ds.element_spec
  keep = (lambda ex: {'image': ex['image'], 'label': ex['label']}) if has_label else (
      lambda ex: {'image': ex['image']})
  parts = list(tfds.as_numpy(ds.map(keep).batch(4096)))
  if not parts:
    return np.zeros((0, 0, 0, 0), np.uint8), None
  x = np.concatenate([b['image'] for b in parts])
  return x, np.concatenate([b['label'] for b in parts]).astype(np.int32) if has_label else None


def _image_folder(root: str, split: str, channels: int, process_index: int, process_count: int) -> Labeled:
  """This process's shard of the images of <root>/<split>/<class>/*; undecodable ones are skipped and logged.

  Each file is decoded to `channels` channels, converted if it has others (color to gray, gray to
  equal colors): tfds.ImageFolder's default of 3 would leave grayscale folders unusable with channels=1.
  """
  if channels not in IMAGE_FILE_CHANNELS:
    raise UserError(f'data.channels={channels}: image files decode to 1 (gray), 3 (RGB) or 4 (RGBA) channels; '
                    'set data.channels to one of those')
  if not os.path.isdir(os.path.join(root, split)):
    raise UserError(f'data.image_folder={root!r} has no {split!r} folder: expected '
                    f'{root}/{split}/<class>/<image files>')
  tf_cpu.tensorflow()
  import tensorflow as tf
  import tensorflow_datasets as tfds
  builder = tfds.ImageFolder(root, shape=(None, None, channels))
  lo, hi = shards.bounds(builder.info.splits[split].num_examples, process_index, process_count)
  # tfds.ImageFolder has no sub-splits: skip to the shard with the images still encoded, then decode it
  image = builder.info.features['image']
  encoded = builder.as_dataset(split=split, shuffle_files=False,
                               decoders={'image': tfds.decode.SkipDecoding()}).skip(lo).take(hi - lo)
  ds = encoded.map(lambda ex: {**ex, 'image': image.decode_example(ex['image'])})
  ds = ds.ignore_errors()  # drops files that fail to decode
  try:
    parts = list(tfds.as_numpy(ds.map(lambda ex: (ex['image'], ex['label'], ex['image/filename'])).batch(4096)))
  except tf.errors.InvalidArgumentError as e:
    raise UserError(f'data.image_folder={root!r}: the {split!r} images differ in size or channels '
                    f'({" ".join(e.message.split())[:200]}): make them all data.image_size square with '
                    'data.channels channels') from None
  if not parts:
    x, y, names = np.zeros((0, 0, 0, 0), np.uint8), np.zeros((0,), np.int32), set()
  else:
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts]).astype(np.int32)
    names = {n for p in parts for n in p[2]}
  expected = hi - lo
  if len(x) < expected:
    skipped = sorted(n.decode() for n in tfds.as_numpy(encoded.map(lambda ex: ex['image/filename']))
                     if n not in names)
    logging.warning('data.image_folder=%r: skipped %d of the %d %r images, which do not decode: %s%s', root,
                    len(skipped), expected, split, ', '.join(skipped[:5]), ', ...' if len(skipped) > 5 else '')
  return x, y


METADATA = 'metadata.jsonl'
_PIL_MODES = {1: 'L', 3: 'RGB', 4: 'RGBA'}


def has_metadata(root: str, split: str) -> bool:
  """Whether <root>/<split> is in the imagefolder layout of captioned images (it holds a metadata.jsonl)."""
  return os.path.isfile(os.path.join(root, split, METADATA))


def metadata_folder(root: str, split: str, channels: int, process_index: int = 0,
                    process_count: int = 1) -> tuple[np.ndarray, list[str]]:
  """This process's shard of the images of <root>/<split>/metadata.jsonl and their texts, in its row order.

  Each row is {"file_name": <path relative to <root>/<split>>, "text": <caption>}; files that do
  not decode are skipped and logged.
  """
  from PIL import Image
  if channels not in IMAGE_FILE_CHANNELS:
    raise UserError(f'data.channels={channels}: image files decode to 1 (gray), 3 (RGB) or 4 (RGBA) channels; '
                    'set data.channels to one of those')
  folder = os.path.join(root, split)
  path = os.path.join(folder, METADATA)
  rows = []
  with open(path, encoding='utf-8') as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        rows.append((str(row['file_name']), str(row['text'])))
      except (ValueError, KeyError, TypeError):
        raise UserError(f'{path} line {n} is not a JSON object with "file_name" and "text": {line.strip()[:80]!r}'
                        ) from None
  lo, hi = shards.bounds(len(rows), process_index, process_count)
  images, texts, skipped = [], [], []
  for name, text in rows[lo:hi]:
    try:
      with Image.open(os.path.join(folder, name)) as im:
        images.append(np.asarray(im.convert(_PIL_MODES[channels])).reshape(im.size[1], im.size[0], channels))
      texts.append(text)
    except OSError:
      skipped.append(name)
  if skipped:
    logging.warning('data.image_folder=%r: skipped %d of the %d %r images, which do not decode: %s%s', root,
                    len(skipped), hi - lo, split, ', '.join(skipped[:5]), ', ...' if len(skipped) > 5 else '')
  if len({x.shape for x in images}) > 1:
    raise UserError(f'data.image_folder={root!r}: the {split!r} images differ in size: make them all '
                    'data.image_size square')
  return (np.stack(images) if images else np.zeros((0, 0, 0, 0), np.uint8)), texts


def network_up(host: str = 'storage.googleapis.com') -> bool:
  """Whether a TFDS download could possibly work: its mirror's name resolves."""
  try:
    socket.getaddrinfo(host, 443)
    return True
  except OSError:
    return False


def _tfds(name: str, split: str, data_dir: str, process_index: int, process_count: int) -> Labeled:
  tf_cpu.tensorflow()
  import tensorflow_datasets as tfds
  data_dir = data_dir or None
  if process_count > 1:
    split = tfds.split_for_jax_process(split, process_index=process_index, process_count=process_count,
                                       drop_remainder=True)
  try:
    ds = tfds.load(name, split=split, data_dir=data_dir, download=False)
  except tfds.core.registered.DatasetNotFoundError:
    raise UserError(f'data.name={name!r} is neither a TFDS data set nor "digits": check the name, '
                    'or set data.image_folder to a folder of images') from None
  except AssertionError:
    where = data_dir or os.path.expanduser('~/tensorflow_datasets')
    if not network_up():
      raise UserError(
          f'TFDS data set {name!r} is not prepared in {where} and there is no network to download it: '
          f'run `tfds build {name}` on a machine with network and copy its folder to {where} '
          '(or set data.tfds_data_dir), or set data.image_folder to a local copy laid out as '
          '<split>/<class>/<image>') from None
    try:
      ds = tfds.load(name, split=split, data_dir=data_dir, download=True)
    except Exception:
      if not tfds.builder(name, data_dir=data_dir).is_prepared():
        raise
      # another process or run preparing it at the same time finished first (TFDS renames its
      # finished folder into place; of two writers at once, the second cannot)
      ds = tfds.load(name, split=split, data_dir=data_dir, download=False)
  return _stack(ds)


def _shard(data: Labeled, process_index: int, process_count: int) -> Labeled:
  x, y = data
  lo, hi = shards.bounds(len(x), process_index, process_count)
  return x[lo:hi], None if y is None else y[lo:hi]


def finish(images: np.ndarray, cfg: ml_collections.ConfigDict, source: str, split: str, process_index: int,
           process_count: int) -> np.ndarray:
  """Loaded images padded (`data.pad`), checked against data.image_size / data.channels and binarized."""
  if len(images) == 0:
    raise UserError(f'{source} split {split!r}{shards.describe(process_index, process_count)} holds no images')
  if cfg.pad:
    source += f' padded by data.pad={cfg.pad}'
    images = np.pad(images, ((0, 0), (cfg.pad, cfg.pad), (cfg.pad, cfg.pad), (0, 0)))
  want = (cfg.image_size, cfg.image_size, cfg.channels)
  if images.shape[1:] != want:
    raise UserError(f'{source} has images of shape {images.shape[1:]}, but the config says '
                    f'data.image_size={cfg.image_size}, data.channels={cfg.channels}: set them to match')
  if cfg.binarize > 0:
    images = np.where(images >= cfg.binarize * 255.0, 255, 0).astype(np.uint8)
  return images


def load(cfg: ml_collections.ConfigDict, split: str, process_index: int = 0, process_count: int = 1) -> Labeled:
  """Images of `split` as uint8 [N, H, W, C] (checked against data.image_size / data.channels) and labels.

  Only the shard of process `process_index` of `process_count` (`data.shards`); all of them by default.
  """
  if cfg.pad < 0:
    raise UserError(f'data.pad={cfg.pad} must be >= 0 (pixels of value 0 added on every side)')
  if cfg.npz_path:
    images, labels = _shard(_npz(cfg.npz_path, cfg.npz_holdout, split), process_index, process_count)
    source = f'data.npz_path={cfg.npz_path!r}'
  elif cfg.image_folder and has_metadata(cfg.image_folder, split):
    images, labels = metadata_folder(cfg.image_folder, split, cfg.channels, process_index, process_count)[0], None
    source = f'data.image_folder={cfg.image_folder!r}'
  elif cfg.image_folder:
    images, labels = _image_folder(cfg.image_folder, split, cfg.channels, process_index, process_count)
    source = f'data.image_folder={cfg.image_folder!r}'
  elif cfg.name == 'digits':
    images, labels = _shard(_digits(split), process_index, process_count)
    source = 'scikit-learn digits'
  else:
    images, labels = _tfds(cfg.name, split, cfg.tfds_data_dir, process_index, process_count)
    source = f'TFDS {cfg.name!r}'
  return finish(images, cfg, source, split, process_index, process_count), labels
