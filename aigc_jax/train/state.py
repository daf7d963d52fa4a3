"""The train state every method uses: one pytree that a checkpoint saves whole."""

from typing import Any

import flax
import jax

LAYOUT = 1
"""The layout of TrainState in checkpoints; a checkpoint of another layout is refused with one line (checkpoint.py)."""

PARTS = 'parts'
"""The key of `model_state` that holds the frozen params of other runs' models (train/parts.py)."""


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue exactly where it stopped.

  Attributes:
    step: number of optimizer steps taken (int32 scalar).
    params: the trained parameters; a method of several networks (a GAN) keeps a dict of them.
    ema_params: exponential moving average of the params of the network samplers use (all of
      `params` for a one-network method; a GAN's generator's).
    opt_state: the optax optimizer state (for several networks a dict of their states, keyed like `params`).
    rng: raw uint32[2] key; step s draws its randomness from fold_in(rng, s), so a
      resumed run sees the same random stream an uninterrupted one would.
    model_state: variables no optimizer updates: BatchNorm's running statistics (which the
      losses update) and, under PARTS, the frozen params of other runs' models (which nothing
      updates); {} for methods that have neither.
  """
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array
  model_state: Any


def ema_update(ema: Any, new: Any, rate: float) -> Any:
  """ema <- rate * ema + (1 - rate) * new, leaf by leaf."""
  return jax.tree.map(lambda e, p: rate * e + (1.0 - rate) * p, ema, new)


def param_count(params: Any) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))


def trained(state: TrainState) -> TrainState:
  """`state` without the frozen parts: what a step changes, and what the non-finite guard judges."""
  if not isinstance(state.model_state, dict) or PARTS not in state.model_state:
    return state
  return state.replace(model_state={k: v for k, v in state.model_state.items() if k != PARTS})
