"""The image methods' one conversion of samples to the bytes that samples/*.npz and the grids hold."""

import jax
import jax.numpy as jnp


def to_uint8(x: jax.Array) -> jax.Array:
  """[-1, 1] floats to 0..255 bytes."""
  return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)
