"""The variational bound on -log p(x_0) of Ho et al. (2020), in bits per dimension."""

import jax
import jax.numpy as jnp
import numpy as np

from aigc_jax.diffusion import process
from aigc_jax.diffusion.prediction import Denoiser
from aigc_jax.diffusion.schedules import Schedule


def normal_kl(mean1: jax.Array, logvar1: jax.Array, mean2: jax.Array, logvar2: jax.Array) -> jax.Array:
  """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) per element, in nats."""
  return 0.5 * (logvar2 - logvar1 + jnp.exp(logvar1 - logvar2) + jnp.square(mean1 - mean2) * jnp.exp(-logvar2)
                - 1.0)


def _std_normal_cdf(x: jax.Array) -> jax.Array:
  return 0.5 * (1.0 + jax.scipy.special.erf(x / jnp.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x: jax.Array, mean: jax.Array, log_scale: jax.Array) -> jax.Array:
  """log P(x) per element for x on the 256 levels of [-1, 1]: Gaussian mass of x's bin of width 2/255.

  The first and last bins reach out to -inf and +inf, so the masses of the 256 levels sum to 1.
  """
  inv_std = jnp.exp(-log_scale)
  cdf_plus = _std_normal_cdf(inv_std * (x - mean + 1.0 / 255.0))
  cdf_minus = _std_normal_cdf(inv_std * (x - mean - 1.0 / 255.0))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_minus = jnp.log(jnp.maximum(1.0 - cdf_minus, 1e-12))
  log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_minus, 1e-12))
  return jnp.where(x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_minus, log_delta))


def bits_per_dim(eps_fn: Denoiser, schedule: Schedule, x0_BHWC: jax.Array, keys_B: jax.Array) -> dict[str, jax.Array]:
  """The bound -log p(x_0) <= L_T + sum_{t>1} L_{t-1} + L_0 per image [B], in bits/dim, and its prior and decoder terms.

  L_T = KL(q(x_T|x_0) || N(0, I)); L_{t-1} = KL(q(x_{t-1}|x_t, x_0) || p(x_{t-1}|x_t)) with
  the ancestral sampler's clipped x_0 prediction and fixed-large variance, at one x_t ~ q(x_t|x_0)
  per image and t, its noise from fold_in(the image's key, t); L_0 = -log p(x_0|x_1) under the
  discretized Gaussian decoder. Every timestep is visited (one network call each, in a map).
  """
  B = x0_BHWC.shape[0]
  log2_dims = np.log(2.0) * np.prod(x0_BHWC.shape[1:])

  def per_image(a):
    return jnp.sum(a, axis=tuple(range(1, a.ndim))) / log2_dims

  def term_B(t):
    t_B = jnp.full((B,), t, jnp.int32)
    noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, t), x0_BHWC.shape[1:]))(keys_B)
    xt = process.q_sample(schedule, x0_BHWC, t_B, noise)
    x0_hat = jnp.clip(process.predict_x0(schedule, xt, t_B, eps_fn(xt, t_B)), -1.0, 1.0)
    model_mean, _ = process.q_posterior(schedule, x0_hat, xt, t_B)
    model_logvar = schedule.fixed_large_log_variance[t]
    true_mean, true_var = process.q_posterior(schedule, x0_BHWC, xt, t_B)
    kl = per_image(normal_kl(true_mean, jnp.log(true_var), model_mean, model_logvar))
    nll = -per_image(discretized_gaussian_log_likelihood(x0_BHWC, model_mean, 0.5 * model_logvar))
    return jnp.where(t == 0, nll, kl)

  terms_NB = jax.lax.map(term_B, jnp.arange(schedule.num_timesteps))
  abar_last = schedule.alphas_cumprod[-1]
  prior_B = per_image(normal_kl(jnp.sqrt(abar_last) * x0_BHWC, jnp.log(1.0 - abar_last), 0.0, 0.0))
  return {'bits_per_dim': prior_B + jnp.sum(terms_NB, axis=0), 'bpd_prior': prior_B, 'bpd_decoder': terms_NB[0]}
