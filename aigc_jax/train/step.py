"""The one gradient step: every method trains with it, supplying only its losses (methods/base.py: Phase).

One step, for each phase of the method in order (one for most methods; a GAN's D, then G):
  1. the phase's loss on this device's batch, its gradient with respect to the phase's network;
  2. the gradient averaged over the devices (`pmean` over the batch axis);
  3. the optimizer of the phase's config section updates the network (train/optim.py);
  4. the EMA of the network samplers use follows (rate `training.ema_rate`);
  5. metrics: the loss's own (averaged over devices), the loss, gradient norm and learning rate.
Then the step counter advances, the method derives its ratio metrics (`Method.summarize`) and
the non-finite guard flags (or, with `training.skip_nonfinite`, undoes) a step with a NaN or
infinity anywhere (`nonfinite.py`). The step's randomness is fold_in(state.rng, state.step),
handed to each loss as an `Rng` (randomness.py) keyed per example, so no loss depends on the
device split by accident. `parallel.py` maps this function over the devices.
"""

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

from aigc_jax.methods.base import Batch
from aigc_jax.methods.base import Method
from aigc_jax.methods.base import Metrics
from aigc_jax.methods.base import Phase
from aigc_jax.randomness import Rng
from aigc_jax.train import nonfinite
from aigc_jax.train import optim
from aigc_jax.train import state as state_lib
from aigc_jax.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class TrainStep:
  """`step(state, batch) -> (state, metrics)` of `method`, on one device of the axis `axis_name`.

  Attributes:
    method: the method whose phases are trained.
    phases: the method's phases (`method.phases`), in order.
    optimizers: one (optimizer, learning-rate schedule) per phase.
    ema_rate: the EMA's rate (0: ema_params are the params).
    axis_name: the device axis gradients and metrics are averaged over.
    skip_nonfinite: whether a non-finite step is undone (else it is flagged, and the loop stops).
  """
  method: Method
  phases: Sequence[Phase]
  optimizers: Sequence[tuple[optax.GradientTransformation, optax.Schedule]]
  ema_rate: float
  axis_name: str
  skip_nonfinite: bool = False

  def init(self, rng: jax.Array) -> TrainState:
    """A fresh state at step 0: the method's params and model state, the optimizers' states, the EMA at the params."""
    params, model_state = self.method.init(rng)
    opt_states = {p.network: tx.init(_own(params, p.network)) for p, (tx, _) in zip(self.phases, self.optimizers)}
    opt_state = opt_states[None] if None in opt_states else opt_states  # one network: its state, not a dict of one
    ema_params = next((_own(params, p.network) for p in self.phases if p.ema), {})
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=ema_params, opt_state=opt_state,
                      rng=jax.random.fold_in(rng, 1), model_state=model_state)

  def __call__(self, state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    rng = Rng(jax.random.fold_in(state.rng, state.step), state.step, self.axis_name)
    rngs = (rng,) if len(self.phases) == 1 else rng.split(len(self.phases))
    new_state, metrics = state, {}
    for phase, (tx, schedule), phase_rng in zip(self.phases, self.optimizers, rngs):
      new_state, phase_metrics = self._update(phase, tx, schedule, new_state, batch, phase_rng)
      metrics = {**metrics, **phase_metrics}
    metrics['loss'] = metrics[_named(self.phases[0], 'loss')]
    new_state = new_state.replace(step=state.step + 1)
    return nonfinite.guard(state, new_state, self.method.summarize(metrics), self.skip_nonfinite, self.axis_name)

  def _update(self, phase: Phase, tx: optax.GradientTransformation, schedule: optax.Schedule, state: TrainState,
              batch: Batch, rng: Rng) -> tuple[TrainState, Metrics]:
    """One phase: gradient of its loss, averaged over the devices, its optimizer's update, the EMA and metrics."""
    net = phase.network
    own = _own(state.params, net)

    def loss_of(own_params):
      return phase.loss(_with(state.params, net, own_params), batch, rng, state.model_state)

    (loss, (metrics, model_state)), grads = jax.value_and_grad(loss_of, has_aux=True)(own)
    grads = jax.lax.pmean(grads, self.axis_name)
    updates, opt_state = tx.update(grads, _own(state.opt_state, net), own)
    own = optax.apply_updates(own, updates)
    if state_lib.PARTS in state.model_state:  # frozen: whatever the loss returns, the parts stay as they were
      model_state = {**model_state, state_lib.PARTS: state.model_state[state_lib.PARTS]}
    state = state.replace(params=_with(state.params, net, own), opt_state=_with(state.opt_state, net, opt_state),
                          model_state=model_state)
    if phase.ema:
      state = state.replace(ema_params=state_lib.ema_update(state.ema_params, own, self.ema_rate))
    metrics = jax.lax.pmean({**metrics, _named(phase, 'loss'): loss}, self.axis_name)
    return state, {**metrics, _named(phase, 'grad_norm'): optax.global_norm(grads),
                   _named(phase, 'lr'): schedule(state.step)}

  def reduce_over_steps(self, metrics_K: Metrics) -> Metrics:
    """The metrics of k steps ([k] each) as one call's (`nonfinite.reduce_over_steps`)."""
    return nonfinite.reduce_over_steps(metrics_K, self.skip_nonfinite)


def _own(tree: Any, network: str | None) -> Any:
  """A network's part of a tree keyed by network (params, optimizer state); the whole tree for one network."""
  return tree if network is None else tree[network]


def _with(tree: Any, network: str | None, own: Any) -> Any:
  """`tree` with the network's part replaced by `own`."""
  return own if network is None else {**tree, network: own}


def _named(phase: Phase, metric: str) -> str:
  return f'{phase.name}_{metric}' if phase.name else metric


def build(method: Method, config: ml_collections.ConfigDict, axis_name: str) -> TrainStep:
  """The train step of `method` with the optimizers, EMA rate and non-finite policy of `config`."""
  phases = method.phases
  if sum(p.ema for p in phases) > 1 or len({p.network for p in phases}) < len(phases):
    raise ValueError(f'{type(method).__name__}: each phase trains its own network, and at most one keeps an EMA')
  t = config.training
  return TrainStep(method=method, phases=tuple(phases), ema_rate=t.ema_rate, axis_name=axis_name,
                   skip_nonfinite=t.skip_nonfinite,
                   optimizers=tuple(optim.create(config[p.optim], t.num_train_steps) for p in phases))


def eval_step(method: Method, axis_name: str) -> Any:
  """`(state, batch, key) -> metrics`: the method's per-example eval metrics averaged over the global batch.

  Examples count by `batch['weights']` where the batch has them (0 for the windows that pad
  the last batch of a text split), else equally.
  """
  def run(state: TrainState, batch: Batch, key: jax.Array) -> Metrics:
    metrics_B = method.eval_step(state, batch, Rng(key, state.step, axis_name))
    weights_B = batch.get('weights', jnp.ones(next(iter(metrics_B.values())).shape[:1], jnp.float32))
    total = jnp.maximum(jax.lax.psum(jnp.sum(weights_B), axis_name), 1.0)
    return {k: jax.lax.psum(jnp.sum(weights_B * m_B), axis_name) / total for k, m_B in metrics_B.items()}
  return run
