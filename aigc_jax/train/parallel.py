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


def train_step(step_fn: Callable, devs: Devices, steps_per_call: int = 1,
               donate: bool = True) -> Callable:
  """Maps `step_fn(state, batch, rng) -> (state, metrics)` over devices, k steps per call.

  The returned function takes the state and a list of k per-step batches (each
  [devices, per_device, ...]); step s draws its randomness from fold_in(state.rng, s).
  With k > 1 the steps run in one `lax.scan` and metrics are averaged over them; k = 1
  calls the step directly, since XLA:CPU runs gradients inside loops many times slower.
  """
  def one_step(state, batch):
    return step_fn(state, batch, jax.random.fold_in(state.rng, state.step))

  def multi_step(state, batches):
    state, metrics = jax.lax.scan(one_step, state, batches)
    return state, jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)

  def pmapped(fn):
    return jax.pmap(fn, axis_name=AXIS, in_axes=(None, 0), out_axes=(None, None),
                    devices=devs.local, donate_argnums=(0,) if donate else ())
  single = pmapped(one_step)
  multi = pmapped(multi_step) if steps_per_call > 1 else None

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
