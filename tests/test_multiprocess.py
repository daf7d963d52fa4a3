"""One run over two processes on localhost (2 simulated CPU devices each, gloo collectives).

It must train exactly as one process with 4 devices fed the same global batches (each
process's batches, drawn from its own shard, one after another), write logs, metrics and
samples from process 0 only, and leave checkpoints that one process restores and resumes;
--mode=sample and --mode=eval over two processes must give what that one process gives.
"""

import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from aigc_jax import cache
from aigc_jax import data
from aigc_jax.errors import UserError
from aigc_jax.train import loop
from aigc_jax.train import parallel
from aigc_jax.train import step as step_lib
from tests.conftest import ROOT
from tests.conftest import build
from tests.conftest import process_env
from tests.conftest import restore_newest
from tests.conftest import one_level_ddpm_config
from tests.conftest import train_digits_feature_net

TIMEOUT_S = 420  # both processes together


def _overrides(config, base, prefix='--config.'):
  """The --config.KEY=VALUE flags that turn `base` into `config` (scalars only)."""
  flags = []
  for key, value in config.items():
    if hasattr(value, 'items'):
      flags += _overrides(value, base[key], f'{prefix}{key}.')
    elif value != base[key]:
      flags.append(f'{prefix}{key}={value}')
  return flags


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _tail(path, n=3000):
  with open(path, errors='replace') as f:
    return ''.join(line for line in f if '[Gloo]' not in line)[-n:]


def _run_two_processes(workdir, logs_dir, *more_flags, act=None):
  """run.py in two processes on this machine; fails with both outputs if either fails or they hang.

  `act(procs, logs)` is called while they run, until it returns True.
  """
  from configs import ddpm_digits
  flags = _overrides(one_level_ddpm_config(), ddpm_digits.get_config())
  env = process_env(2, JAX_PLATFORMS='cpu')
  port = _free_port()
  logs = [os.path.join(logs_dir, f'process_{i}.log') for i in range(2)]
  procs = []
  try:
    for i, log in enumerate(logs):
      with open(log, 'w') as out:
        procs.append(subprocess.Popen(
            [sys.executable, 'run.py', '--config=configs/ddpm_digits.py', f'--workdir={workdir}',
             f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', f'--process_id={i}', *flags,
             *more_flags], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT))
    deadline = time.time() + TIMEOUT_S
    while time.time() < deadline and any(p.poll() is None for p in procs):
      if act is not None and act(procs, logs):
        act = None
      if any(p.poll() not in (None, 0) for p in procs):
        break  # one failed: the other would wait for it until JAX's heartbeat timeout
      time.sleep(0.5)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  report = '\n'.join(f'--- process {i} (exit {p.returncode}):\n{_tail(log)}' for i, (p, log) in
                     enumerate(zip(procs, logs)))
  assert all(p.returncode == 0 for p in procs), f'two-process run failed or timed out:\n{report}'
  return [_tail(log, 10**6) for log in logs]


@pytest.fixture(scope='module')
def two_process_run(tmp_path_factory):
  """The tiny DDPM trained 4 steps by two processes: (workdir, output of each process, seconds)."""
  workdir = str(tmp_path_factory.mktemp('two_processes'))
  start = time.time()
  outputs = _run_two_processes(workdir, str(tmp_path_factory.mktemp('logs')))
  return workdir, outputs, time.time() - start


def _two_process_batch(config, step, train=True):
  """The global batch `step` (of training, or of eval) in the two-process run: process 0's rows, then
  process 1's."""
  split, batch_size = ((config.data.train_split, config.training.batch_size) if train else
                       (config.data.eval_split, config.eval.batch_size))
  parts = [data.create(config.data, split, batch_size, seed=config.seed, process_index=p, process_count=2,
                       local_devices=2, train=train).batch(step)
           for p in range(2)]
  return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)  # [4 devices, per_device, ...]


def _single_process_batch(config, step):
  return data.create(config.data, config.data.train_split, config.training.batch_size, seed=config.seed,
                     process_index=0, process_count=1, local_devices=4, train=True).batch(step)


def _reference(config, batches):
  """One process with 4 devices: a fresh state trained on `batches`, as the loop trains it."""
  devs = parallel.devices(jax.devices()[:4])
  _, train_step, state = build(config)
  state = parallel.replicate(state, devs)
  step = parallel.train_step(train_step, devs)
  for batch in batches:
    state, _ = step(state, [batch])
  return jax.device_get(state)


def _assert_close(a, b, atol=1e-5):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


def test_two_processes_train_as_one_process_with_four_devices(two_process_run):
  workdir, _, seconds = two_process_run
  print(f'two-process run: {seconds:.1f} s')
  config = one_level_ddpm_config()
  reference = _reference(config, [_two_process_batch(config, s) for s in range(4)])
  _, restored = restore_newest(config, workdir)
  assert int(restored.step) == int(reference.step) == 4
  _assert_close(restored.params, reference.params)
  _assert_close(restored.ema_params, reference.ema_params)
  _assert_close(restored.opt_state, reference.opt_state)
  init = jax.device_get(build(config).state)
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(init.params)))
  # the shards differ, so the processes' global batches are not the single-process ones
  assert not np.array_equal(_two_process_batch(config, 0)['images'], _single_process_batch(config, 0)['images'])


def test_only_process_0_writes_logs_metrics_and_samples(two_process_run):
  workdir, (out0, out1), _ = two_process_run
  assert 'multi-process run: process 0 of 2' in out0 and 'multi-process run: process 1 of 2' in out1
  assert 'parameters on 4 x cpu' in out0 and 'step 4/4 | loss' in out0 and 'done: step 4' in out0
  assert 'step 4/4' not in out1 and 'done:' not in out1
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    assert [json.loads(line)['step'] for line in f] == [2, 4]  # one writer, no duplicated rows
  with np.load(os.path.join(workdir, 'samples', 'step_4.npz')) as z:
    assert z['images'].shape == (6, 8, 8, 1)  # sample.num: both processes' samples, gathered
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']


def test_checkpoint_written_by_two_processes_restores_in_one(two_process_run, tmp_path):
  """One process with 4 devices resumes the two-process run at step 4 and goes on from it exactly."""
  workdir = str(tmp_path / 'resumed')
  shutil.copytree(two_process_run[0], workdir)
  config = one_level_ddpm_config()
  config.training.num_train_steps = 6
  config.training.sample_every = 0
  state = jax.device_get(loop.train(config, workdir))
  batches = [_two_process_batch(config, s) for s in range(4)] + [_single_process_batch(config, s) for s in (4, 5)]
  reference = _reference(config, batches)
  assert int(state.step) == 6
  _assert_close(state.params, reference.params)
  _assert_close(state.ema_params, reference.ema_params)


def test_two_processes_resume_past_a_damaged_newest_checkpoint(two_process_run, tmp_path):
  """Both fall back to step 2; process 0 sets step 4 aside once both have read; both then write it anew."""
  workdir = str(tmp_path / 'damaged')
  shutil.copytree(two_process_run[0], workdir)
  ckpts = os.path.join(workdir, 'checkpoints')
  largest = max(glob.glob(os.path.join(ckpts, '4', 'default', 'd', '*')), key=os.path.getsize)
  os.truncate(largest, os.path.getsize(largest) // 2)
  outputs = _run_two_processes(workdir, str(tmp_path), '--config.training.num_train_steps=6',
                               '--config.training.sample_every=0')
  assert 'resuming from step 2 of 6' in outputs[0] and 'done: step 6' in outputs[0]
  assert os.path.isdir(os.path.join(workdir, 'checkpoints.unreadable', '4', 'default'))
  assert sorted(int(f) for f in os.listdir(ckpts) if f.isdigit()) == [2, 4, 6]


def _reference_eval(config, workdir):
  """--mode=eval's metrics of `workdir`'s checkpoint in this one process with 4 devices, fed the
  global eval batches of two processes (each process's rows from its own shard, one after another)."""
  method, state = restore_newest(config, workdir)
  p_eval = parallel.eval_step(step_lib.eval_step(method, parallel.AXIS), parallel.devices(jax.devices()[:4]))
  rng = jax.random.PRNGKey(config.seed + 3)  # the key --mode=eval draws from
  metrics = [p_eval(state, _two_process_batch(config, i, train=False), jax.random.fold_in(rng, i))
             for i in range(config.eval.num_batches)]
  return method.summarize({k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]})


def test_sample_and_eval_over_two_processes(two_process_run, tmp_path, monkeypatch):
  """--mode=sample and --mode=eval over two processes give what one process with 4 devices gives on
  the same global batches (each device's randomness follows its global index); process 0 writes.

  The eval includes sample quality under a digits feature network whose reference statistics
  are not cached yet, so both processes compute and write them at the same time.
  """
  workdir, reference_workdir = str(tmp_path / 'two'), str(tmp_path / 'one')
  shutil.copytree(two_process_run[0], workdir)
  shutil.copytree(two_process_run[0], reference_workdir)
  os.mkdir(tmp_path / 'logs')
  out0, out1 = _run_two_processes(workdir, str(tmp_path / 'logs'), '--mode=sample')
  assert '6 samples from step 4' in out0 and 'samples from step' not in out1
  config = one_level_ddpm_config()
  reference = loop.sample(config, reference_workdir, devices=jax.devices()[:4])
  with np.load(os.path.join(workdir, 'samples', 'step_4_1.npz')) as z:  # step_4.npz: the training-time ones
    np.testing.assert_array_equal(z['images'], reference['images'])

  monkeypatch.setenv(cache.ENV, train_digits_feature_net(str(tmp_path / 'cache')))  # here and in the processes
  quality = {'num_samples': 24, 'sample_batch': 8,
             'inception_weights': str(tmp_path / 'absent.pth')}  # no Inception: its weights are not there
  out0, out1 = _run_two_processes(workdir, str(tmp_path / 'logs'), '--mode=eval',
                                  *[f'--config.eval.{k}={v}' for k, v in quality.items()])
  assert 'eval at step 4' in out0 and 'eval at step' not in out1
  with open(os.path.join(workdir, 'eval_4.json')) as f:
    result = json.load(f)
  config.eval.update(quality)
  expected = loop.evaluate(config, reference_workdir, devices=jax.devices()[:4])  # the same samples
  expected.update({f'eval/{k}': v for k, v in _reference_eval(config, reference_workdir).items()})
  assert 'eval/fid_classifier_digits' in result and 'eval/bits_per_dim' in result
  assert result == pytest.approx(expected, rel=1e-5)


def test_sigterm_to_one_process_stops_both_at_the_same_checkpointed_step(tmp_path):
  """A preemption notice that reaches one process only: both stop at the next log step, after
  checkpointing it together, and exit 0 (rather than one waiting forever for the other)."""
  workdir = str(tmp_path / 'w')
  sent = []

  def terminate_process_1(procs, logs):
    with open(logs[0], errors='replace') as f:
      if 'step 4/1000' not in f.read():
        return False
    procs[1].send_signal(signal.SIGTERM)
    sent.append(time.time())
    return True

  os.mkdir(tmp_path / 'logs')
  out0, _ = _run_two_processes(workdir, str(tmp_path / 'logs'), '--config.training.num_train_steps=1000',
                               '--config.training.checkpoint_every=1000', '--config.training.sample_every=0',
                               act=terminate_process_1)
  assert sent, out0
  stops = re.findall(r'a signal to another process: stopped at step (\d+), its checkpoint written', out0)
  assert len(stops) == 1, out0[-2000:]
  step = int(stops[0])
  assert step > 4 and step % 2 == 0  # a log step (log_every=2) after the signal
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == [str(step)]
  assert 'done:' not in out0


def test_initialize_starts_jax_distributed_only_for_multi_process_runs(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda *args: calls.append(args))
  monkeypatch.setattr(jax.config, 'update', lambda *args: None)
  for key in ('JAX_COORDINATOR_ADDRESS', 'SLURM_JOB_ID', 'OMPI_MCA_orte_hnp_uri', 'TPU_WORKER_HOSTNAMES',
              'TPU_PROCESS_ADDRESSES', 'MEGASCALE_COORDINATOR_ADDRESS'):
    monkeypatch.delenv(key, raising=False)
  assert parallel.initialize() is None and parallel.initialize(None, 1, 0) is None
  slurm = {'SLURM_JOB_ID': '7', 'SLURM_STEP_NODELIST': 'node[1-2]', 'SLURM_PROCID': '1', 'SLURM_LOCALID': '0'}
  for key, value in slurm.items():
    monkeypatch.setenv(key, value)
  monkeypatch.setenv('SLURM_NTASKS', '1')  # a one-task job (a sweep trial): one process
  assert parallel.cluster_environment() is None and parallel.initialize() is None
  assert calls == []
  monkeypatch.setenv('SLURM_NTASKS', '2')
  assert parallel.cluster_environment() == 'SLURM'
  parallel.initialize()
  assert calls == [(None, None, None)]  # JAX reads the rest from SLURM's variables
  parallel.initialize('10.0.0.1:1234', 2, 1)
  assert calls[-1] == ('10.0.0.1:1234', 2, 1)
  with pytest.raises(UserError, match=r'--process_id=2 must be in 0..1'):
    parallel.initialize('10.0.0.1:1234', 2, 2)
