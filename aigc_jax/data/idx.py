"""The idx format of the MNIST files, and their conversion to the `.npz` image source.

    python -m aigc_jax.data.idx --images=t10k-images-idx3-ubyte.gz \
        --labels=t10k-labels-idx1-ubyte.gz --out=mnist_test.npz

then train on it with `--config.data.npz_path=mnist_test.npz --config.data.npz_holdout=2000`.
"""

import gzip
import os

import numpy as np
from absl import app
from absl import flags

from aigc_jax.errors import UserError

_UINT8 = 0x08


def read(path: str) -> np.ndarray:
  """The uint8 array of an idx file (gzipped or not): bytes 0-1 zero, 2 the type, 3 ndim, big-endian int32 dims."""
  opener = gzip.open if path.endswith('.gz') else open
  try:
    with opener(path, 'rb') as f:
      raw = f.read()
  except OSError as e:
    raise UserError(f'cannot read idx file {path!r}: {e}') from None
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _UINT8:
    raise UserError(f'{path!r} is not a uint8 idx file (its header is {raw[:4].hex()})')
  ndim = raw[3]
  shape = tuple(int(d) for d in np.frombuffer(raw, '>i4', ndim, 4))
  data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
  if data.size != int(np.prod(shape)):
    raise UserError(f'{path!r} holds {data.size} values, but its header says {list(shape)}')
  return data.reshape(shape)


def to_npz(images_path: str, labels_path: str, out: str) -> tuple[int, ...]:
  """Writes `images` uint8 [N, H, W, 1] and `labels` int32 [N] to `out`; returns the images' shape."""
  x, y = read(images_path), read(labels_path)
  if x.ndim != 3 or y.shape != x.shape[:1]:
    raise UserError(f'{images_path!r} {list(x.shape)} and {labels_path!r} {list(y.shape)} are not '
                    'images [N, H, W] with labels [N]')
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  np.savez(out, images=x[..., None], labels=y.astype(np.int32))
  return x[..., None].shape


def main(argv: list[str]) -> None:
  del argv
  try:
    shape = to_npz(flags.FLAGS.images, flags.FLAGS.labels, flags.FLAGS.out)
  except UserError as e:
    raise SystemExit(f'error: {e}') from None
  print(f'wrote {flags.FLAGS.out}: images {list(shape)}')


if __name__ == '__main__':
  flags.DEFINE_string('images', None, 'idx file of images', required=True)
  flags.DEFINE_string('labels', None, 'idx file of labels', required=True)
  flags.DEFINE_string('out', None, '.npz file to write', required=True)
  app.run(main)
