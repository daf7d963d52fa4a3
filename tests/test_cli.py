"""run.py end to end: a tiny train / sample / eval through the CLI, and one-line errors for bad input."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import process_env
from tests.conftest import ROOT

TINY = ['--config=configs/ddpm_digits.py', '--config.model.ch=8', '--config.model.num_groups=4',
        '--config.diffusion.num_timesteps=50', '--config.training.batch_size=8',
        '--config.training.num_train_steps=4', '--config.training.log_every=2',
        '--config.training.checkpoint_every=2', '--config.training.sample_every=4',
        '--config.sample.num=4', '--config.sample.method=ddim', '--config.sample.steps=5']


def _run(*args, devices=2):
  return subprocess.run([sys.executable, 'run.py', *args], cwd=ROOT, env=process_env(devices), capture_output=True,
                        text=True, timeout=300)


def test_train_then_sample_then_eval(tmp_path):
  workdir = str(tmp_path / 'w')
  train = _run(*TINY, f'--workdir={workdir}')
  assert train.returncode == 0, train.stderr[-2000:]
  assert 'parameters on 2 x cpu' in train.stdout
  assert 'step 4/4 | loss' in train.stdout and 'steps/s' in train.stdout and 'ETA' in train.stdout
  sample = _run(*TINY, f'--workdir={workdir}', '--mode=sample', '--config.sample.num=3')
  assert sample.returncode == 0, sample.stderr[-2000:]
  assert '3 samples from step 4' in sample.stdout
  evaluate = _run(*TINY, f'--workdir={workdir}', '--mode=eval', '--config.eval.num_batches=1',
                  '--config.eval.batch_size=8')
  assert evaluate.returncode == 0, evaluate.stderr[-2000:]
  with open(os.path.join(workdir, 'eval_4.json')) as f:
    assert json.load(f)['num_examples'] == 8


@pytest.mark.parametrize('args, message', [
    (['--config.training.bacth_size=8'],
     'error: unknown config key --config.training.bacth_size: training has batch_size,'),
    (['--config.training.batch_size=eight'],
     "error: flag --config.training.batch_size=eight: invalid literal for int()"),
    (['--config.training.batch_size=6'],
     'error: training.batch_size=6 must be a positive multiple of the number of devices (4 = 1 processes x 4 devices)'),
    (['--config.data.image_size=9'],
     'error: data.image_size=9 must be divisible by 2'),
    (['--config=configs/no_such_config.py'],
     "error: cannot load --config='configs/no_such_config.py'"),
    (['--config.method=gan'],
     "error: config key model.kind is missing, and method 'gan' needs it: use a config written for method 'gan'"),
    (['--config.method=lm'],
     "error: method='lm' trains on text but data.kind='images': use a config written for method 'lm'"),
    (['--config.training.skip_nonfinite=maybe'],
     'error: flag --config.training.skip_nonfinite=maybe:'),
])
def test_bad_input_is_one_clear_line(tmp_path, args, message):
  result = _run(*TINY, f'--workdir={tmp_path}', *args, devices=4)
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(message), result.stderr[-2000:]
  assert 'Traceback' not in result.stderr


def test_config_file_as_a_separate_argument_gets_the_same_errors(tmp_path):
  result = _run('--config', 'configs/ddpm_digits.py', f'--workdir={tmp_path}', '--config.training.bacth_size=8')
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1].startswith(
      'error: unknown config key --config.training.bacth_size: training has batch_size,'), result.stderr[-2000:]


def test_unwritable_workdir_is_one_clear_line(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a folder')
  result = _run(*TINY, f'--workdir={blocker}/w')
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1].startswith(f"error: cannot write to --workdir='{blocker}/w'")
