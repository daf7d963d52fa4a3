"""Classifier-free guidance (Ho & Salimans 2022): one network both conditional and unconditional.

Training replaces each example's condition by the "null" one with a fixed probability
(methods/labels.py), so the same network learns eps(x, c) and eps(x, null). Sampling mixes
the two predictions, eps = (1 + w) eps(x, c) - w eps(x, null), with both computed in one
forward pass over the doubled batch.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp

from aigc_jax.diffusion.prediction import Denoiser


def mixed(eps_fn: Callable[[jax.Array, jax.Array, Any], jax.Array], cond: Any, null: Any, scale: float) -> Denoiser:
  """The denoiser (1 + scale) eps(x, cond) - scale eps(x, null), from one call of `eps_fn(x, t, condition)` on the
  doubled batch; `cond` and `null` are conditions (pytrees of [B, ...] arrays: labels, text states and masks)."""
  def eps(x: jax.Array, t_B: jax.Array) -> jax.Array:
    B = x.shape[0]
    both = jax.tree.map(lambda c, n: jnp.concatenate([c, n]), cond, null)
    eps_2B = eps_fn(jnp.concatenate([x, x]), jnp.concatenate([t_B, t_B]), both)
    return (1.0 + scale) * eps_2B[:B] - scale * eps_2B[B:]
  return eps


def guided(eps_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array], labels_B: jax.Array, scale: float,
           null_label: int) -> Denoiser:
  """`mixed` guidance by class labels, the null condition being the label `null_label`."""
  return mixed(eps_fn, labels_B, jnp.full(labels_B.shape, null_label, jnp.int32), scale)
