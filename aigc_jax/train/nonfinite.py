"""Non-finite training steps: flagged on the device at every step, judged on the host when metrics are read.

Metrics are read back only at log and checkpoint steps (reading them every step would make
the host wait for the device every step). So each step carries its verdict in its metrics
(`COUNT`: how many of the call's steps had a non-finite metric or new train state; `FIRST`:
the number of the first such step, or -1), the loop folds every call's verdict into a running
one on the device (`Watch`, one tiny program per call, no host wait), and a non-finite step
between two reads is still seen before any checkpoint is written.

With skipping on, a non-finite step keeps the old parameters, optimizer state and EMA but
still advances the step counter (so the next step takes the next batch instead of the same
one forever); the skipped steps are counted in the metrics (`SKIPPED`).
"""

import math
from typing import Any

import jax
import jax.numpy as jnp

from aigc_jax.errors import UserError
from aigc_jax.train import state as state_lib

COUNT = 'nonfinite_steps'
FIRST = 'first_nonfinite_step'
SKIPPED = 'skipped_steps'


def _all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in map(jnp.asarray, jax.tree.leaves(tree))
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def guard(state: Any, new_state: Any, metrics: dict[str, jax.Array], skip: bool,
          axis_name: str) -> tuple[Any, dict[str, jax.Array]]:
  """The step from `state` to `new_state` flagged, and with `skip` undone, if it is non-finite.

  A step is non-finite when any metric (the loss, the gradient norm, ...) or any float leaf
  of the new state (params, EMA, optimizer and model state; the frozen parts are left out)
  is NaN or infinite; the verdict is the same on every device. Undone, the state keeps its
  old values but takes the new step counter.
  """
  bad = ~(_all_finite(metrics) & _all_finite(state_lib.trained(new_state)))
  bad = jax.lax.pmax(bad.astype(jnp.int32), axis_name) > 0
  if skip:
    new_state = jax.tree.map(lambda new, old: jnp.where(bad, old, new), new_state, state).replace(
        step=new_state.step)
  flags = {COUNT: bad.astype(jnp.int32), FIRST: jnp.where(bad, state.step + 1, -1).astype(jnp.int32)}
  return new_state, {**metrics, **flags}


def reduce_over_steps(metrics_K: dict[str, jax.Array], skip: bool) -> dict[str, jax.Array]:
  """The metrics of k steps ([k] each) as one call's: with `skip`, means over the steps that were finite.

  `COUNT` is summed and `FIRST` is the first flagged step. Skipping, a metric whose every step
  was flagged keeps its plain (non-finite) mean. Without skipping, every metric is its plain
  mean: a flagged step stops the run, and a non-finite mean names its metric in the error.
  """
  bad_K = metrics_K[COUNT] > 0
  good = jnp.sum(~bad_K)
  flagged = jnp.where(bad_K, metrics_K[FIRST], jnp.iinfo(jnp.int32).max)
  out = {COUNT: jnp.sum(metrics_K[COUNT]), FIRST: jnp.where(jnp.any(bad_K), jnp.min(flagged), -1)}
  for k, m_K in metrics_K.items():
    if k not in out:
      kept = jnp.sum(jnp.where(bad_K, 0.0, m_K)) / jnp.maximum(good, 1)
      out[k] = jnp.where(good > 0, kept, jnp.mean(m_K)) if skip else jnp.mean(m_K)
  return out


@jax.jit
def _fold(seen: dict[str, Any], metrics: dict[str, jax.Array]) -> dict[str, Any]:
  """The running verdict: flagged steps so far, and the metrics of the first call that had any."""
  first_here = (seen[COUNT] == 0) & (metrics[COUNT] > 0)
  return {COUNT: seen[COUNT] + metrics[COUNT],
          'first_flagged': jax.tree.map(lambda a, m: jnp.where(first_here, m, a), seen['first_flagged'], metrics)}


class Watch:
  """Every device call's verdict since the last host read, folded on the device; judged at each read."""

  def __init__(self, skip: bool):
    self.skip = skip
    self.seen: dict[str, Any] | None = None
    self.newest: dict[str, jax.Array] | None = None
    self.unlogged_skips = 0

  def add(self, metrics: dict[str, jax.Array]) -> None:
    """Folds in one call's metrics, without waiting for the device."""
    self.newest = metrics
    if self.seen is None:
      self.seen = {COUNT: metrics[COUNT], 'first_flagged': metrics}
    else:
      self.seen = _fold(self.seen, metrics)

  def read(self, last_checkpoint: int | None) -> dict[str, float]:
    """The newest call's metrics as floats; raises a UserError if any step since the last read was non-finite.

    With skipping on, the flagged steps are counted instead (`take_skipped`).
    """
    seen, newest = jax.device_get((self.seen, self.newest))
    self.seen = self.newest = None
    if seen[COUNT] > 0 and not self.skip:
      raise UserError(_stopped_message({k: float(v) for k, v in seen['first_flagged'].items()}, last_checkpoint))
    self.unlogged_skips += int(seen[COUNT])
    return {k: float(v) for k, v in newest.items() if k not in (COUNT, FIRST)}

  def take_skipped(self) -> int:
    """Steps skipped since the previous call (the previous logged row)."""
    n, self.unlogged_skips = self.unlogged_skips, 0
    return n


def _stopped_message(metrics: dict[str, float], last_checkpoint: int | None) -> str:
  names = [k for k, v in metrics.items() if k not in (COUNT, FIRST) and not math.isfinite(v)]
  what = ', '.join(f'{k}={metrics[k]}' for k in names) if names else 'new parameters or optimizer state'
  kept = (f'the last good checkpoint (step {last_checkpoint}) is kept' if last_checkpoint is not None
          else 'no checkpoint was written')
  return (f'non-finite {what} at step {int(metrics[FIRST])}: training stopped and {kept}; lower optim.lr, '
          'raise optim.warmup_steps or tighten optim.grad_clip, or set training.skip_nonfinite=True to skip '
          'such steps, then rerun to resume')
