"""Randomness that does not depend on how a global batch is split over devices."""

import jax
import jax.numpy as jnp


def example_keys(rng: jax.Array, batch: int, axis_name: str) -> jax.Array:
  """One key per example of this device's `batch`, from the example's index in the global batch.

  Draws made from these keys are the same whether the global batch runs on one device or
  many, so an N-device step equals the 1-device step.
  """
  idx = jax.lax.axis_index(axis_name) * batch + jnp.arange(batch)
  return jax.vmap(jax.random.fold_in, (None, 0))(rng, idx)
