"""Generative methods: each is an objective, a per-device train/eval step and a sampler.

A method is written for one device; it reduces across devices only through
`jax.lax.pmean(x, axis_name)`. `aigc_jax.train.parallel` maps it over all devices.
"""

from typing import Any, Protocol

import jax
import ml_collections

from aigc_jax.errors import UserError
from aigc_jax.methods import ddpm
from aigc_jax.train.state import TrainState

Batch = dict[str, Any]
Metrics = dict[str, jax.Array]

_REGISTRY = {'ddpm': ddpm.DDPM}


class Method(Protocol):
  """What the training loop needs of a method, and nothing more."""

  def init(self, rng: jax.Array) -> TrainState:
    """A fresh train state; shapes come from the config, so no data are needed."""

  def train_step(self, state: TrainState, batch: Batch, rng: jax.Array) -> tuple[TrainState, Metrics]:
    """One optimizer step on one device's share of the global batch."""

  def eval_step(self, state: TrainState, batch: Batch, rng: jax.Array) -> Metrics:
    """Held-out metrics of one device's batch, averaged over devices."""

  def sample(self, state: TrainState, rng: jax.Array, num: int) -> dict[str, jax.Array]:
    """`num` samples on one device: {'images': uint8 [num, H, W, C]} for image methods."""


def get_method(config: ml_collections.ConfigDict, axis_name: str) -> Method:
  """The method named by `config.method`, built from the config (validates it)."""
  if config.method not in _REGISTRY:
    raise UserError(f'method={config.method!r} is unknown: choose one of {sorted(_REGISTRY)}')
  return _REGISTRY[config.method](config, axis_name)
