"""Noise schedules: the per-timestep constants of a discrete-time diffusion, by `diffusion.schedule`."""

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

SCHEDULES = ('linear',)


@flax.struct.dataclass
class Schedule:
  """Per-timestep constants of the diffusion, each a float32 [num_timesteps] array (computed in float64)."""
  betas: jax.Array
  alphas_cumprod: jax.Array
  alphas_cumprod_prev: jax.Array
  posterior_variance: jax.Array
  posterior_mean_coef1: jax.Array  # multiplies x_0
  posterior_mean_coef2: jax.Array  # multiplies x_t
  fixed_large_log_variance: jax.Array

  @property
  def num_timesteps(self) -> int:
    return self.betas.shape[0]


def from_betas(betas: np.ndarray) -> Schedule:
  """The schedule of a float64 beta sequence: cumulative alphas, the posterior q(x_{t-1} | x_t, x_0), variances."""
  alphas = 1.0 - betas
  abar = np.cumprod(alphas)
  abar_prev = np.append(1.0, abar[:-1])
  post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
  arrays = dict(
      betas=betas,
      alphas_cumprod=abar,
      alphas_cumprod_prev=abar_prev,
      posterior_variance=post_var,
      posterior_mean_coef1=betas * np.sqrt(abar_prev) / (1.0 - abar),
      posterior_mean_coef2=(1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
      # beta_t, with beta_1 replaced by the posterior variance at t=1 so that the last
      # step is not over-noised (as in the original implementation).
      fixed_large_log_variance=np.log(np.append(post_var[1], betas[1:])),
  )
  return Schedule(**{k: jnp.asarray(v, jnp.float32) for k, v in arrays.items()})


def linear(num_timesteps: int, beta_start: float, beta_end: float) -> Schedule:
  """The DDPM schedule (Ho et al. 2020): betas linear from `beta_start` to `beta_end` over the timesteps."""
  return from_betas(np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64))


def from_config(d: ml_collections.ConfigDict) -> Schedule:
  """The schedule `config.diffusion` describes (`diffusion.schedule`, checked by the method's rules)."""
  return linear(d.num_timesteps, d.beta_start, d.beta_end)
