"""Features of many images from a network, in batches over all local devices."""

from typing import Any, Callable

import jax
import numpy as np

from aigc_jax.errors import UserError
from aigc_jax.train import parallel


def extract(apply_fn: Callable, params: Any, images_NHWC: np.ndarray, batch_size: int,
            devs: parallel.Devices) -> Any:
  """`apply_fn(params, x)` over all N images, as host numpy arrays with a leading [N].

  Each call takes `batch_size` images (a multiple of the local devices), split evenly over
  them; the last batch is padded with zeros and the padding's outputs dropped. While one
  batch runs, the previous one's outputs are read. These are this process's images: with
  several processes, each must pass the same number (the devices run in step).
  """
  n_dev = len(devs.local)
  if batch_size <= 0 or batch_size % n_dev:
    raise UserError(f'the feature batch size {batch_size} must be a positive multiple of the '
                    f'{n_dev} local devices')
  n = len(images_NHWC)
  if n == 0:
    raise UserError('there are no images to compute features of')
  run = parallel.forward(apply_fn, params, devs)

  def fetch(out: Any) -> Any:
    return jax.tree.map(lambda a: np.asarray(a).reshape((-1,) + a.shape[2:]), jax.device_get(out))

  outs, pending = [], None
  for start in range(0, n, batch_size):
    x = images_NHWC[start:start + batch_size]
    if len(x) < batch_size:
      x = np.concatenate([x, np.zeros((batch_size - len(x),) + x.shape[1:], x.dtype)])
    queued = run(x.reshape((n_dev, -1) + x.shape[1:]))
    if pending is not None:
      outs.append(fetch(pending))
    pending = queued
  outs.append(fetch(pending))
  return jax.tree.map(lambda *parts: np.concatenate(parts)[:n], *outs)
