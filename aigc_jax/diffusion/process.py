"""The forward process q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) and its posterior q(x_{t-1} | x_t, x_0)."""

import jax
import jax.numpy as jnp

from aigc_jax.diffusion.schedules import Schedule


def at(per_timestep: jax.Array, t_B: jax.Array, x: jax.Array) -> jax.Array:
  """per_timestep[t] [B] broadcast against x's trailing dimensions."""
  return per_timestep[t_B].reshape((-1,) + (1,) * (x.ndim - 1))


def q_sample(schedule: Schedule, x0: jax.Array, t_B: jax.Array, noise: jax.Array) -> jax.Array:
  """A draw of x_t ~ q(x_t | x_0) given the standard-normal `noise`."""
  abar = at(schedule.alphas_cumprod, t_B, x0)
  return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * noise


def q_posterior(schedule: Schedule, x0: jax.Array, xt: jax.Array, t_B: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean and variance of q(x_{t-1} | x_t, x_0)."""
  mean = at(schedule.posterior_mean_coef1, t_B, xt) * x0 + at(schedule.posterior_mean_coef2, t_B, xt) * xt
  return mean, at(schedule.posterior_variance, t_B, xt)


def predict_x0(schedule: Schedule, xt: jax.Array, t_B: jax.Array, eps: jax.Array) -> jax.Array:
  """x_0 implied by x_t and the noise `eps`."""
  abar = at(schedule.alphas_cumprod, t_B, xt)
  return (xt - jnp.sqrt(1.0 - abar) * eps) / jnp.sqrt(abar)

