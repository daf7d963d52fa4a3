"""The only module that knows about devices and processes, and the only one that calls `jax.pmap`.

The shared train and eval steps (`train/step.py`) are written for one device and reduce with
`jax.lax.pmean(x, AXIS)`; this module maps them over the local devices. Train state goes in unreplicated (`in_axes=None`) and
comes back as one array replicated over the devices (`out_axes=None`), so the rest of the
code never sees a device axis on the state; batches carry a leading [devices] axis.

Several processes (hosts) run one program each (JAX's multi-controller model, started by
`initialize`): each passes its own batches [local devices, ...], the mapped axis spans every
device of every process, and the state is kept as one global array replicated over all of
them, which is what Orbax's multi-process checkpointing saves.
"""

import collections
import dataclasses
import functools
import os
from typing import Any, Callable, Iterator, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from aigc_jax.errors import UserError

AXIS = 'batch'


class Step(Protocol):
  """The shared train step (`train/step.TrainStep`), as this module maps it."""

  def __call__(self, state: Any, batch: Any) -> tuple[Any, dict[str, jax.Array]]: ...

  def reduce_over_steps(self, metrics_K: dict[str, jax.Array]) -> dict[str, jax.Array]: ...


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

  @property
  def mapped(self) -> Sequence[jax.Device] | None:
    """The devices `jax.pmap` maps over: the local ones, or None (all global devices) with several processes.

    Given the local devices only, a multi-process pmap would reduce within each process.
    """
    return self.local if self.process_count == 1 else None


def _env_count(name: str) -> int:
  try:
    return int(os.environ.get(name, '1'))
  except ValueError:
    return 1


def cluster_environment() -> str | None:
  """The multi-process cluster this process was started in, as JAX's auto-detection sees it; None if none.

  Only environments with more than one process count: a one-task SLURM job (a sweep trial)
  is a plain single-process run.
  """
  env = os.environ
  if env.get('JAX_COORDINATOR_ADDRESS'):
    return 'JAX_COORDINATOR_ADDRESS'
  if all(k in env for k in ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_PROCID', 'SLURM_LOCALID')) and (
      _env_count('SLURM_NTASKS') > 1):
    return 'SLURM'
  if 'OMPI_MCA_orte_hnp_uri' in env and _env_count('OMPI_COMM_WORLD_SIZE') > 1:
    return 'Open MPI'
  hosts = env.get('TPU_WORKER_HOSTNAMES') or env.get('TPU_PROCESS_ADDRESSES') or ''
  if len([h for h in hosts.split(',') if h]) > 1 or env.get('MEGASCALE_COORDINATOR_ADDRESS'):
    return 'TPU pod'
  return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> str | None:
  """Starts JAX's multi-process runtime when this run spans processes; says how, or None for one process.

  From the flags when given (the rest detected by JAX where it can), else from a cluster
  environment JAX detects by itself (SLURM, Open MPI, TPU pods); a single-process run starts
  nothing. Call before any JAX computation. CPU processes talk through gloo collectives.
  """
  if coordinator_address is None and num_processes is None and process_id is None:
    where = cluster_environment()
    if where is None:
      return None
  elif coordinator_address is None and num_processes in (None, 1) and process_id in (None, 0):
    return None  # --num_processes=1: one process, nothing to start
  else:
    where = 'the --coordinator_address / --num_processes / --process_id flags'
    if num_processes is not None and num_processes < 1:
      raise UserError(f'--num_processes={num_processes} must be >= 1')
    if process_id is not None and not 0 <= process_id < (num_processes or process_id + 1):
      raise UserError(f'--process_id={process_id} must be in 0..{num_processes - 1} (--num_processes - 1)')
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  except (ValueError, TypeError, RuntimeError) as e:
    raise UserError(f'cannot start the multi-process run ({where}): {" ".join(str(e).split())[:300]}; '
                    'give all of --coordinator_address=HOST:PORT (process 0\'s), --num_processes and '
                    '--process_id, or start the run under SLURM / Open MPI / a TPU pod') from None
  return f'process {jax.process_index()} of {jax.process_count()} ({where})'


def is_main_process() -> bool:
  """Whether this process writes what a run shares (logs, metrics, samples): process 0."""
  return jax.process_index() == 0


def devices(local: Sequence[jax.Device] | None = None) -> Devices:
  """All local devices of this process (or, in a single-process run, the given ones) and the process layout."""
  if local is not None and jax.process_count() > 1 and set(local) != set(jax.local_devices()):
    raise ValueError('a multi-process run maps over all local devices of every process')
  return Devices(local=tuple(local or jax.local_devices()), process_index=jax.process_index(),
                 process_count=jax.process_count())


def check_batch(global_batch: int, devs: Devices, key: str = 'training.batch_size') -> int:
  """The per-device batch, or a clear error when `global_batch` does not divide over all devices."""
  if global_batch <= 0 or global_batch % devs.global_count:
    raise UserError(f'{key}={global_batch} must be a positive multiple of the number of devices '
                    f'({devs.global_count} = {devs.process_count} processes x {len(devs.local)} '
                    f'devices): change {key} or the devices used')
  return global_batch // devs.global_count


def _pmapped_step(fn: Callable, devs: Devices, donate: bool) -> Callable:
  """fn(state, batch) over the local devices: state unreplicated in, replicated out."""
  return jax.pmap(fn, axis_name=AXIS, in_axes=(None, 0), out_axes=(None, None),
                  devices=devs.mapped, donate_argnums=(0,) if donate else ())


def compiled_train_step(step: Step, devs: Devices, state: Any, batch: Any,
                        donate: bool = True) -> tuple[Callable, dict[str, float]]:
  """The one-step program `train_step` runs, compiled ahead of time for these shapes, and its cost.

  The cost is XLA's analysis of the per-device program ('flops', 'bytes accessed', ...),
  for benchmarks; calling the compiled step runs exactly what training runs.
  """
  compiled = _pmapped_step(lambda s, b: step(s, b), devs, donate).lower(state, batch).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return compiled, {k: float(v) for k, v in (cost or {}).items() if isinstance(v, (int, float))}


@dataclasses.dataclass(frozen=True)
class StepInputs:
  """The batches of one train-step call, already on the devices (`to_devices`).

  `stacked`: one tree [devices, k, per_device, ...] for the k-step program; otherwise
  `batches` is a list of per-step trees [devices, per_device, ...].
  """
  batches: Any
  stacked: bool
  steps: int


def to_devices(batches: Sequence[Any], devs: Devices, steps_per_call: int = 1) -> StepInputs:
  """Sends the host batches of one call to the devices, split along their [devices] axis.

  The copies start at once and run while earlier steps compute (see `prefetch`). A full
  call of k > 1 steps is stacked on the host first, as the k-step program takes it. With
  several processes the batches stay host arrays, which the global pmap sends to each
  process's own devices.
  """
  sharding = _sharding(devs.local, jax.sharding.PartitionSpec(AXIS))
  put = (lambda tree: jax.device_put(tree, sharding)) if devs.process_count == 1 else (lambda tree: tree)
  if steps_per_call > 1 and len(batches) == steps_per_call:
    return StepInputs(put(jax.tree.map(lambda *xs: np.stack(xs, axis=1), *batches)), True, len(batches))
  return StepInputs([put(b) for b in batches], False, len(batches))


def prefetch(calls: Iterator[Sequence[Any]], devs: Devices, steps_per_call: int = 1,
             depth: int = 2) -> Iterator[StepInputs]:
  """Yields each call's batches on the devices, `depth` calls ahead (double buffering at 2).

  While the devices run one call, the next one's host batches are built and copied, so the
  step never waits on the host.
  """
  queue: collections.deque[StepInputs] = collections.deque()
  for batches in calls:
    queue.append(to_devices(batches, devs, steps_per_call))
    if len(queue) == depth:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def train_step(step: Step, devs: Devices, steps_per_call: int = 1, donate: bool = True) -> Callable:
  """Maps the shared train step (`train/step.py`: `step(state, batch) -> (state, metrics)`) over devices, k steps a call.

  The returned function takes the state and one call's batches: a list of per-step host
  batches (each [devices, per_device, ...]) or `StepInputs` from `to_devices`/`prefetch`.
  With k > 1 a full call runs in one `lax.scan`; its metrics, and a short call's, are
  averaged over its steps (`step.reduce_over_steps`). On CPUs the scan is unrolled: XLA:CPU
  runs a UNet's gradient inside a loop 8-40x slower than the same step unrolled (measured on
  ddpm_digits), at the price of compiling k copies of the step.
  """
  unroll = devs.local[0].platform == 'cpu'

  def multi_step(state, batches):
    state, metrics = jax.lax.scan(lambda s, b: step(s, b), state, batches, unroll=unroll)
    return state, step.reduce_over_steps(metrics)

  single = _pmapped_step(lambda s, b: step(s, b), devs, donate)
  multi = _pmapped_step(multi_step, devs, donate) if steps_per_call > 1 else None

  def run(state, inputs: StepInputs | Sequence[Any]):
    if not isinstance(inputs, StepInputs):
      inputs = to_devices(inputs, devs, steps_per_call)
    if inputs.stacked:
      state, metrics = multi(state, inputs.batches)
      return _global(state, devs), metrics
    per_step = []
    for batch in inputs.batches:  # k = 1, or a short call at the start or end of a run
      state, metrics = single(state, batch)
      per_step.append(metrics)
    if len(per_step) > 1:  # one call's metrics, as a scanned call reduces them
      metrics = step.reduce_over_steps(jax.tree.map(lambda *m: jnp.stack(m), *per_step))
    return _global(state, devs), metrics
  return run


def eval_step(step_fn: Callable, devs: Devices) -> Callable:
  """Maps `step_fn(state, batch, rng) -> metrics` over devices; metrics come back as host floats."""
  mapped = jax.pmap(step_fn, axis_name=AXIS, in_axes=(None, 0, None), out_axes=None,
                    devices=devs.mapped)
  return lambda state, batch, rng: jax.device_get(mapped(state, batch, rng))


def sampler(sample_fn: Callable, devs: Devices, num: int) -> Callable:
  """Maps `sample_fn(state, rng, n)` over devices to draw `num` samples in all.

  Each device draws ceil(num / devices) with its own key; the result is the samples of all
  devices of all processes, in every process, as host numpy arrays with the device axis
  folded into the first, cut to `num`.
  """
  per_device = -(-num // devs.global_count)
  mapped = jax.pmap(functools.partial(sample_fn, num=per_device), axis_name=AXIS,
                    in_axes=(None, 0), devices=devs.mapped)

  def run(state, rng):
    keys = jax.random.split(rng, devs.global_count)
    start = devs.process_index * len(devs.local)
    out = jax.device_get(mapped(state, keys[start:start + len(devs.local)]))
    if devs.process_count > 1:
      out = multihost_utils.process_allgather(out, tiled=True)
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:])[:num], out)
  return run


def barrier(name: str, devs: Devices) -> None:
  """Waits until every process has reached the barrier `name` (nothing to wait for with one process)."""
  if devs.process_count > 1:
    multihost_utils.sync_global_devices(name)


def any_process(flag: bool, devs: Devices) -> bool:
  """Whether `flag` holds in any process: a collective, so every process must call it at the same step."""
  if devs.process_count == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def on_every_device(fn: Callable, devs: Devices) -> Callable:
  """Runs `fn(state, batch, rng)` with the same whole batch and key on every local device; one copy comes back.

  For small inference on a few examples that must meet (pairs to interpolate between): too
  little work to split, and every device computes the same. The result is host numpy arrays.
  """
  mapped = jax.pmap(fn, axis_name=AXIS, in_axes=(None, None, 0), devices=devs.mapped)

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
  mapped = jax.pmap(apply_fn, axis_name=AXIS, in_axes=(None, 0), devices=devs.mapped)
  params = replicate(params, devs)
  return lambda x: mapped(params, x)


def replicate(tree: Any, devs: Devices) -> Any:
  """`tree` on every local device, laid out as the pmapped steps return the state (replicated).

  A state fresh from init sits on one device; giving it the layout the step returns makes
  the first call compile the same program as every later one, instead of a second one.
  With several processes the result is one global array over all their devices.
  """
  return _global(jax.device_put(tree, _replicated(devs.local)), devs)


def _sharding(devices_: Sequence[jax.Device], spec: jax.sharding.PartitionSpec) -> jax.sharding.NamedSharding:
  """`spec` over a one-axis (AXIS) mesh of `devices_`."""
  return jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(devices_), (AXIS,)), spec)


def _replicated(devices_: Sequence[jax.Device]) -> jax.sharding.NamedSharding:
  return _sharding(devices_, jax.sharding.PartitionSpec())


def _global(tree: Any, devs: Devices) -> Any:
  """A tree replicated over this process's devices as global arrays replicated over every process's devices.

  A multi-process pmap returns each process's copy as an array of that process alone,
  which Orbax cannot save; the global array is the same per-device buffers, not a copy.
  The identity in a single-process run.
  """
  if devs.process_count == 1:
    return tree
  sharding = _replicated(jax.devices())
  return jax.tree.map(lambda x: jax.make_array_from_single_device_arrays(
      x.shape, sharding, [s.data for s in x.addressable_shards]), tree)
