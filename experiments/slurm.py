"""A sweep on a SLURM cluster: one array job through submitit, a task per trial.

Each task runs `trial.run` (run.py in the trial's workdir, writing its status.json) on a node
SLURM chose, with the GPUs SLURM gave it; `--parallel` caps how many tasks run at once.
The root folder must be on a file system the nodes share (submitit's pickles and logs go to
ROOT/slurm/).
"""

import dataclasses
import os
import shutil
from typing import Any, Sequence

from aigc_jax.errors import UserError
from experiments import trial as trial_lib


@dataclasses.dataclass(frozen=True)
class Options:
  """What each array task asks SLURM for."""
  partition: str
  gpus_per_trial: int
  time_min: int
  cpus_per_trial: int
  parallel: int
  name: str


def executor(root: str, options: Options) -> Any:
  """A submitit executor for SLURM with the array job's parameters set (nothing is submitted)."""
  if not shutil.which('sbatch') or not shutil.which('srun'):
    raise UserError('--executor=slurm needs SLURM (sbatch and srun on PATH): launch from a login node of '
                    'the cluster, or use --executor=local')
  if options.time_min <= 0 or options.gpus_per_trial < 0 or options.cpus_per_trial <= 0:
    raise UserError('--slurm_time_min and --slurm_cpus_per_trial must be positive and --devices_per_trial >= 0')
  import submitit
  ex = submitit.AutoExecutor(folder=os.path.join(root, 'slurm', '%j'), cluster='slurm')
  ex.update_parameters(
      name=options.name, timeout_min=options.time_min, nodes=1, tasks_per_node=1,
      gpus_per_node=options.gpus_per_trial, cpus_per_task=options.cpus_per_trial,
      slurm_partition=options.partition or None, slurm_array_parallelism=options.parallel,
      slurm_setup=[f'cd {trial_lib.REPO_ROOT}', f'export PYTHONPATH={trial_lib.REPO_ROOT}:${{PYTHONPATH:-}}'])
  return ex


def submit(ex: Any, trials: Sequence[trial_lib.Trial]) -> list[Any]:
  """Submits the trials as one array job of `executor`'s; returns submitit's jobs, one per trial."""
  return ex.map_array(trial_lib.run, list(trials))


def wait(jobs: Sequence[Any], trials: Sequence[trial_lib.Trial]) -> None:
  """Waits for every task; one that ended without recording how (cancelled, timed out, lost node) is 'interrupted'."""
  for job, t in zip(jobs, trials):
    try:
      job.result()
    except Exception as e:  # pylint: disable=broad-except
      status = trial_lib.read_status(t.workdir)
      if status.get('status') not in ('done', 'failed'):
        trial_lib.record_lost(t, f'SLURM job {job.job_id}: {type(e).__name__}: {" ".join(str(e).split())[:500]}')
    print(f'[{trial_lib.read_status(t.workdir).get("status", "?")}] {t.name} (SLURM job {job.job_id})', flush=True)
