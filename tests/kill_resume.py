"""Kill -9 a tiny training run at random moments; every re-run must resume, and the end must equal an uninterrupted run.

  python tests/kill_resume.py --kills=10 [--seed=0] [--workdir=/tmp/kill_resume]

A tiny `configs/ddpm_digits.py` (frequent checkpoints and ancestral samples, so kills land in
them) is trained once straight through, then again under kill -9 at random moments: during
start-up, during a step, while a checkpoint is being written, while sampling. After each
kill the same command is re-run; it must resume from the newest checkpoint that was complete
when the kill came (Orbax writes each into a temporary folder and renames it when done, so a
half-written one is never a step) and never crash on what the kill left behind. At the end,
the final train state (params, EMA, optimizer state, step, RNG) and every logged loss must
equal the uninterrupted run's, bit for bit. Prints one line per kill and a summary; exits 1
on any failure. `tests/test_kill_resume.py` runs a short version in CI.
"""

import argparse
import dataclasses
import os
import queue
import random
import re
import shutil
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = 2
CHECKPOINT_EVERY = 3
SAMPLE_EVERY = 4
OVERRIDES = {
    'model.ch': 8, 'model.num_groups': 4, 'model.ch_mult': (1,), 'model.attn_resolutions': (),
    'diffusion.num_timesteps': 50, 'training.batch_size': 8,
    'training.log_every': 1, 'training.checkpoint_every': CHECKPOINT_EVERY, 'training.keep_checkpoints': 2,
    'training.sample_every': SAMPLE_EVERY, 'sample.num': 4, 'sample.method': 'ancestral', 'optim.warmup_steps': 5,
}
MOMENTS = ('start-up', 'step', 'checkpoint write', 'sampling')


def command(workdir: str, steps: int) -> list[str]:
  """The run.py train command of the tiny run."""
  return ([sys.executable, 'run.py', '--config=configs/ddpm_digits.py', f'--workdir={workdir}',
           f'--config.training.num_train_steps={steps}'] + [f'--config.{k}={v}' for k, v in OVERRIDES.items()])


def environment(cache_dir: str) -> dict[str, str]:
  """DEVICES simulated CPU devices and a compilation cache that the uninterrupted run fills first.

  JAX writes cache entries in place, so a kill during a write could leave a torn one; the
  uninterrupted run writes every entry the killed runs need before any kill.
  """
  return dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={DEVICES}',
              JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0', TF_CPP_MIN_LOG_LEVEL='2')


def complete_steps(workdir: str) -> list[int]:
  """The checkpoint steps on disk that are complete: Orbax gives a step its number only once written."""
  folder = os.path.join(workdir, 'checkpoints')
  return sorted(int(f) for f in os.listdir(folder) if f.isdigit()) if os.path.isdir(folder) else []


def _lines(proc: subprocess.Popen, out: queue.Queue) -> None:
  for line in proc.stdout:
    out.put(line)
  out.put(None)


@dataclasses.dataclass
class Run:
  """One start of the command: where it resumed, and how it was killed."""
  expected: int              # the newest complete checkpoint when it started (0: none)
  resumed: int | None        # the step it said it resumed from (None: killed before it said)
  moment: str = ''           # when it was killed ('' if it ran to the end)
  last_printed: str = ''     # 'step N' or 'start-up': how far it had got
  complete: list[int] = dataclasses.field(default_factory=list)  # complete checkpoints after the kill
  torn_write: bool = False   # the kill left an unfinished (temporary) checkpoint folder
  crashed: bool = False      # it ended with an error before its kill

  @property
  def resumed_right(self) -> bool:
    return self.resumed == self.expected


def _start_step(line: str) -> int | None:
  found = re.search(r'(resuming|starting) from step (\d+)', line)
  return int(found.group(2)) if found else None


def kill_once(rng: random.Random, workdir: str, steps: int, env: dict[str, str], log: str,
              moment: str | None = None) -> Run | None:
  """Starts the command and kill -9s it at a random moment (of the kind `moment`, or a random kind).

  None if it finished first. Its stderr goes to `log`.
  """
  run = Run(expected=max(complete_steps(workdir), default=0), resumed=None, moment=moment or rng.choice(MOMENTS),
            last_printed='start-up')
  every = {'checkpoint write': CHECKPOINT_EVERY, 'sampling': SAMPLE_EVERY}.get(run.moment, 1)
  # one of the next two such steps (any of the next 2 * CHECKPOINT_EVERY for the others), so that kills
  # also land after the run has written new checkpoints
  reach = 2 * every if every > 1 else 2 * CHECKPOINT_EVERY
  target = rng.choice([s for s in range(run.expected + 1, run.expected + reach + 1) if s % every == 0])
  if target >= steps:
    run.moment = 'start-up'
  delay = {'start-up': rng.uniform(0.5, 8.0), 'step': rng.uniform(0.0, 2.0),
           'checkpoint write': rng.uniform(0.0, 0.03), 'sampling': rng.uniform(0.05, 0.5)}[run.moment]
  with open(log, 'w') as stderr:
    proc = subprocess.Popen(command(workdir, steps), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr,
                            text=True)
  out: queue.Queue = queue.Queue()
  threading.Thread(target=_lines, args=(proc, out), daemon=True).start()
  launched = time.time()
  while True:
    wait = launched + delay - time.time() if run.moment == 'start-up' else None
    try:
      line = out.get(timeout=max(wait, 0.0)) if wait is not None else out.get()
    except queue.Empty:
      break  # the start-up delay is over
    if line is None:
      run.crashed = proc.wait() != 0
      return run if run.crashed else None
    if _start_step(line) is not None:
      run.resumed = _start_step(line)
    found = re.match(r'step (\d+)/', line)
    if found:
      run.last_printed = f'step {found.group(1)}'
      if run.moment != 'start-up' and int(found.group(1)) >= target:
        time.sleep(delay)
        break
  proc.kill()  # SIGKILL: no handler runs, nothing is cleaned up
  proc.wait()
  folder = os.path.join(workdir, 'checkpoints')
  run.torn_write = os.path.isdir(folder) and any('tmp' in f for f in os.listdir(folder))
  run.complete = complete_steps(workdir)
  return run


def run_to_end(workdir: str, steps: int, env: dict[str, str]) -> tuple[Run, int, str]:
  """Runs the command to its end: the run, its exit status and its output."""
  run = Run(expected=max(complete_steps(workdir), default=0), resumed=None)
  result = subprocess.run(command(workdir, steps), cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  starts = [_start_step(line) for line in result.stdout.splitlines() if _start_step(line) is not None]
  run.resumed = starts[0] if starts else None
  return run, result.returncode, result.stdout + result.stderr[-3000:]


def final_state(workdir: str, steps: int):
  """The train state of the run's newest checkpoint, restored into the tiny config's state."""
  sys.path.insert(0, ROOT)
  import jax
  from aigc_jax.train import checkpoint
  from aigc_jax.train import loop
  from configs import ddpm_digits
  config = ddpm_digits.get_config()
  config.training.num_train_steps = steps
  for key, value in OVERRIDES.items():
    section, name = key.split('.')
    config[section][name] = value
  target = loop.build(config, {}, {}).state
  ckpts = checkpoint.Checkpoints(os.path.join(workdir, 'checkpoints'), 2)
  state = ckpts.restore(target)
  ckpts.close()
  return jax.device_get(state)


def logged_losses(workdir: str) -> dict[int, float]:
  import json
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return {row['step']: row['loss'] for row in map(json.loads, f)}


def run(kills: int, seed: int, workdir: str, say=print, moments: tuple[str, ...] = (),
        cache_dir: str | None = None) -> bool:
  """The whole experiment; True when every start resumed from the newest complete checkpoint and the end
  equals the uninterrupted run.

  The i-th kill comes at a moment of kind `moments[i]` where given, else of a random kind.
  The compilation cache is `cache_dir` (default: a new one in `workdir`).
  """
  import jax
  import numpy as np
  rng = random.Random(seed)
  steps = 3 * kills + 6
  shutil.rmtree(workdir, ignore_errors=True)
  os.makedirs(workdir)
  env = environment(cache_dir or os.path.join(workdir, 'jax_cache'))
  straight, killed = os.path.join(workdir, 'straight'), os.path.join(workdir, 'killed')
  t0 = time.time()
  _, status, output = run_to_end(straight, steps, env)
  if status:
    say(f'the uninterrupted run failed:\n{output}')
    return False
  say(f'uninterrupted run: {steps} steps in {time.time() - t0:.0f}s')
  runs: list[Run] = []
  while len(runs) < kills:
    log = os.path.join(workdir, f'run_{len(runs) + 1}.stderr')
    run = kill_once(rng, killed, steps, env, log, moments[len(runs)] if len(runs) < len(moments) else None)
    if run is None:
      say('the run finished before its kill: starting over in a fresh folder')
      shutil.rmtree(killed)
      continue
    if run.crashed:
      with open(log) as f:
        say(f'run {len(runs) + 1} crashed before its kill:\n{f.read()[-3000:]}')
      return False
    runs.append(run)
    said = 'killed before saying' if run.resumed is None else f'resumed from step {run.resumed}'
    say(f'run {len(runs):2d}: {said} (newest complete checkpoint: {run.expected}); kill -9 during '
        f'{run.moment} after {run.last_printed}; complete checkpoints now {run.complete}, torn write left: '
        f'{"yes" if run.torn_write else "no"}')
  last, status, output = run_to_end(killed, steps, env)
  say(f'final run: resumed from step {last.resumed} (newest complete checkpoint: {last.expected}), exit status '
      f'{status}')
  if status:
    say(output)
  starts = [r for r in runs + [last] if r.resumed is not None]
  wrong = [r for r in starts if not r.resumed_right]
  a, b = final_state(straight, steps), final_state(killed, steps)
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  same_state = len(leaves_a) == len(leaves_b) and all(np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b))
  same_losses = logged_losses(straight) == logged_losses(killed)
  counts = ', '.join(f'{m}: {sum(r.moment == m for r in runs)}' for m in MOMENTS)
  say(f'{len(runs)} kills ({counts}; {sum(r.torn_write for r in runs)} left a torn checkpoint write); '
      f'{len(starts) - len(wrong)} of {len(starts)} starts that said where they resumed resumed from the newest '
      f'complete checkpoint, the others were killed before saying; no start crashed: {status == 0}; final step '
      f'{int(b.step)} of {steps}; final train state bit-equal to the uninterrupted run: {same_state}; logged '
      f'losses of all {steps} steps equal: {same_losses}; {time.time() - t0:.0f}s in all')
  return not wrong and status == 0 and same_state and same_losses and int(b.step) == steps


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--kills', type=int, default=10)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--workdir', default='/tmp/kill_resume')
  args = parser.parse_args()
  sys.exit(0 if run(args.kills, args.seed, args.workdir) else 1)


if __name__ == '__main__':
  main()
