"""One trial of a sweep: `python run.py` in its own workdir, and the status.json that records how it went.

status.json holds `status` ('running', 'done', 'failed' with the `error`, or 'interrupted'),
the run.py `args`, the `wall_s` of the attempts that ended, the `attempts` and where it ran.
A trial is done only when its last attempt ended well with the same args: a re-launch with
other settings (more steps) runs it again, and run.py resumes it from its checkpoints.
The run's output goes to `launch.log` in the workdir.
"""

import ctypes
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Mapping

from experiments import sweep as sweep_lib

REPO_ROOT = sweep_lib.REPO_ROOT
STATUS = 'status.json'
LOG = 'launch.log'
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith('linux') else None
_PR_SET_PDEATHSIG = 1


@dataclasses.dataclass(frozen=True)
class Trial:
  """One run of the sweep: its name, workdir and every override it gets."""
  name: str
  workdir: str
  config: str
  overrides: dict[str, Any]

  @property
  def args(self) -> list[str]:
    """The run.py arguments of this trial."""
    return [f'--config={self.config}', f'--workdir={self.workdir}',
            *(f'--config.{k}={sweep_lib.flag_value(v)}' for k, v in self.overrides.items())]


@dataclasses.dataclass
class Running:
  """A started attempt: its process, when it started, and where its output begins in the log."""
  trial: Trial
  proc: subprocess.Popen
  started: float
  log_offset: int
  previous_wall_s: float


def read_status(workdir: str) -> dict[str, Any]:
  """The trial's status.json, or {} before its first attempt."""
  try:
    with open(os.path.join(workdir, STATUS)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def _write_status(workdir: str, status: Mapping[str, Any]) -> None:
  tmp = os.path.join(workdir, STATUS + '.tmp')
  with open(tmp, 'w') as f:
    json.dump(status, f, indent=2)
  os.replace(tmp, os.path.join(workdir, STATUS))


def is_done(trial: Trial) -> bool:
  status = read_status(trial.workdir)
  return status.get('status') == 'done' and status.get('args') == trial.args


def failed_before(trial: Trial) -> bool:
  status = read_status(trial.workdir)
  return status.get('status') == 'failed' and status.get('args') == trial.args


def running_elsewhere(trial: Trial) -> int | None:
  """The pid of a live run.py of this trial on this host (another launcher's), else None."""
  status = read_status(trial.workdir)
  pid = status.get('pid')
  if status.get('status') != 'running' or status.get('host') != socket.gethostname() or not pid:
    return None
  try:
    with open(f'/proc/{pid}/cmdline', 'rb') as f:
      alive = f'--workdir={trial.workdir}'.encode() in f.read()
  except OSError:
    return None
  return pid if alive else None


def _die_with_parent() -> None:
  """In the child before exec: SIGTERM when the launcher dies, even by SIGKILL, so no trial runs on orphaned."""
  if _LIBC is not None:
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def start(trial: Trial, env: Mapping[str, str] | None = None) -> Running:
  """Starts run.py for `trial` with `env` added to this process's environment; records 'running'."""
  os.makedirs(trial.workdir, exist_ok=True)
  previous = read_status(trial.workdir)
  log_path = os.path.join(trial.workdir, LOG)
  with open(log_path, 'a') as log:
    log.write(f'\n=== {time.strftime("%Y-%m-%d %H:%M:%S")} {" ".join(trial.args)} '
              f'{" ".join(f"{k}={v}" for k, v in (env or {}).items())}\n')
    offset = log.tell()
    proc = subprocess.Popen([sys.executable, 'run.py', *trial.args], cwd=REPO_ROOT, env={**os.environ, **(env or {})},
                            stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
  wall = float(previous.get('wall_s', 0.0))
  _write_status(trial.workdir, {
      'name': trial.name, 'status': 'running', 'args': trial.args, 'overrides': trial.overrides,
      'env': dict(env or {}), 'attempts': int(previous.get('attempts', 0)) + 1, 'wall_s': wall,
      'host': socket.gethostname(), 'pid': proc.pid, 'started_at': time.time()})
  return Running(trial, proc, time.time(), offset, wall)


def _error(log_path: str, offset: int) -> str:
  """What went wrong, from this attempt's output: run.py's `error:` line, else the last lines."""
  with open(log_path, errors='replace') as f:
    f.seek(offset)
    lines = [line.rstrip() for line in f if line.strip()]
  errors = [line for line in lines if line.startswith('error: ')]
  return errors[-1] if errors else '\n'.join(lines[-12:])


def finish(running: Running, returncode: int, interrupted: bool = False) -> dict[str, Any]:
  """Records how the attempt ended ('done', 'failed' with its error, 'interrupted'); returns the status."""
  workdir = running.trial.workdir
  status = read_status(workdir)
  status.update(returncode=returncode, wall_s=running.previous_wall_s + time.time() - running.started,
                ended_at=time.time())
  status.pop('pid', None)
  if returncode == 0:
    status.update(status='done', error='')
  elif interrupted or returncode < 0:  # stopped by the launcher or by a signal: resumable
    status.update(status='interrupted', error='')
  else:
    status.update(status='failed', error=_error(os.path.join(workdir, LOG), running.log_offset))
  _write_status(workdir, status)
  return status


def record_lost(trial: Trial, why: str) -> None:
  """Marks `trial` interrupted (resumable) when its run ended without recording it: a SLURM task cancelled,
  timed out or lost with its node."""
  os.makedirs(trial.workdir, exist_ok=True)
  status = read_status(trial.workdir)
  status.update(name=trial.name, status='interrupted', args=trial.args, overrides=trial.overrides, error=why)
  status.pop('pid', None)
  _write_status(trial.workdir, status)


def run(trial: Trial) -> dict[str, Any]:
  """Runs `trial` to its end where this process runs (a SLURM array task); returns its status."""
  running = start(trial)
  return finish(running, running.proc.wait())
