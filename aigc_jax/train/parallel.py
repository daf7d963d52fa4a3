"""The only module that knows about devices and processes, and the only one that calls `jax.pmap`.

Methods write their steps for one device and reduce with `jax.lax.pmean(x, AXIS)`; this module
maps them over the local devices. Train state goes in unreplicated (`in_axes=None`) and
comes back as one array replicated over the devices (`out_axes=None`), so the rest of the
code never sees a device axis on the state; batches carry a leading [devices] axis.
"""

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from aigc_jax.errors import UserError
from aigc_jax.train import nonfinite

AXIS = 'batch'


@dataclasses.dataclass(frozen=True)
class Devices:
  """The devices a run maps over: this process's `local` ones out of `global_count`."""
  local: Sequence[jax.Device]
  process_index: int
  process_count: int

  @property
  def global_count(self) -> int:
    return len(self.local) * self.process_count

  @property
  def kind(self) -> str:
    return f'{self.global_count} x {self.local[0].device_kind}'


def devices(local: Sequence[jax.Device] | None = None) -> Devices:
  """All local devices of this process (or the given ones) and the process layout."""
  return Devices(local=tuple(local or jax.local_devices()), process_index=jax.process_index(),
                 process_count=jax.process_count())


def check_batch(global_batch: int, devs: Devices, key: str = 'training.batch_size') -> int:
  """The per-device batch, or a clear error when `global_batch` does not divide over all devices."""
  if global_batch <= 0 or global_batch % devs.global_count:
    raise UserError(f'{key}={global_batch} must be a positive multiple of the number of devices '
                    f'({devs.global_count} = {devs.process_count} processes x {len(devs.local)} '
                    f'devices): change {key} or the devices used')
  return global_batch // devs.global_count


def _keyed(step_fn: Callable, skip_nonfinite: bool = False) -> Callable:
  """step_fn with the key of the state's step, fold_in(state.rng, state.step), and non-finite steps flagged.

  With `skip_nonfinite` a non-finite step keeps the old state but advances the step (`nonfinite.guard`).
  """
  guarded = nonfinite.guard(step_fn, skip_nonfinite, AXIS)
  return lambda state, batch: guarded(state, batch, jax.random.fold_in(state.rng, state.step))


def _pmapped_step(fn: Callable, devs: Devices, donate: bool) -> Callable:
  """fn(state, batch) over the local devices: state unreplicated in, replicated out."""
  return jax.pmap(fn, axis_name=AXIS, in_axes=(None, 0), out_axes=(None, None),
                  devices=devs.local, donate_argnums=(0,) if donate else ())


def compiled_train_step(step_fn: Callable, devs: Devices, state: Any, batch: Any,
                        donate: bool = True) -> tuple[Callable, dict[str, float]]:
  """The one-step program `train_step` runs, compiled ahead of time for these shapes, and its cost.

  The cost is XLA's analysis of the per-device program ('flops', 'bytes accessed', ...),
  for benchmarks; calling the compiled step runs exactly what training runs.
  """
  compiled = _pmapped_step(_keyed(step_fn), devs, donate).lower(state, batch).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return compiled, {k: float(v) for k, v in (cost or {}).items() if isinstance(v, (int, float))}


def train_step(step_fn: Callable, devs: Devices, steps_per_call: int = 1,
               donate: bool = True, skip_nonfinite: bool = False) -> Callable:
  """Maps `step_fn(state, batch, rng) -> (state, metrics)` over devices, k steps per call.

  The returned function takes the state and a list of k per-step batches (each
  [devices, per_device, ...]); step s draws its randomness from fold_in(state.rng, s).
  With k > 1 the steps run in one `lax.scan` and metrics are averaged over them; k = 1
  calls the step directly, since XLA:CPU runs gradients inside loops many times slower.
  Metrics carry the non-finite flags of `nonfinite.guard` (skipping such steps with
  `skip_nonfinite`).
  """
  one_step = _keyed(step_fn, skip_nonfinite)

  def multi_step(state, batches):
    state, metrics = jax.lax.scan(one_step, state, batches)
    return state, nonfinite.reduce_over_steps(metrics)

  single = _pmapped_step(one_step, devs, donate)
  multi = _pmapped_step(multi_step, devs, donate) if steps_per_call > 1 else None

  def run(state, batches: Sequence[Any]):
    if multi is not None and len(batches) == steps_per_call:
      return multi(state, jax.tree.map(lambda *xs: np.stack(xs, axis=1), *batches))
    for batch in batches:  # k = 1, or the short last call of a run
      state, metrics = single(state, batch)
    return state, metrics
  return run


def eval_step(step_fn: Callable, devs: Devices) -> Callable:
  """Maps `step_fn(state, batch, rng) -> metrics` over devices; metrics come back as host floats."""
  mapped = jax.pmap(step_fn, axis_name=AXIS, in_axes=(None, 0, None), out_axes=None,
                    devices=devs.local)
  return lambda state, batch, rng: jax.device_get(mapped(state, batch, rng))


def sampler(sample_fn: Callable, devs: Devices, num: int) -> Callable:
  """Maps `sample_fn(state, rng, n)` over devices to draw `num` samples in all.

  Each device draws ceil(num / devices) with its own key; the result is this process's
  samples as host numpy arrays with the device axis folded into the first, cut to `num`.
  """
  per_device = -(-num // devs.global_count)
  mapped = jax.pmap(functools.partial(sample_fn, num=per_device), axis_name=AXIS,
                    in_axes=(None, 0), devices=devs.local)

  def run(state, rng):
    keys = jax.random.split(rng, devs.global_count)
    start = devs.process_index * len(devs.local)
    out = jax.device_get(mapped(state, keys[start:start + len(devs.local)]))
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:])[:num], out)
  return run


def on_every_device(fn: Callable, devs: Devices) -> Callable:
  """Runs `fn(state, batch, rng)` with the same whole batch and key on every local device; one copy comes back.

  For small inference on a few examples that must meet (pairs to interpolate between): too
  little work to split, and every device computes the same. The result is host numpy arrays.
  """
  mapped = jax.pmap(fn, axis_name=AXIS, in_axes=(None, None, 0), devices=devs.local)

  def run(state, batch, rng):
    out = mapped(state, batch, jnp.broadcast_to(rng, (len(devs.local),) + rng.shape))
    return jax.tree.map(lambda x: np.asarray(x[0]), out)
  return run


def forward(apply_fn: Callable, params: Any, devs: Devices) -> Callable:
  """Maps `apply_fn(params, x) -> outputs` over devices with fixed params, for inference.

  The params are put on every device once, here, replicated: passing host arrays to each
  call would send them again every time. The returned function takes x [devices,
  per_device, ...]; its outputs keep the device axis and stay on the devices until read,
  so the next call can be queued first.
  """
  mapped = jax.pmap(apply_fn, axis_name=AXIS, in_axes=(None, 0), devices=devs.local)
  params = replicate(params, devs)
  return lambda x: mapped(params, x)


def replicate(tree: Any, devs: Devices) -> Any:
  """`tree` on every local device, laid out as the pmapped steps return the state (replicated).

  A state fresh from init sits on one device; giving it the layout the step returns makes
  the first call compile the same program as every later one, instead of a second one.
  """
  return jax.device_put(tree, jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(devs.local), (AXIS,)),
                                                         jax.sharding.PartitionSpec()))
