"""The classifier method and the offline feature networks: a step that is the same on 4 devices as on 1,
learns real digits, the feature_net CLI end to end, and the classifier FID."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from aigc_jax import cache
from aigc_jax import methods
from aigc_jax import data
from aigc_jax.data import images
from aigc_jax.errors import UserError
from aigc_jax.evaluation import feature_net
from aigc_jax.models.classifier import CNN
from aigc_jax.train import parallel
from aigc_jax.train import step as step_lib
from tests.conftest import build
from tests.conftest import process_env
from tests.conftest import ROOT
from tests.conftest import shrink_training

# Without dropout, whose masks depend on how the batch is split over devices.
TINY_MODEL = {'widths': (16, 32), 'features': 32, 'num_groups': 4, 'dropout': 0.0}


def _tiny_config():
  from configs import classifier_digits
  config = shrink_training(classifier_digits.get_config())
  config.training.sample_every = 0
  config.model.update(TINY_MODEL)
  return config


def _digits_data():
  from configs import classifier_digits
  return classifier_digits.get_config().data


def _state_after(config, devices, batches):
  _, train_step, state = build(config)
  step = parallel.train_step(train_step, parallel.devices(devices))
  history = []
  for b in batches:
    split = {k: v.reshape((len(devices), -1) + v.shape[2:]) for k, v in b.items()}
    state, metrics = step(state, [split])
    history.append((float(metrics['loss']), float(metrics['accuracy'])))
  return jax.device_get(state), history


def test_4_device_step_equals_1_device_step():
  config = _tiny_config()
  ds = data.create(config.data, 'train', 8, seed=0, process_index=0, process_count=1, local_devices=1,
                   train=True)
  batches = [ds.batch(s) for s in range(3)]
  assert batches[0]['labels'].dtype == np.int32
  state4, history4 = _state_after(config, jax.devices()[:4], batches)
  state1, history1 = _state_after(config, jax.devices()[:1], batches)
  assert int(state4.step) == int(state1.step) == 3
  np.testing.assert_allclose(history4, history1, atol=1e-6)
  for a, b in zip(jax.tree.leaves(state4.params), jax.tree.leaves(state1.params)):
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize('patch, hw', [(2, 28), (3, 8)])
def test_features_of_an_image_do_not_depend_on_its_batch(patch, hw):
  """GroupNorm, not BatchNorm: FID features are a function of the image alone (also past a padded stem)."""
  model = CNN(num_classes=10, patch=patch, widths=(8, 16), depth=1, features=12, num_groups=4)
  x = np.random.default_rng(0).uniform(-1, 1, (6, hw, hw, 1)).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(0), x[:1], train=False)
  logits, feats = model.apply(variables, x, train=False)
  assert logits.shape == (6, 10) and feats.shape == (6, 12)
  np.testing.assert_allclose(model.apply(variables, x[:2], train=False)[1], feats[:2], atol=1e-5)


def test_step_learns_real_digits():
  config = _tiny_config()
  config.optim.lr = 3e-3
  config.optim.schedule = 'constant'
  x, y = images.load(config.data, 'train')
  batch = {'images': (x[:64].astype(np.float32) / 127.5 - 1.0)[None], 'labels': y[:64][None]}
  method, train_step, state = build(config)
  devs = parallel.devices(jax.devices()[:1])
  step = parallel.train_step(train_step, devs)
  evaluate = parallel.eval_step(step_lib.eval_step(method, parallel.AXIS), devs)

  def metrics(state):  # of the current (not EMA) params
    return evaluate(state.replace(ema_params=state.params), batch, jax.random.PRNGKey(0))

  before = metrics(state)
  for _ in range(60):
    state, _ = step(state, [batch])
  after = metrics(state)
  assert after['loss'] < 0.4 * before['loss'], (before, after)
  assert before['accuracy'] < 0.3 and after['accuracy'] > 0.8, (before, after)


def test_classifier_settings_are_checked():
  config = _tiny_config()
  config.training.sample_every = 4
  with pytest.raises(UserError, match='a classifier does not sample; set it to 0'):
    methods.check_config(config)
  config = _tiny_config()
  config.model.num_groups = 3
  with pytest.raises(UserError, match='model.num_groups=3 must divide every width'):
    methods.check_config(config)


def test_unlabelled_images_are_a_clear_error():
  _, train_step, state = build(_tiny_config())
  step = parallel.train_step(train_step, parallel.devices(jax.devices()[:1]))
  with pytest.raises(UserError, match='needs labelled images'):
    step(state, [{'images': np.zeros((1, 4, 8, 8, 1), np.float32)}])


def _feature_net_cli(*args, devices=2):
  env = process_env(devices)
  env.pop(cache.ENV, None)
  return subprocess.run([sys.executable, '-m', 'aigc_jax.evaluation.feature_net', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


TINY_CLI = ['--dataset=digits', "--config.model.widths=(16,32)", '--config.model.features=32',
            '--config.model.num_groups=4', '--config.model.dropout=0', '--config.training.num_train_steps=60',
            '--config.training.checkpoint_every=30', '--config.training.log_every=30',
            '--config.training.batch_size=64', '--config.training.ema_rate=0.5', '--config.optim.lr=3e-3',
            '--config.optim.warmup_steps=10', '--config.optim.schedule=constant']


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
  """The digits feature network of TINY_CLI, trained once through the CLI.

  It trains on 8 devices, more than the tests have, so loading it must not depend on where it was trained.
  """
  cache = str(tmp_path_factory.mktemp('cache'))
  result = _feature_net_cli(*TINY_CLI, f'--cache_dir={cache}', devices=8)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'step 60/60 | loss' in result.stdout
  assert 'feature network classifier_digits: 32 features, held-out accuracy' in result.stdout
  return cache


def test_feature_net_cli_writes_its_accuracy_and_load_gives_features(cache_dir):
  wd = os.path.join(cache_dir, 'feature_nets', 'digits')
  with open(os.path.join(wd, 'feature_net.json')) as f:
    info = json.load(f)
  with open(os.path.join(wd, 'eval_60.json')) as f:
    assert info['accuracy'] == json.load(f)['eval/accuracy']
  assert info['feature_net'] == 'classifier_digits' and info['step'] == 60 and info['feature_dim'] == 32
  assert info['eval_examples'] == images.DIGITS_TEST and info['data_source'] == 'scikit-learn digits'
  assert info['accuracy'] > 0.5, info  # 60 steps of a tiny net tell most digits apart (chance: 0.1)
  assert 0.0 <= info['fid_classifier_digits_heldout_halves'] and info['heldout_half_size'] == 100

  net = feature_net.load('digits', cache_dir)
  x, y = images.load(_digits_data(), 'test')
  logits, feats = net.outputs(x[:37])  # not a multiple of the devices or the batch
  assert feats.shape == (37, 32) and logits.shape == (37, 10)
  np.testing.assert_allclose(net.features(x[:37]), feats)
  assert np.mean(np.argmax(net.logits(x), axis=1) == y) == pytest.approx(info['accuracy'], abs=1e-6)
  with pytest.raises(UserError, match=r'classifier_digits takes uint8 images \[N, 8, 8, 1\]'):
    net.features(x.astype(np.float32))


def test_rerun_of_a_finished_feature_net_reports_it(cache_dir):
  result = _feature_net_cli(*TINY_CLI, f'--cache_dir={cache_dir}')
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'already trained' in result.stdout and 'step 1/' not in result.stdout


def test_classifier_fid_of_real_splits_is_far_below_real_against_noise(cache_dir):
  net = feature_net.load('digits', cache_dir)
  x, _ = images.load(_digits_data(), 'train')
  noise = np.random.default_rng(0).integers(0, 256, (400,) + x.shape[1:], dtype=np.uint8)
  real = feature_net.classifier_fid(net, x[:400], x[400:800])
  fake = feature_net.classifier_fid(net, x[:400], noise)
  assert set(real) == {'fid_classifier_digits'}
  assert real['fid_classifier_digits'] < 0.1 * fake['fid_classifier_digits'], (real, fake)


def test_untrained_feature_net_names_the_command_to_train_it(tmp_path):
  with pytest.raises(UserError, match=f'python -m aigc_jax.evaluation.feature_net --dataset=mnist '
                                      f'--cache_dir={tmp_path}'):
    feature_net.load('mnist', str(tmp_path))
  with pytest.raises(UserError, match="no feature network for 'svhn'"):
    feature_net.load('svhn', str(tmp_path))


def test_cache_dir_comes_from_the_flag_then_the_environment(monkeypatch, tmp_path):
  monkeypatch.setenv(cache.ENV, str(tmp_path / 'env'))
  assert feature_net.workdir('mnist') == str(tmp_path / 'env' / 'feature_nets' / 'mnist')
  assert feature_net.workdir('mnist', str(tmp_path)) == str(tmp_path / 'feature_nets' / 'mnist')


@pytest.mark.parametrize('args, message', [
    (['--dataset=digits', '--config.training.bacth_size=8'],
     'error: unknown config key --config.training.bacth_size: training has batch_size,'),
    (['--dataset=digits', '--config.training.batch_size=eight'],
     'error: flag --config.training.batch_size=eight: invalid literal for int()'),
    (['--dataset=svhn'], 'error: flag --dataset=svhn: value should be one of'),
    ([], 'error: --dataset is required: one of cifar10, digits, mnist'),
])
def test_bad_cli_input_is_one_clear_line(tmp_path, args, message):
  result = _feature_net_cli(*args, f'--cache_dir={tmp_path}')
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
