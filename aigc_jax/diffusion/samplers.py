"""Samplers, registered by name (`sample.method`), each one small function of a denoiser.

A sampler is `fn(eps_fn, schedule, shape, rng, settings) -> x`: it draws x_T ~ N(0, I) of
`shape` from `rng` and denoises it to x_0 with the noise predictions `eps_fn(x_t, t_B)`
(prediction.Denoiser), reading its settings from `settings` (config.sample). It runs inside
a jitted program, so its loops are `lax` loops. Registering one takes its function and its
config rules (rules.py), which are checked only when `sample.method` names it:

  @samplers.register('mine', rules=(Rule('sample.steps', lambda c: c.sample.steps > 0, '...'),))
  def mine(eps_fn, schedule, shape, rng, settings): ...
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from aigc_jax.diffusion import process
from aigc_jax.diffusion.prediction import Denoiser
from aigc_jax.diffusion.schedules import Schedule
from aigc_jax.rules import Rule
from aigc_jax.rules import one_of

SampleFn = Callable[[Denoiser, Schedule, tuple[int, ...], jax.Array, ml_collections.ConfigDict], jax.Array]


@dataclasses.dataclass(frozen=True)
class Sampler:
  fn: SampleFn
  rules: tuple[Rule, ...]


REGISTRY: dict[str, Sampler] = {}


def register(name: str, rules: tuple[Rule, ...] = ()) -> Callable[[SampleFn], SampleFn]:
  """Registers the decorated function as sampler `name`, with the config rules that hold when it is chosen."""
  def decorate(fn: SampleFn) -> SampleFn:
    REGISTRY[name] = Sampler(fn, tuple(rules))
    return fn
  return decorate


def get(name: str) -> SampleFn:
  return REGISTRY[name].fn


def rules() -> list[Rule]:
  """`sample.method` names a registered sampler, and that sampler's own rules."""
  out = [one_of('sample.method', REGISTRY)]
  for name, sampler in REGISTRY.items():
    out += [Rule(r.key, lambda c, r=r, name=name: c.sample.method != name or r.ok(c), r.message)
            for r in sampler.rules]
  return out


def clip_x0(x0: jax.Array, settings: Any) -> jax.Array:
  """The predicted x_0 clipped to the data's range [-1, 1] (pixels); `sample.clip_x0=False` (latents, which have
  no such range) leaves it as predicted."""
  return jnp.clip(x0, -1.0, 1.0) if settings.get('clip_x0', True) else x0


@register('ancestral')
def ancestral(eps_fn: Denoiser, schedule: Schedule, shape: tuple[int, ...], rng: jax.Array,
              settings: Any) -> jax.Array:
  """Ho et al.'s sampler: every timestep, the posterior mean at the clipped x_0 prediction plus fixed-large noise."""
  x = jax.random.normal(rng, shape)
  t_last = schedule.num_timesteps - 1

  def body(i, x):
    t = t_last - i
    t_B = jnp.full((shape[0],), t, jnp.int32)
    x0 = clip_x0(process.predict_x0(schedule, x, t_B, eps_fn(x, t_B)), settings)
    mean, _ = process.q_posterior(schedule, x0, x, t_B)
    z = jax.random.normal(jax.random.fold_in(rng, t), x.shape)
    return mean + (t > 0) * jnp.exp(0.5 * schedule.fixed_large_log_variance[t]) * z
  return jax.lax.fori_loop(0, schedule.num_timesteps, body, x)


def ddim_timesteps(num_timesteps: int, steps: int) -> np.ndarray:
  """`steps` timesteps from num_timesteps - 1 down to 0, evenly spaced."""
  return np.round(np.linspace(num_timesteps - 1, 0, steps)).astype(np.int32)


def ddim_clipped_eps(settings: Any) -> bool:
  """Whether DDIM steps with the noise that the clipped x_0 implies rather than the model's own.

  Measured on configs/ddpm_digits_cond.py (class accuracy, FID under the digits classifier): the model's
  noise is better unguided (0.996 / 1.44 against 0.681 / 11.1 at w = 0), the implied noise under strong
  guidance, where the model's noise beside a clipped x_0 drives x_t off the forward path (0.282 / 47.6
  against 1.000 / 0.61 at w = 3); 'auto' takes the implied noise for w > 1.
  """
  if settings.ddim_eps == 'auto':
    return settings.guidance_scale > 1.0
  return settings.ddim_eps == 'clipped'


@register('ddim', rules=(
    Rule('sample.steps', lambda c: 1 <= c.sample.steps <= c.diffusion.num_timesteps,
         'sample.steps={sample.steps} must be in 1..{diffusion.num_timesteps} (diffusion.num_timesteps)'),
    # past 1 the DDIM step's noise outweighs its variance: NaN images
    Rule('sample.eta', lambda c: 0.0 <= c.sample.eta <= 1.0,
         'sample.eta={sample.eta} must be in [0, 1] (0: deterministic DDIM, 1: as noisy as the ancestral sampler)'),
    Rule('sample.ddim_eps', lambda c: c.sample.ddim_eps in ('auto', 'model', 'clipped'),
         "sample.ddim_eps={sample.ddim_eps!r} is unknown: use 'model', 'clipped' or 'auto'"),
))
def ddim(eps_fn: Denoiser, schedule: Schedule, shape: tuple[int, ...], rng: jax.Array, settings: Any) -> jax.Array:
  """DDIM (Song et al. 2021): `sample.steps` evenly spaced timesteps, noise `sample.eta` (0: deterministic).

  x <- sqrt(abar') x_0 + sqrt(1 - abar' - sigma^2) eps + sigma z with the clipped x_0 and, by
  `sample.ddim_eps`, the model's noise or the one the clipped x_0 implies (`ddim_clipped_eps`).
  """
  t_U = jnp.asarray(ddim_timesteps(schedule.num_timesteps, settings.steps))
  abar_U = schedule.alphas_cumprod[t_U]
  abar_prev_U = jnp.append(abar_U[1:], 1.0)
  eta, clipped_eps = settings.eta, ddim_clipped_eps(settings)
  x = jax.random.normal(rng, shape)

  def body(i, x):
    t_B = jnp.full((shape[0],), t_U[i], jnp.int32)
    abar, abar_prev = abar_U[i], abar_prev_U[i]
    eps = eps_fn(x, t_B)
    x0 = clip_x0(process.predict_x0(schedule, x, t_B, eps), settings)
    if clipped_eps:
      eps = (x - jnp.sqrt(abar) * x0) / jnp.sqrt(1.0 - abar)
    sigma = eta * jnp.sqrt((1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev))
    z = jax.random.normal(jax.random.fold_in(rng, i), x.shape)
    return jnp.sqrt(abar_prev) * x0 + jnp.sqrt(1.0 - abar_prev - sigma**2) * eps + sigma * z
  return jax.lax.fori_loop(0, t_U.shape[0], body, x)
