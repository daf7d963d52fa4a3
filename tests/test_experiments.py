"""Sweeps: definitions, device slots, the local launcher end to end, and the SLURM array job it would submit."""

import csv
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from aigc_jax.errors import UserError
from experiments import accelerators
from experiments import launch
from experiments import slurm
from experiments import sweep as sweep_lib
from experiments import trial as trial_lib
from tests.conftest import ROOT


def test_grid_zipped_product_and_trial_names():
  g = sweep_lib.grid({'optim.lr': [1e-3, 3e-3], 'training.ema_rate': [0.9, 0.99, 0.999]})
  assert len(g) == 6 and g[1] == {'optim.lr': 1e-3, 'training.ema_rate': 0.99}
  z = sweep_lib.zipped({'model.width': [64, 128], 'model.num_heads': [2, 4]})
  assert z == [{'model.width': 64, 'model.num_heads': 2}, {'model.width': 128, 'model.num_heads': 4}]
  with pytest.raises(ValueError, match='one length'):
    sweep_lib.zipped({'a': [1, 2], 'b': [1]})
  p = sweep_lib.product(z, sweep_lib.grid({'model.num_layers': [2, 4]}))
  assert len(p) == 4 and p[3] == {'model.width': 128, 'model.num_heads': 4, 'model.num_layers': 4}
  sweep = sweep_lib.Sweep(config='configs/ddpm_digits.py', trials=g, fixed={'training.log_every': 10})
  names = sweep_lib.trial_names(sweep)
  assert names[1] == 'lr=0.001_ema_rate=0.99' and len(set(names)) == 6
  assert sweep_lib.trial_names(sweep) == names  # stable: a re-launch finds the same workdirs
  clash = sweep_lib.Sweep(config='c', trials=[{'a.lr': 1, 'b.lr': 2}, {'a.lr': 3, 'b.lr': 2}, {'a.lr': 3, 'b.lr': 4}])
  assert sweep_lib.trial_names(clash) == ['a.lr=1_b.lr=2', 'a.lr=3_b.lr=2', 'a.lr=3_b.lr=4']
  assert sweep_lib.flag_value((1, 2)) == '(1,2)' and sweep_lib.flag_value((4,)) == '(4,)'


@pytest.mark.parametrize('path, count', [('experiments/ddpm_lr.py', 4), ('experiments/gpt_width.py', 6)])
def test_shipped_sweeps_name_real_config_keys(path, count):
  sweep = sweep_lib.load(str(ROOT / path))
  sweep_lib.check_keys(sweep, [], path)
  assert len(sweep.trials) == count and sweep.metric == 'eval/loss'
  assert len(set(sweep_lib.trial_names(sweep))) == count


def test_a_misspelt_sweep_key_is_one_clear_error(tmp_path):
  path = tmp_path / 'bad.py'
  path.write_text('from experiments.sweep import Sweep, grid\n'
                  'def get_sweep():\n'
                  "  return Sweep(config='configs/ddpm_digits.py', trials=grid({'optim.lrr': [1, 2]}))\n")
  with pytest.raises(UserError, match=r'unknown config key --config.optim.lrr: optim has .*lr'):
    sweep_lib.check_keys(sweep_lib.load(str(path)), [], str(path))
  with pytest.raises(UserError, match='has no get_sweep'):
    (tmp_path / 'empty.py').write_text('x = 1\n')
    sweep_lib.load(str(tmp_path / 'empty.py'))


def test_concurrent_trials_get_disjoint_accelerators(monkeypatch):
  gpus = accelerators.slot_envs('gpu', ['0', '1', '2', '3'], 2, 2)
  assert gpus == [{'CUDA_VISIBLE_DEVICES': '0,1'}, {'CUDA_VISIBLE_DEVICES': '2,3'}]
  tpus = accelerators.slot_envs('tpu', ['0', '1', '2', '3'], 4, 1)
  assert [e['TPU_VISIBLE_CHIPS'] for e in tpus] == ['0', '1', '2', '3']
  assert len({e['TPU_MESH_CONTROLLER_PORT'] for e in tpus}) == 4 and tpus[0]['TPU_CHIPS_PER_PROCESS_BOUNDS'] == '1,1,1'
  with pytest.raises(UserError, match=r'--parallel=3 x --devices_per_trial=2 needs 6 GPUs, but this machine has 4'):
    accelerators.slot_envs('gpu', ['0', '1', '2', '3'], 3, 2)
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=4 --xla_cpu_enable_fast_math=false')
  cpu = accelerators.slot_envs('cpu', [], 2, 3)
  assert cpu[0]['XLA_FLAGS'] == '--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=3'
  monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '4,5')
  assert accelerators.detect() == ('gpu', ['4', '5'])  # only the GPUs this launcher was given


TINY = {'model.ch': 8, 'model.num_groups': 4, 'model.ch_mult': (1,), 'model.attn_resolutions': (),
        'diffusion.num_timesteps': 50, 'training.batch_size': 8, 'training.num_train_steps': 2,
        'training.log_every': 1, 'training.checkpoint_every': 2, 'training.sample_every': 0}


def _launch(*args):
  return subprocess.run([sys.executable, '-m', 'experiments.launch', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)


def _rows(root):
  with open(root / 'results.csv') as f:
    return {r['trial']: r for r in csv.DictReader(f)}


def test_launcher_runs_trials_skips_finished_ones_and_resumes_extended_ones(tmp_path):
  sweep_file = tmp_path / 'tiny_sweep.py'
  sweep_file.write_text(
      'from experiments.sweep import Sweep\n'
      'def get_sweep():\n'
      f'  return Sweep(config="configs/ddpm_digits.py", fixed={TINY!r}, metric="loss",\n'
      '               trials=[{"training.batch_size": 8}, {"training.batch_size": 7}])\n')
  root = tmp_path / 'root'
  args = [f'--sweep={sweep_file}', f'--root={root}', '--parallel=2', '--devices_per_trial=2', '--platform=cpu']
  first = _launch(*args)
  assert first.returncode == 0, first.stdout + first.stderr[-3000:]
  assert '2 trials of configs/ddpm_digits.py' in first.stdout and '2 to run' in first.stdout
  rows = _rows(root)
  good, bad = rows['batch_size=8'], rows['batch_size=7']
  assert good['status'] == 'done' and good['steps'] == '2' and float(good['final loss']) > 0
  assert float(good['steps/s']) > 0 and float(good['wall s']) > 0
  assert bad['status'] == 'failed'  # with its one-line error, and the other trial unharmed
  assert bad['error'].startswith('error: training.batch_size=7 must be a positive multiple of the number of devices '
                                 '(2 = 1 processes x 2 devices)')
  with open(root / 'batch_size=8' / 'launch.log') as f:
    assert 'parameters on 2 x cpu' in f.read()  # --devices_per_trial simulated devices
  assert '| batch_size=8 | 8 | done |' in (root / 'results.md').read_text()
  png = np.asarray(Image.open(root / 'results.png'))
  assert png.shape[0] > 200 and png.shape[1] > 200 and png.std() > 0

  again = _launch(*args)
  assert again.returncode == 0 and '2 already ended, 0 to run' in again.stdout, again.stdout + again.stderr[-2000:]
  assert trial_lib.read_status(str(root / 'batch_size=8'))['attempts'] == 1

  longer = _launch(*args, '--config.training.num_train_steps=4')
  assert longer.returncode == 0 and '2 to run' in longer.stdout, longer.stdout + longer.stderr[-2000:]
  with open(root / 'batch_size=8' / 'launch.log') as f:
    assert 'resuming from step 2 of 4' in f.read()
  status = trial_lib.read_status(str(root / 'batch_size=8'))
  assert status['status'] == 'done' and status['attempts'] == 2
  assert _rows(root)['batch_size=8']['steps'] == '4' and _rows(root)['batch_size=7']['status'] == 'failed'


def _fake_slurm(bin_dir, record):
  """sbatch and srun stand-ins: sbatch keeps the script it is given and answers as SLURM does."""
  bin_dir.mkdir()
  (bin_dir / 'sbatch').write_text(f'#!/bin/sh\ncp "$1" {record}\necho "Submitted batch job 4242"\n')
  (bin_dir / 'srun').write_text('#!/bin/sh\nexit 1\n')
  for name in ('sbatch', 'srun'):
    (bin_dir / name).chmod(stat.S_IRWXU)


def test_slurm_executor_submits_one_array_job_with_the_trial_resources(tmp_path, monkeypatch):
  record = tmp_path / 'submitted.sh'
  _fake_slurm(tmp_path / 'bin', record)
  monkeypatch.setenv('PATH', f'{tmp_path / "bin"}:{os.environ["PATH"]}')
  sweep = sweep_lib.load(str(ROOT / 'experiments' / 'ddpm_lr.py'))
  trials = launch.plan(sweep, str(tmp_path / 'root'), ['--config.training.num_train_steps=300'])
  options = slurm.Options(partition='gpu-long', gpus_per_trial=2, time_min=90, cpus_per_trial=6, parallel=2,
                          name='ddpm_lr')
  jobs = slurm.submit(slurm.executor(str(tmp_path / 'root'), options), trials)
  script = record.read_text()
  for line in ('#SBATCH --array=0-3%2', '#SBATCH --partition=gpu-long', '#SBATCH --gpus-per-node=2',
               '#SBATCH --time=90', '#SBATCH --cpus-per-task=6', '#SBATCH --ntasks-per-node=1',
               '#SBATCH --nodes=1', '#SBATCH --job-name=ddpm_lr', f'cd {trial_lib.REPO_ROOT}'):
    assert line in script.splitlines(), f'{line!r} not in:\n{script}'
  assert [j.job_id for j in jobs] == ['4242_0', '4242_1', '4242_2', '4242_3']
  submission = jobs[2].submission()  # what task 2 will run: trial.run of the third trial
  assert submission.function is trial_lib.run and submission.args == (trials[2],)
  assert '--config.training.num_train_steps=300' in trials[2].args
  assert '--config.optim.lr=0.002' in trials[2].args and '--config.training.ema_rate=0.99' in trials[2].args


def test_slurm_without_a_cluster_is_one_clear_error(tmp_path, monkeypatch):
  monkeypatch.setenv('PATH', str(tmp_path))
  options = slurm.Options(partition='', gpus_per_trial=1, time_min=10, cpus_per_trial=2, parallel=1, name='x')
  with pytest.raises(UserError, match='--executor=slurm needs SLURM'):
    slurm.executor(str(tmp_path), options)


def test_trial_status_records_failures_and_interruptions(tmp_path):
  trial = trial_lib.Trial(name='t', workdir=str(tmp_path / 't'), config='configs/no_such_config.py', overrides={})
  status = trial_lib.run(trial)
  assert status['status'] == 'failed' and "error: cannot load --config='configs/no_such_config.py'" in status['error']
  assert not trial_lib.is_done(trial) and trial_lib.failed_before(trial)
  running = trial_lib.start(trial)
  running.proc.kill()
  assert trial_lib.finish(running, running.proc.wait())['status'] == 'interrupted'
  with open(tmp_path / 't' / 'status.json') as f:
    assert json.load(f)['attempts'] == 2
