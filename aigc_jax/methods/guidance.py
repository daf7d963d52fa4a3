"""Classifier-free guidance (Ho & Salimans 2022): one network both conditional and unconditional.

Training replaces each example's class label by the "null" class with a fixed probability, so
the same network learns eps(x, c) and eps(x, null). Sampling mixes the two predictions,
eps = (1 + w) eps(x, c) - w eps(x, null), with both computed in one forward pass over the
doubled batch. Labels are drawn and assigned by each example's index in the global batch,
so a batch split over N devices gets the same labels and masks as on one.
"""

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from aigc_jax.methods import randomness


def drop_labels(label_B: jax.Array, rng: jax.Array, rate: float, null_label: int, axis_name: str) -> jax.Array:
  """`label_B` with each label replaced by `null_label` with probability `rate`, keyed per example."""
  keys = randomness.example_keys(rng, label_B.shape[0], axis_name)
  drop_B = jax.vmap(lambda k: jax.random.bernoulli(k, rate))(keys)
  return jnp.where(drop_B, null_label, label_B).astype(jnp.int32)


def sample_labels(num: int, classes: Sequence[int], axis_name: str) -> jax.Array:
  """int32 [num] labels of this device's samples: the global sample g gets classes[g % len(classes)].

  Cycling over the global index spreads the samples evenly over `classes` however they are
  split over devices.
  """
  g_B = jax.lax.axis_index(axis_name) * num + jnp.arange(num)
  return jnp.asarray(classes, jnp.int32)[g_B % len(classes)]


def guided_eps(eps_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array], x: jax.Array, t_B: jax.Array,
               label_B: jax.Array, scale: float, null_label: int) -> jax.Array:
  """(1 + scale) eps(x, c) - scale eps(x, null), from one call of `eps_fn(x, t, label)` on the doubled batch."""
  B = x.shape[0]
  eps_2B = eps_fn(jnp.concatenate([x, x]), jnp.concatenate([t_B, t_B]),
                  jnp.concatenate([label_B, jnp.full((B,), null_label, jnp.int32)]))
  return (1.0 + scale) * eps_2B[:B] - scale * eps_2B[B:]
