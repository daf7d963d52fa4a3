"""The model's parameterization (`diffusion.prediction`): what the network outputs, as the loss's target and,
for the samplers, as the noise eps every sampler steps with.

Today 'eps' (Ho et al. 2020): the network predicts the noise itself, trained by plain MSE.
"""

from typing import Callable

import jax

from aigc_jax.diffusion.schedules import Schedule

PREDICTIONS = ('eps',)

# A denoiser: eps(x_t, t_B), the noise the model sees in x_t at timesteps t_B; what every sampler steps with.
Denoiser = Callable[[jax.Array, jax.Array], jax.Array]


def target(prediction: str, schedule: Schedule, x0: jax.Array, t_B: jax.Array, noise: jax.Array) -> jax.Array:
  """What the network should output for x_t = q_sample(x0, t, noise): the regression target of the loss."""
  del prediction, schedule, x0, t_B  # 'eps': the noise
  return noise


def denoiser(prediction: str, schedule: Schedule, model_fn: Callable[[jax.Array, jax.Array], jax.Array]) -> Denoiser:
  """The noise prediction of a network `model_fn(x_t, t_B)` of this parameterization."""
  del prediction, schedule  # 'eps': the output is the noise
  return model_fn
