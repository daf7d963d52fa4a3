"""Image data sets as uint8 [N, H, W, C] arrays in host memory, from any of the offline-capable sources.

Sources, by config: scikit-learn's 8x8 digits (`data.name='digits'`), a `tfds.ImageFolder`
tree (`data.image_folder`, laid out as <split>/<class>/<image>), or a TFDS data set
(`data.name`, e.g. 'cifar10', 'mnist').
"""

import os
import socket
from typing import Any

import ml_collections
import numpy as np

from aigc_jax import tf_cpu
from aigc_jax.errors import UserError

# The last DIGITS_TEST of scikit-learn's 1,797 digits form the 'test' split, the rest 'train'.
DIGITS_TEST = 200


def _digits(split: str) -> np.ndarray:
  from sklearn.datasets import load_digits
  x = load_digits().images  # [1797, 8, 8] floats 0..16
  x = np.round(x * (255.0 / 16.0)).astype(np.uint8)[..., None]
  if split == 'train':
    return x[:-DIGITS_TEST]
  if split == 'test':
    return x[-DIGITS_TEST:]
  raise UserError(f"data.name='digits' has splits 'train' and 'test', not {split!r}")


def _stack(ds: Any) -> np.ndarray:
  """All 'image' features of a tf.data.Dataset, read in large batches."""
  import tensorflow_datasets as tfds
  parts = [b['image'] for b in tfds.as_numpy(ds.map(lambda ex: {'image': ex['image']}).batch(4096))]
  return np.concatenate(parts) if parts else np.zeros((0, 0, 0, 0), np.uint8)


def _image_folder(root: str, split: str) -> np.ndarray:
  if not os.path.isdir(os.path.join(root, split)):
    raise UserError(f'data.image_folder={root!r} has no {split!r} folder: expected '
                    f'{root}/{split}/<class>/<image files>')
  tf_cpu.tensorflow()
  import tensorflow_datasets as tfds
  return _stack(tfds.ImageFolder(root).as_dataset(split=split, shuffle_files=False))


def network_up(host: str = 'storage.googleapis.com') -> bool:
  """Whether a TFDS download could possibly work: its mirror's name resolves."""
  try:
    socket.getaddrinfo(host, 443)
    return True
  except OSError:
    return False


def _tfds(name: str, split: str, data_dir: str) -> np.ndarray:
  tf_cpu.tensorflow()
  import tensorflow_datasets as tfds
  data_dir = data_dir or None
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
    ds = tfds.load(name, split=split, data_dir=data_dir, download=True)
  return _stack(ds)


def load(cfg: ml_collections.ConfigDict, split: str) -> np.ndarray:
  """The images of `split` as uint8 [N, H, W, C], checked against data.image_size / data.channels."""
  if cfg.name == 'digits':
    images = _digits(split)
    source = 'scikit-learn digits'
  elif cfg.image_folder:
    images = _image_folder(cfg.image_folder, split)
    source = f'data.image_folder={cfg.image_folder!r}'
  else:
    images = _tfds(cfg.name, split, cfg.tfds_data_dir)
    source = f'TFDS {cfg.name!r}'
  if len(images) == 0:
    raise UserError(f'{source} split {split!r} holds no images')
  want = (cfg.image_size, cfg.image_size, cfg.channels)
  if images.shape[1:] != want:
    raise UserError(f'{source} has images of shape {images.shape[1:]}, but the config says '
                    f'data.image_size={cfg.image_size}, data.channels={cfg.channels}: set them to match')
  return images
