"""Speed of a config's train step or sampler on this machine, as one JSON line.

  python -m aigc_jax.bench --config=configs/ddpm_cifar.py --steps=20 [--config.x=...]
  python -m aigc_jax.bench --config=configs/gpt_shakespeare_cpu.py --what=sample --steps=5
  python -m aigc_jax.bench --config=configs/ddpm_cifar.py --what=sample --samplers=ancestral,ddim:50,dpmpp_2m:20

--what=train times the exact pmapped step training runs (compiled ahead of time, on the
config's real data): median step time after warm-up, examples/s (tokens/s for text), compile
time, XLA's FLOPs per step, achieved FLOP/s and model FLOP utilisation against the matmul
peak measured in the same run and, on known GPUs/TPUs, the vendor's dense peak.
--what=sample times `sample.num` samples from freshly initialised parameters: images/s,
or new tokens/s for the LM. `--samplers=NAME[:STEPS],...` times each registered diffusion
sampler named (with `sample.steps` = STEPS) on the same parameters, one JSON line each, and
one line saying `skipped` for a name no sampler is registered under; without it, the
config's own sampler. Progress goes to stderr, the JSON lines to stdout.
"""

import copy
import json
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from aigc_jax import cli
from aigc_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a get_config() file in configs/.')
_WHAT = flags.DEFINE_enum('what', 'train', ['train', 'sample'], 'Time the train step or the sampler.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed calls after warm-up.')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed calls after compiling.')
_SAMPLERS = flags.DEFINE_list('samplers', [], '--what=sample of a diffusion config: NAME[:STEPS] of registered '
                              'samplers to time in turn (default: the config\'s sample.method).')
flags.mark_flags_as_required(['config'])

# Vendor dense peak TFLOP/s per device (bf16 tensor cores; fp32 without TF32), by device_kind substring.
VENDOR_PEAK_TFLOPS = (
    ('H100 PCIe', {'bfloat16': 756.0, 'float32': 51.2}),
    ('H100', {'bfloat16': 989.4, 'float32': 66.9}),
    ('H200', {'bfloat16': 989.4, 'float32': 66.9}),
    ('A100', {'bfloat16': 312.0, 'float32': 19.5}),
    ('TPU v6', {'bfloat16': 918.0}),
    ('TPU v5 lite', {'bfloat16': 197.0}),
    ('TPU v5', {'bfloat16': 459.0}),
    ('TPU v4', {'bfloat16': 275.0}),
)


def _say(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def vendor_peak(device_kind: str, dtype: str) -> float | None:
  """The vendor's dense peak FLOP/s of one device of this kind at this dtype, if known."""
  for name, peaks in VENDOR_PEAK_TFLOPS:
    if name in device_kind:
      return peaks[dtype] * 1e12 if dtype in peaks else None
  return None


def matmul_peak(dtype: str, n: int = 4096, repeats: int = 3) -> float:
  """FLOP/s of an n x n x n matmul at `dtype` on the first device: the achievable peak, measured."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.dtype(dtype))
  mm = jax.jit(lambda x, y: x @ y)
  mm(a, a).block_until_ready()
  best = min(_timed(lambda: mm(a, a).block_until_ready()) for _ in range(repeats))
  return 2.0 * n ** 3 / best


def _timed(fn: Callable[[], Any]) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def _memory(devs: Any) -> int | None:
  """Peak bytes in use on the first device, where the backend reports it (not on CPU)."""
  stats = devs.local[0].memory_stats()
  return int(stats['peak_bytes_in_use']) if stats and 'peak_bytes_in_use' in stats else None


def _setup(config: ml_collections.ConfigDict) -> tuple[Any, Any, Any, Any, Any]:
  """Devices, the training data, the method, its train step and a fresh state, validated as the loop does."""
  from aigc_jax import methods
  from aigc_jax.train import loop
  from aigc_jax.train import parallel
  from aigc_jax.train import parts
  devs = parallel.devices()
  loop.validate(config, devs)
  methods.check_config(config)
  ds = loop.train_data(config, devs)
  method, train_step, state = loop.build(config, ds.info, parts.resolve(config, parallel.AXIS))
  return devs, ds, method, train_step, parallel.replicate(state, devs)


def _compute_dtype(config: ml_collections.ConfigDict) -> str:
  """The dtype the model computes in on this backend ('auto' resolved)."""
  from aigc_jax.methods import precision
  return precision.compute_dtype(config.model.get('dtype', 'float32')).name


def bench_train(config: ml_collections.ConfigDict, steps: int, warmup: int) -> dict[str, Any]:
  """Times the pmapped train step on real batches already on the devices, as the loop's prefetch has them.

  With training.steps_per_call = k > 1, `steps` calls of k scanned steps are timed and the
  step time is a call's time / k. The host's time to build one batch is measured apart.
  """
  from aigc_jax.train import loop
  from aigc_jax.train import parallel
  devs, ds, _, train_step, state = _setup(config)
  k = config.training.steps_per_call
  calls, host_s = [], []
  for c in range(warmup + steps):
    start = time.perf_counter()
    batches = [ds.batch(c * k + i) for i in range(k)]
    host_s.append((time.perf_counter() - start) / k)
    calls.append(batches)
  start = time.perf_counter()
  one_step, cost = parallel.compiled_train_step(train_step, devs, state, calls[0][0])
  compile_s = time.perf_counter() - start
  run = parallel.train_step(train_step, devs, k) if k > 1 else None
  inputs = [parallel.to_devices(batches, devs, k) for batches in calls]
  jax.block_until_ready([i.batches for i in inputs])
  call_s, startup_s = [], None
  for i, call in enumerate(inputs):
    start = time.perf_counter()
    state, metrics = run(state, call) if run else one_step(state, call.batches[0])
    jax.block_until_ready(metrics)
    call_s.append(time.perf_counter() - start)
    if startup_s is None:
      startup_s = loop.process_age()
  median = float(np.median(call_s[warmup:])) / k
  batch = config.training.batch_size
  first = next(iter(calls[0][0].values()))
  per_example = int(np.prod(first.shape[2:])) - 1 if 'tokens' in calls[0][0] else 1
  dtype = _compute_dtype(config)
  flops = cost.get('flops', 0.0) * devs.global_count
  result = {
      'what': 'train', 'config': flags.FLAGS['config'].config_filename, 'method': config.method,
      'device_kind': devs.local[0].device_kind, 'devices': devs.global_count, 'dtype': dtype,
      'global_batch': batch, 'steps_per_call': k, 'calls_timed': steps, 'median_step_s': median,
      'min_step_s': float(np.min(call_s[warmup:])) / k, 'compile_s': compile_s,
      'first_call_s': call_s[0], 'startup_s': startup_s, 'host_batch_s': float(np.median(host_s)),
      ('tokens_per_s' if 'tokens' in calls[0][0] else 'images_per_s'): batch * per_example / median,
      'flops_per_step': flops, 'achieved_flops_per_s': flops / median,
      'peak_memory_bytes': _memory(devs), 'loss': float(metrics['loss']),
  }
  measured = matmul_peak(dtype) * devs.global_count
  result['matmul_peak_flops_per_s'] = measured
  result['mfu_vs_matmul_peak'] = result['achieved_flops_per_s'] / measured
  vendor = vendor_peak(devs.local[0].device_kind, dtype)
  result['vendor_peak_flops_per_s'] = vendor * devs.global_count if vendor else None
  result['mfu_vs_vendor_peak'] = result['achieved_flops_per_s'] / result['vendor_peak_flops_per_s'] if vendor else None
  return result


def _time_sampler(config: ml_collections.ConfigDict, method: Any, state: Any, devs: Any, steps: int,
                  warmup: int) -> dict[str, Any]:
  """Times `sample.num` samples per call of `method.sample`; text counts new tokens, images count images."""
  from aigc_jax.train import parallel
  num = config.sample.num
  draw = parallel.sampler(method.sample, devs, num)
  start = time.perf_counter()
  out = draw(state, jax.random.PRNGKey(0))
  first_s = time.perf_counter() - start
  for i in range(warmup):
    draw(state, jax.random.PRNGKey(1 + i))
  cpu_start = time.process_time()
  call_s = [_timed(lambda i=i: draw(state, jax.random.PRNGKey(100 + i))) for i in range(steps)]
  cpu_s = (time.process_time() - cpu_start) / steps
  median = float(np.median(call_s))
  decoded = method.decode_samples(out)
  result = {'what': 'sample', 'config': flags.FLAGS['config'].config_filename, 'method': config.method,
            'device_kind': devs.local[0].device_kind, 'devices': devs.global_count, 'num': num,
            'calls_timed': steps, 'median_call_s': median, 'cpu_s_per_call': cpu_s,
            'first_call_s_incl_compile': first_s}
  if 'text' in decoded:
    new_tokens = int(np.sum(out['num_new']))  # beam search may stop early; maskgit fills its canvas's masks
    result['new_tokens_per_call'] = new_tokens
    result['tokens_per_s'] = new_tokens / median
    if 'kv_cache' in config.sample:
      result['kv_cache'] = bool(config.sample.kv_cache)
  else:
    result['images_per_s'] = num / median
  if 'method' in config.sample:
    result['sample_method'] = config.sample.method
    # the ancestral sampler walks every timestep; the others take sample.steps
    result['sample_steps'] = (config.diffusion.num_timesteps if config.sample.method == 'ancestral'
                              else config.sample.get('steps'))
  if 'length' in config.sample:
    result['sample_length'] = config.sample.length
  result['dtype'] = _compute_dtype(config)
  return result


def bench_sample(config: ml_collections.ConfigDict, steps: int, warmup: int,
                 sampler_specs: list[str] = ()) -> list[dict[str, Any]]:
  """The config's sampler timed, or each of `sampler_specs` ('NAME[:STEPS]') on the same fresh parameters."""
  from aigc_jax import methods
  from aigc_jax.diffusion import samplers
  from aigc_jax.train import parallel
  for spec in sampler_specs:
    if ':' in spec and not spec.partition(':')[2].isdigit():
      raise UserError(f'--samplers={spec!r}: the steps after the colon must be a whole number, as in ddim:50')
  devs, ds, method, _, state = _setup(config)
  if not sampler_specs:
    return [_time_sampler(config, method, state, devs, steps, warmup)]
  results = []
  for spec in sampler_specs:
    name, _, sampler_steps = spec.partition(':')
    if name not in samplers.REGISTRY:
      _say(f'skipping sampler {name!r}: none is registered under that name (registered: '
           f'{", ".join(sorted(samplers.REGISTRY))})')
      results.append({'what': 'sample', 'sample_method': name, 'skipped': 'not registered'})
      continue
    cfg = copy.deepcopy(config)
    cfg.sample.method = name
    if sampler_steps:
      cfg.sample.steps = int(sampler_steps)
    _say(f'sampling {cfg.sample.num} with {spec}')
    results.append(_time_sampler(cfg, methods.get_method(cfg, parallel.AXIS, ds.info), state, devs, steps, warmup))
  return results


def main(argv: list[str]) -> None:
  del argv
  config = cli.config(_CONFIG)
  _say(f'benchmarking {_WHAT.value} of {flags.FLAGS["config"].config_filename} on {jax.devices()[0].device_kind}')
  if _WHAT.value == 'train':
    results = [cli.run(bench_train, config, _STEPS.value, _WARMUP.value)]
  else:
    results = cli.run(bench_sample, config, _STEPS.value, _WARMUP.value, _SAMPLERS.value)
  for result in results:
    print(json.dumps(result), flush=True)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
