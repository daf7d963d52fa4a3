"""Class labels: read from a batch; for class-conditional methods dropped to the null class in training, cycled
through in sampling.

Both are keyed by each example's index in the global batch, so a batch split over N devices
gets the same labels as on one.
"""

from typing import Sequence

import jax
import jax.numpy as jnp

from aigc_jax.errors import UserError


def of(batch: dict[str, jax.Array], who: str, otherwise: str = '') -> jax.Array:
  """The batch's int32 class labels [B], or a clear error, naming `who` needs them, when its data source has none."""
  if 'labels' not in batch:
    raise UserError(f'{who} needs labelled images, but this data source has none: use one with labels (an .npz '
                    f'needs a `labels` array){otherwise}')
  return batch['labels']


def drop(labels_B: jax.Array, keys_B: jax.Array, rate: float, null_label: int) -> jax.Array:
  """`labels_B` with each label replaced by `null_label` with probability `rate`, drawn from its example's key."""
  drop_B = jax.vmap(lambda k: jax.random.bernoulli(k, rate))(keys_B)
  return jnp.where(drop_B, null_label, labels_B).astype(jnp.int32)


def cycled(num: int, classes: Sequence[int], axis_name: str) -> jax.Array:
  """int32 [num] labels of this device's samples: the global sample g gets classes[g % len(classes)].

  Cycling over the global index spreads the samples evenly over `classes` however they are
  split over devices.
  """
  g_B = jax.lax.axis_index(axis_name) * num + jnp.arange(num)
  return jnp.asarray(classes, jnp.int32)[g_B % len(classes)]
