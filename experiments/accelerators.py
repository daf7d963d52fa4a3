"""Which accelerators this machine has, and the environment that gives concurrent trials disjoint ones.

Found without starting JAX in the launcher (which would claim the devices itself): GPUs from
`nvidia-smi -L` (or CUDA_VISIBLE_DEVICES when set), TPU chips from /dev/accel* or /dev/vfio/*;
otherwise the CPU, where each trial gets `devices_per_trial` simulated devices.
"""

import glob
import os
import re
import shutil
import subprocess

from aigc_jax.errors import UserError

PLATFORMS = ('auto', 'cpu', 'gpu', 'tpu')
# TPU_CHIPS_PER_PROCESS_BOUNDS for a process of 1, 2 or 4 chips of a TPU VM.
_TPU_CHIP_BOUNDS = {1: '1,1,1', 2: '1,2,1', 4: '2,2,1'}
_TPU_FIRST_PORT = 8476


def _gpus() -> list[str]:
  visible = os.environ.get('CUDA_VISIBLE_DEVICES')
  if visible is not None:
    return [d for d in visible.split(',') if d.strip()]
  if not shutil.which('nvidia-smi'):
    return []
  try:
    out = subprocess.run(['nvidia-smi', '-L'], capture_output=True, text=True, timeout=60).stdout
  except (OSError, subprocess.SubprocessError):
    return []
  return [str(i) for i, _ in enumerate(line for line in out.splitlines() if line.startswith('GPU '))]


def _tpu_chips() -> list[str]:
  chips = glob.glob('/dev/accel[0-9]*') or [p for p in glob.glob('/dev/vfio/*') if p[-1].isdigit()]
  return [str(i) for i in range(len(chips))]


def detect(platform: str = 'auto') -> tuple[str, list[str]]:
  """('gpu' | 'tpu' | 'cpu', ids of the accelerators this launcher may hand out)."""
  if platform in ('auto', 'gpu'):
    gpus = _gpus()
    if gpus or platform == 'gpu':
      return 'gpu', gpus
  if platform in ('auto', 'tpu'):
    chips = _tpu_chips()
    if chips or platform == 'tpu':
      return 'tpu', chips
  return 'cpu', []


def _cpu_env(count: int) -> dict[str, str]:
  flags = re.sub(r'--xla_force_host_platform_device_count=\S+', '', os.environ.get('XLA_FLAGS', '')).split()
  return {'XLA_FLAGS': ' '.join(flags + [f'--xla_force_host_platform_device_count={count}']),
          'JAX_PLATFORMS': 'cpu'}


def slot_envs(platform: str, ids: list[str], parallel: int, per_trial: int) -> list[dict[str, str]]:
  """The environment of each of `parallel` concurrent trials: disjoint accelerators, `per_trial` each."""
  if parallel < 1 or per_trial < 1:
    raise UserError(f'--parallel={parallel} and --devices_per_trial={per_trial} must be >= 1')
  if platform == 'cpu':
    return [_cpu_env(per_trial) for _ in range(parallel)]
  need = parallel * per_trial
  if need > len(ids):
    raise UserError(f'--parallel={parallel} x --devices_per_trial={per_trial} needs {need} {platform.upper()}s, '
                    f'but this machine has {len(ids)} ({",".join(ids) or "none"}): lower one of them')
  groups = [','.join(ids[i * per_trial:(i + 1) * per_trial]) for i in range(parallel)]
  if platform == 'gpu':
    return [{'CUDA_VISIBLE_DEVICES': g} for g in groups]
  if per_trial not in _TPU_CHIP_BOUNDS:
    raise UserError(f'--devices_per_trial={per_trial}: a TPU VM process takes 1, 2 or 4 chips')
  envs = []
  for i, group in enumerate(groups):
    port = str(_TPU_FIRST_PORT + i)
    envs.append({'TPU_VISIBLE_CHIPS': group, 'TPU_VISIBLE_DEVICES': group,
                 'TPU_CHIPS_PER_PROCESS_BOUNDS': _TPU_CHIP_BOUNDS[per_trial], 'TPU_PROCESS_BOUNDS': '1,1,1',
                 'TPU_MESH_CONTROLLER_ADDRESS': f'localhost:{port}', 'TPU_MESH_CONTROLLER_PORT': port})
  return envs
