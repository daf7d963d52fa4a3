"""Sample quality at eval: FID / IS / KID under the classifier feature network, cached reference
statistics, and --mode=eval / periodic eval writing them beside bits/dim."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from aigc_jax import cache
from aigc_jax.data import images
from aigc_jax.errors import UserError
from aigc_jax.evaluation import feature_net
from aigc_jax.evaluation import inception
from aigc_jax.evaluation import metrics
from aigc_jax.evaluation import sample_quality
from aigc_jax.train import loop
from aigc_jax.train import parallel
from tests.conftest import train_digits_feature_net


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
  return train_digits_feature_net(str(tmp_path_factory.mktemp('cache')))


@pytest.fixture(autouse=True)
def offline_inception(monkeypatch):
  """No test downloads the 100 MB Inception weights, even on a machine with network."""
  monkeypatch.setattr(inception, 'network_up', lambda host: False)


def _ddpm_digits():
  from configs import ddpm_digits
  return ddpm_digits.get_config()


def test_classifier_summary_measures_confidence_and_class_spread():
  one_class = np.tile([[9.0] + [0.0] * 9], (100, 1))
  assert sample_quality.classifier_summary(one_class)['class_entropy'] == 0.0
  assert sample_quality.classifier_summary(one_class)['confidence'] > 0.99
  ten = np.eye(10)[np.arange(100) % 10] * 20.0
  np.testing.assert_allclose(sample_quality.classifier_summary(ten)['class_entropy'], np.log(10))


def test_real_digits_score_far_better_than_noise_or_one_repeated_image(cache_dir):
  config = _ddpm_digits()
  devs = parallel.devices()
  real, _ = images.load(config.data, 'test')
  noise = np.random.default_rng(0).integers(0, 256, real.shape, dtype=np.uint8)
  repeated = np.repeat(real[:1], len(real), axis=0)
  scores = {name: sample_quality.image_metrics(config, x, devs, cache_dir)[0]
            for name, x in (('real', real), ('noise', noise), ('repeated', repeated))}
  fid = {k: v['fid_classifier_digits'] for k, v in scores.items()}
  assert fid['real'] < 0.2 * min(fid['noise'], fid['repeated']), fid
  assert scores['real']['kid_classifier_digits'] < scores['noise']['kid_classifier_digits']
  assert scores['real']['class_entropy_classifier_digits'] > 2.0  # the test digits cover all ten classes
  assert scores['repeated']['class_entropy_classifier_digits'] == 0.0
  assert scores['real']['is_classifier_digits'] > scores['repeated']['is_classifier_digits']


def test_reference_statistics_are_computed_once_then_read_from_the_cache(cache_dir, monkeypatch):
  config = _ddpm_digits()
  devs = parallel.devices()
  real, _ = images.load(config.data, 'test')
  first, missing = sample_quality.image_metrics(config, real[:50], devs, cache_dir)
  assert any('pt_inception-2015-12-05' in why for why in missing)  # offline: no Inception, said why

  def no_data(*args):
    raise AssertionError('the real images were read again')
  monkeypatch.setattr(images, 'load', no_data)
  again, _ = sample_quality.image_metrics(config, real[:50], devs, cache_dir)
  assert again['fid_classifier_digits'] == first['fid_classifier_digits']


def test_a_retrained_feature_network_of_the_same_name_does_not_reuse_the_old_reference(cache_dir, tmp_path,
                                                                                       monkeypatch):
  """Retraining keeps the name classifier_digits; the cached real-image statistics must follow the new weights."""
  config = _ddpm_digits()
  devs = parallel.devices()
  stats_dir = str(tmp_path)  # reference statistics apart from the module's shared cache
  (old,), _ = sample_quality.networks(config, devs, cache_dir)
  trained = feature_net.load('digits', cache_dir, devs.local)
  monkeypatch.setattr(feature_net, 'load', lambda *args: dataclasses.replace(
      trained, params=jax.tree.map(lambda p: 1.5 * p, trained.params)))
  (new,), _ = sample_quality.networks(config, devs, cache_dir)
  assert new.name == old.name and new.weights_id != old.weights_id
  old_ref = sample_quality.reference(old, config.data, 'train', stats_dir)
  new_ref = sample_quality.reference(new, config.data, 'train', stats_dir)
  mu, sigma = metrics.feature_stats(new.outputs(images.load(config.data, 'train')[0])[0])
  assert not np.allclose(new_ref['mu'], old_ref['mu'])
  np.testing.assert_allclose(new_ref['mu'], mu, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new_ref['sigma'], sigma, rtol=1e-5, atol=1e-6)

  def no_data(*args):
    raise AssertionError('the real images were read again')
  monkeypatch.setattr(images, 'load', no_data)
  (again,), _ = sample_quality.networks(config, devs, cache_dir)
  np.testing.assert_array_equal(sample_quality.reference(again, config.data, 'train', stats_dir)['mu'], new_ref['mu'])


def _write_source(config, kind: str, root, x_NHW: np.ndarray, version: int) -> None:
  """`x_NHW` as an npz file (train = all but 2) or a folder of PNGs (train/0/<i>.png), all dated `version` s."""
  stamp = version * 10**9
  if kind == 'npz':
    config.npz_path, config.npz_holdout = str(root / 'data.npz'), 2
    np.savez(root / 'data.npz', images=x_NHW)
    os.utime(root / 'data.npz', ns=(stamp, stamp))
    return
  config.image_folder, config.image_size, config.channels = str(root / 'folder'), 8, 1
  (root / 'folder' / 'train' / '0').mkdir(parents=True, exist_ok=True)
  for i, image in enumerate(x_NHW[:-2]):
    Image.fromarray(image).save(root / 'folder' / 'train' / '0' / f'{i}.png')
    os.utime(root / 'folder' / 'train' / '0' / f'{i}.png', ns=(stamp, stamp))


@pytest.mark.parametrize('kind', ['npz', 'image_folder'])
def test_rewritten_real_images_do_not_reuse_the_old_reference(tmp_path, kind):
  """The same npz path or image folder holding other images (of the same sizes, newer) gets their statistics."""
  net = sample_quality.Network('pixels', lambda x: (x.reshape(len(x), -1) / 255.0, np.zeros((len(x), 2))), False,
                               'fixed')
  config = _ddpm_digits().data
  rng = np.random.default_rng(0)
  refs, means = [], []
  for version in range(2):
    x = rng.integers(0, 256, (12, 8, 8), dtype=np.uint8)
    _write_source(config, kind, tmp_path, x, version)
    refs.append(sample_quality.reference(net, config, 'train', str(tmp_path / 'cache')))
    means.append(x[:-2].reshape(10, -1).mean(0) / 255.0)
  np.testing.assert_allclose(refs[1]['mu'], means[1], rtol=1e-6)
  assert not np.allclose(refs[1]['mu'], refs[0]['mu'])


def test_padded_samples_are_judged_without_their_border(cache_dir):
  config = _ddpm_digits()
  devs = parallel.devices()
  real, _ = images.load(config.data, 'test')
  plain, _ = sample_quality.image_metrics(config, real, devs, cache_dir)
  config.data.pad, config.data.image_size = 2, 12
  padded, _ = sample_quality.image_metrics(config, np.pad(real, ((0, 0), (2, 2), (2, 2), (0, 0))), devs, cache_dir)
  assert padded == plain


def test_cache_files_written_by_two_runs_at_once_are_whole(tmp_path):
  """Two writers of one cache file at the same time (the processes of a run, the trials of a sweep
  with a cold cache) both finish, and the file is one of theirs, whole; a failed write leaves none."""
  path = str(tmp_path / 'stats.npz')
  with cache.replacing(path) as first, open(first, 'wb') as f:
    np.savez(f, x=np.zeros(3))
    with cache.replacing(path) as second, open(second, 'wb') as g:
      np.savez(g, x=np.ones(3))
    with np.load(path) as z:
      np.testing.assert_array_equal(z['x'], np.ones(3))
  with np.load(path) as z:
    np.testing.assert_array_equal(z['x'], np.zeros(3))
  with pytest.raises(OSError):
    with cache.replacing(path) as tmp, open(tmp, 'wb') as f:
      f.write(b'half a file')
      raise OSError('disk full')
  with np.load(path) as z:
    np.testing.assert_array_equal(z['x'], np.zeros(3))
  assert os.listdir(tmp_path) == ['stats.npz']


def test_no_feature_network_at_all_is_a_clear_error(tmp_path):
  with pytest.raises(UserError, match=r'no feature network .*feature_net --dataset=digits.*pt_inception'):
    sample_quality.image_metrics(_ddpm_digits(), np.zeros((4, 8, 8, 1), np.uint8), parallel.devices(),
                                 str(tmp_path))


def test_eval_mode_and_periodic_eval_report_fid_and_bits_per_dim(cache_dir, tiny_config, tmp_path, monkeypatch):
  monkeypatch.setenv(cache.ENV, cache_dir)
  tiny_config.training.eval_every = tiny_config.training.num_train_steps
  tiny_config.eval.num_samples = 24
  tiny_config.eval.num_samples_in_training = 12
  tiny_config.eval.sample_batch = 8
  loop.train(tiny_config, str(tmp_path))
  rows = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  during = [r for r in rows if 'eval/fid_classifier_digits' in r]
  assert len(during) == 1 and during[0]['eval/num_samples'] == 12 and np.isfinite(during[0]['eval/bits_per_dim'])
  result = loop.evaluate(tiny_config, str(tmp_path))
  step = tiny_config.training.num_train_steps
  assert json.load(open(tmp_path / f'eval_{step}.json')) == pytest.approx(result)
  assert result['num_samples'] == 24 and result['eval/fid_classifier_digits'] > 0
  assert 0 < result['eval/bits_per_dim'] and 'eval/is_classifier_digits' in result


def test_class_accuracy_is_the_share_assigned_to_the_requested_class(cache_dir):
  config = _ddpm_digits()
  real, labels = images.load(config.data, 'test')
  devs = parallel.devices()
  right, _ = sample_quality.image_metrics(config, real, devs, cache_dir, labels_N=labels)
  wrong, _ = sample_quality.image_metrics(config, real, devs, cache_dir, labels_N=(labels + 1) % 10)
  assert right['class_accuracy_classifier_digits'] > 0.7 > 0.2 > wrong['class_accuracy_classifier_digits']
  assert 'class_accuracy_classifier_digits' not in sample_quality.image_metrics(config, real, devs, cache_dir)[0]
  np.testing.assert_allclose(sample_quality.class_accuracy(np.eye(3)[[0, 1, 2, 2]], np.array([0, 1, 1, 2])), 0.75)


def test_eval_of_a_class_conditional_model_reports_class_accuracy_beside_fid(cache_dir, tmp_path, monkeypatch):
  from tests.test_guidance import tiny_cond_config
  monkeypatch.setenv(cache.ENV, cache_dir)
  config = tiny_cond_config()
  config.training.sample_every = 0
  config.eval.num_samples = 30
  config.eval.sample_batch = 10
  config.eval.bits_per_dim = False
  judged = {}
  image_metrics = sample_quality.image_metrics

  def spy(config, images_NHWC, devs, *args, labels_N=None, **kw):
    judged['labels'] = labels_N
    return image_metrics(config, images_NHWC, devs, *args, labels_N=labels_N, **kw)
  monkeypatch.setattr(sample_quality, 'image_metrics', spy)
  loop.train(config, str(tmp_path))
  result = loop.evaluate(config, str(tmp_path))
  np.testing.assert_array_equal(judged['labels'], np.arange(30) % 10)  # three sampler calls, each over all classes
  assert result['num_samples'] == 30 and result['eval/fid_classifier_digits'] > 0
  assert 0.0 <= result['eval/class_accuracy_classifier_digits'] <= 1.0
  config.eval.sample_batch = 8
  with pytest.raises(UserError, match='eval.sample_batch=8 must be a multiple of the 10 classes drawn'):
    loop.evaluate(config, str(tmp_path))
