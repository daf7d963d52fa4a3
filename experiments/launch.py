"""Runs a sweep: every trial as its own run.py in ROOT/<trial>, then ROOT/results.{csv,md,png}.

  python -m experiments.launch --sweep=experiments/ddpm_lr.py --root=DIR [--parallel=K]
      [--devices_per_trial=D] [--executor=local|slurm] [--config.KEY=VALUE ...]

`--config.KEY=VALUE` flags go to every trial (e.g. fewer steps). Launching again skips the
trials that finished with the same settings, resumes the others from their checkpoints, and
leaves failed ones failed unless --retry_failed. Locally, concurrent trials get disjoint
accelerators (CUDA_VISIBLE_DEVICES, TPU_VISIBLE_CHIPS, or D simulated CPU devices each);
with --executor=slurm the trials go out as one SLURM array job through submitit.
"""

import os
import sys

from absl import app
from absl import flags

from aigc_jax import cli
from aigc_jax.errors import UserError
from experiments import accelerators
from experiments import local
from experiments import results
from experiments import slurm
from experiments import sweep as sweep_lib
from experiments import trial as trial_lib

_SWEEP = flags.DEFINE_string('sweep', None, 'A sweep file: experiments/<name>.py with get_sweep().')
_ROOT = flags.DEFINE_string('root', None, 'Folder of the trials\' workdirs and the results.')
_PARALLEL = flags.DEFINE_integer('parallel', 1, 'Trials at once (SLURM: array tasks at once).')
_DEVICES = flags.DEFINE_integer('devices_per_trial', 1, 'Accelerators (SLURM: GPUs) per trial; on a CPU, '
                                'simulated devices per trial.')
_EXECUTOR = flags.DEFINE_enum('executor', 'local', ['local', 'slurm'], 'Where trials run.')
_PLATFORM = flags.DEFINE_enum('platform', 'auto', list(accelerators.PLATFORMS),
                              'Local accelerators to share out; auto: GPUs, else TPU chips, else the CPU.')
_RETRY = flags.DEFINE_bool('retry_failed', False, 'Run trials that failed before again.')
_PARTITION = flags.DEFINE_string('slurm_partition', '', 'SLURM partition ("": the cluster\'s default).')
_TIME = flags.DEFINE_integer('slurm_time_min', 240, 'SLURM time limit per trial, in minutes.')
_CPUS = flags.DEFINE_integer('slurm_cpus_per_trial', 8, 'SLURM CPUs per trial.')
flags.mark_flags_as_required(['sweep', 'root'])

_EXTRA: list[str] = []  # the --config.KEY=VALUE flags, for every trial


def _parse(argv: list[str]) -> list[str]:
  """absl parsing of the launcher's own flags; --config.KEY=VALUE flags are kept aside for the trials."""
  _EXTRA.extend(a for a in argv[1:] if a.startswith('--config.'))
  return cli.parse_flags([a for a in argv if not a.startswith('--config.')])


def plan(sweep: sweep_lib.Sweep, root: str, extra: list[str]) -> list[trial_lib.Trial]:
  """The trials of `sweep` under `root`: fixed, then swept, then `extra` overrides (the last one wins)."""
  extra_overrides = dict(a[len('--config.'):].split('=', 1) for a in extra)
  return [trial_lib.Trial(name=name, workdir=os.path.join(root, name), config=sweep.config,
                          overrides={**sweep.fixed, **overrides, **extra_overrides})
          for name, overrides in zip(sweep_lib.trial_names(sweep), sweep.trials)]


def _launch(sweep_path: str, root: str) -> None:
  bad = [a for a in _EXTRA if '=' not in a]
  if bad:
    raise UserError(f'{bad[0]} has no value: write --config.KEY=VALUE')
  sweep = sweep_lib.load(sweep_path)
  sweep_lib.check_keys(sweep, [a.split('=', 1)[0] + '=' for a in _EXTRA], sweep_path)
  root = os.path.abspath(root)
  os.makedirs(root, exist_ok=True)
  trials = plan(sweep, root, _EXTRA)
  for t in trials:
    pid = trial_lib.running_elsewhere(t)
    if pid:
      raise UserError(f'trial {t.name} is running in process {pid} (another launcher of this sweep?): '
                      'wait for it or stop it first')
  todo = [t for t in trials if not trial_lib.is_done(t) and (_RETRY.value or not trial_lib.failed_before(t))]
  if _EXECUTOR.value == 'local':
    platform, ids = accelerators.detect(_PLATFORM.value)
    slot_envs = accelerators.slot_envs(platform, ids, _PARALLEL.value, _DEVICES.value)
  else:
    executor = slurm.executor(root, slurm.Options(
        partition=_PARTITION.value, gpus_per_trial=_DEVICES.value, time_min=_TIME.value,
        cpus_per_trial=_CPUS.value, parallel=_PARALLEL.value, name=os.path.splitext(os.path.basename(sweep_path))[0]))
  print(f'{len(trials)} trials of {sweep.config} in {root}: {len(trials) - len(todo)} already ended, '
        f'{len(todo)} to run', flush=True)
  if todo and _EXECUTOR.value == 'local':
    local.run_all(todo, slot_envs)
  elif todo:
    jobs = slurm.submit(executor, todo)
    print(f'submitted SLURM array job {jobs[0].job_id.split("_")[0]} ({len(jobs)} tasks); waiting', flush=True)
    slurm.wait(jobs, todo)
  for path in results.write(root, sweep, trials):
    print(f'wrote {path}', flush=True)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments {argv[1:]}: flags are --name=value')
  try:
    cli.run(_launch, _SWEEP.value, _ROOT.value)
  except KeyboardInterrupt:
    sys.exit('stopped: the running trials are recorded as interrupted; launch again to resume them')


if __name__ == '__main__':
  app.run(main, flags_parser=_parse)
