"""SIGTERM and SIGINT to `python run.py`: a checkpoint of the current step, exit 0, and the next run resumes there."""

import os
import re
import signal
import subprocess
import sys
import time

from tests.conftest import process_env
from tests.conftest import ROOT
from tests.test_cli import TINY


ENV = process_env(2)


def _command(workdir, steps):
  """The tiny run, logging every step and checkpointing only at its end (or when told to stop)."""
  return [sys.executable, 'run.py', *TINY, f'--workdir={workdir}', f'--config.training.num_train_steps={steps}',
          '--config.training.log_every=1', '--config.training.checkpoint_every=1000',
          '--config.training.sample_every=0']


def _start(workdir, steps):
  return subprocess.Popen(_command(workdir, steps), cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def _signal_after(proc, signum, step):
  """Sends `signum` once the run has printed `step`; (exit status, stdout, seconds from the signal to the exit)."""
  out = ''
  for line in proc.stdout:
    out += line
    if line.startswith(f'step {step}/'):
      break
  sent = time.time()
  proc.send_signal(signum)
  rest, err = proc.communicate(timeout=300)
  return proc.returncode, out + rest, time.time() - sent, err


def _steps(workdir):
  return sorted(int(f) for f in os.listdir(os.path.join(workdir, 'checkpoints')) if f.isdigit())


def test_sigterm_then_sigint_checkpoint_the_current_step_and_exit_0(tmp_path):
  workdir = str(tmp_path / 'w')
  status, out, grace, err = _signal_after(_start(workdir, 1000), signal.SIGTERM, 3)
  assert status == 0, err[-2000:]
  stopped = int(re.search(r'SIGTERM: stopped at step (\d+), its checkpoint written', out).group(1))
  assert stopped >= 3 and _steps(workdir) == [stopped]  # checkpoint_every=1000: only the preemption wrote one
  print(f'SIGTERM: exit 0 {grace:.1f}s after the signal, checkpoint of step {stopped}')

  status, out, grace, err = _signal_after(_start(workdir, 1000), signal.SIGINT, stopped + 2)
  assert status == 0, err[-2000:]
  assert f'resuming from step {stopped} of 1000' in out
  again = int(re.search(r'SIGINT: stopped at step (\d+), its checkpoint written', out).group(1))
  assert again >= stopped + 2 and _steps(workdir)[-1] == again
  print(f'SIGINT: exit 0 {grace:.1f}s after the signal, checkpoint of step {again}')

  finish = subprocess.run(_command(workdir, again + 1), cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)
  assert finish.returncode == 0, finish.stderr[-2000:]
  assert f'resuming from step {again} of {again + 1}' in finish.stdout
  assert f'done: step {again + 1}' in finish.stdout
