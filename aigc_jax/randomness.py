"""Randomness keyed by step and global example index, so that draws never depend on the device split.

The shared train step (`train/step.py`) hands every loss an `Rng`, not a raw key: a raw key
is the same on every device, so `jax.random.normal(key, x_B.shape)` would give each device's
share of the batch the same draws, and the step on N devices would differ from the step on
one. An `Rng` has to be asked either for one key per example (`examples`: from the example's
index in the global batch, the same however the batch is split) or, explicitly, for a key per
device (`device`: for dropout masks, whose draws do depend on the split).
"""

import dataclasses

import jax
import jax.numpy as jnp


def example_keys(key: jax.Array, batch: int, axis_name: str) -> jax.Array:
  """One key per example of this device's `batch` [B], from the example's index in the global batch."""
  idx_B = jax.lax.axis_index(axis_name) * batch + jnp.arange(batch)
  return jax.vmap(jax.random.fold_in, (None, 0))(key, idx_B)


@dataclasses.dataclass(frozen=True)
class Rng:
  """The randomness of one step (or eval batch) on one device of the mapped axis `axis_name`.

  Attributes:
    key: a raw key, the same on every device.
    step: the optimizer step the key belongs to (schedules inside a loss, such as a KL warmup, read it).
    axis_name: the axis the batch is split over.
  """
  key: jax.Array
  step: jax.Array
  axis_name: str

  def examples(self, batch: int) -> jax.Array:
    """Keys [B] for this device's `batch` examples, one per global example index."""
    return example_keys(self.key, batch, self.axis_name)

  def device(self) -> jax.Array:
    """A key of this device alone: draws from it change with the device split (dropout masks)."""
    return jax.random.fold_in(self.key, jax.lax.axis_index(self.axis_name))

  def split(self, num: int = 2) -> tuple['Rng', ...]:
    """`num` independent streams (jax.random.split of the key)."""
    return tuple(dataclasses.replace(self, key=k) for k in jax.random.split(self.key, num))

  def fold_in(self, data: int) -> 'Rng':
    """Another stream, named by `data`."""
    return dataclasses.replace(self, key=jax.random.fold_in(self.key, data))
