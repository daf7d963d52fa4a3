"""The train state every method uses: one pytree that a checkpoint saves whole."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue exactly where it stopped.

  Attributes:
    step: number of optimizer steps taken (int32 scalar).
    params: the trained parameters (for GANs a dict of both networks' parameters).
    ema_params: exponential moving average of `params` (a GAN's: of its generator's), what
      samplers use.
    opt_state: the optax optimizer state (for GANs a dict of both networks' states).
    rng: raw uint32[2] key; step s draws its randomness from fold_in(rng, s), so a
      resumed run sees the same random stream an uninterrupted one would.
    model_state: variables the model updates without an optimizer, such as BatchNorm's
      running statistics ({} for models that have none).
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


def apply_gradients(state: TrainState, grads: Any, tx: optax.GradientTransformation,
                    ema_rate: float) -> TrainState:
  """One optimizer step on `state.params`, then the EMA; advances `state.step`."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                       ema_params=ema_update(state.ema_params, params, ema_rate))


def create(params: Any, tx: optax.GradientTransformation | dict[str, optax.GradientTransformation],
           rng: jax.Array, model_state: Any = None) -> TrainState:
  """A fresh state at step 0 whose EMA starts at `params`.

  `tx` is one optimizer, or a dict of optimizers keyed like `params` (a GAN's generator and
  discriminator), each then with its own state.
  """
  opt_state = {k: t.init(params[k]) for k, t in tx.items()} if isinstance(tx, dict) else tx.init(params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params, opt_state=opt_state,
                    rng=rng, model_state={} if model_state is None else model_state)
