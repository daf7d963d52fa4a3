"""The dtype a model computes in, from `model.dtype`: mixed precision where the hardware has it."""

import jax
import jax.numpy as jnp

from aigc_jax.errors import UserError

CHOICES = ('auto', 'float32', 'bfloat16')


def compute_dtype(name: str) -> jnp.dtype:
  """'auto' is bfloat16 on GPUs and TPUs, float32 on CPUs; 'float32' and 'bfloat16' are themselves.

  Parameters, optimizer state and losses stay float32 whatever this is (the models cast
  their outputs back): GPUs' and TPUs' matrix units run bfloat16 many times faster than
  float32, while CPUs have none and run bfloat16 slower.
  """
  if name not in CHOICES:
    raise UserError(f'model.dtype={name!r} is unknown: use one of {", ".join(CHOICES)}')
  if name == 'auto':
    name = 'float32' if jax.default_backend() == 'cpu' else 'bfloat16'
  return jnp.dtype(name)
