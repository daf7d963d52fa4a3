"""Trials on this machine: each its own run.py process, at most one per slot of disjoint accelerators.

One thread polls the processes, so a trial's end is noticed within `poll_s`. Stopping the
launcher (Ctrl-C, SIGTERM) stops the running trials and records them 'interrupted'; if it is
killed outright, its trials get SIGTERM from the kernel (see `trial.start`). Either way
they resume from their checkpoints when the sweep is launched again.
"""

import signal
import time
from typing import Mapping, Sequence

from experiments import trial as trial_lib


def _stop_on_sigterm(signum, frame) -> None:
  del signum, frame
  raise KeyboardInterrupt


def _say(msg: str) -> None:
  print(msg, flush=True)


def _ended(status: dict, running: trial_lib.Running) -> str:
  took = time.time() - running.started
  line = f'[{status["status"]}] {running.trial.name} after {took:.0f} s'
  return line + (f': {status["error"].splitlines()[-1]}' if status.get('error') else '')


def run_all(trials: Sequence[trial_lib.Trial], slot_envs: Sequence[Mapping[str, str]], poll_s: float = 0.5) -> None:
  """Runs `trials` in order, each on the first free slot (whose environment it gets), until all have ended."""
  pending = list(trials)
  running: dict[int, trial_lib.Running] = {}
  previous_handler = signal.signal(signal.SIGTERM, _stop_on_sigterm)
  try:
    while pending or running:
      for slot in range(len(slot_envs)):
        if slot not in running and pending:
          running[slot] = trial_lib.start(pending.pop(0), slot_envs[slot])
          env = ' '.join(f'{k}={v}' for k, v in slot_envs[slot].items())
          _say(f'[start] {running[slot].trial.name} on slot {slot} ({env})')
      for slot, r in list(running.items()):
        if r.proc.poll() is not None:
          _say(_ended(trial_lib.finish(r, r.proc.returncode), r))
          del running[slot]
      time.sleep(poll_s)
  except KeyboardInterrupt:
    for r in running.values():
      r.proc.terminate()
    for r in running.values():
      _say(_ended(trial_lib.finish(r, r.proc.wait(), interrupted=True), r))
    raise
  finally:
    signal.signal(signal.SIGTERM, previous_handler)
