"""Evaluation: FID/IS/KID against references and known values, the FID Inception network and its
weight conversion, the torch checkpoint reader, and feature extraction over 4 devices."""

import collections
import dataclasses
import hashlib
import io
import os
import pickle
import zipfile

import jax
import numpy as np
import pytest
import scipy.linalg
import scipy.special

from aigc_jax.errors import UserError
from aigc_jax.evaluation import features
from aigc_jax.evaluation import inception
from aigc_jax.evaluation import metrics
from aigc_jax.evaluation import torch_checkpoint
from aigc_jax.train import parallel


# ---------------------------------------------------------------- metrics

def _pytorch_fid_reference(mu1, sigma1, mu2, sigma2, eps=1e-6):
  """pytorch-fid's calculate_frechet_distance: scipy.linalg.sqrtm of the product."""
  covmean, _ = scipy.linalg.sqrtm(sigma1.dot(sigma2), disp=False)
  if not np.isfinite(covmean).all():
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  diff = mu1 - mu2
  return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean.real)


def _correlated(rng, n, d, shift=0.0):
  mix = rng.normal(size=(d, d)) / np.sqrt(d)
  return rng.normal(size=(n, d)) @ mix + shift


def test_frechet_distance_matches_scipy_sqrtm_reference():
  rng = np.random.default_rng(0)
  f1 = _correlated(rng, 400, 64)
  f2 = _correlated(rng, 300, 64, shift=0.3) * 1.5
  mu1, s1 = metrics.feature_stats(f1)
  mu2, s2 = metrics.feature_stats(f2)
  np.testing.assert_allclose(s1, np.cov(f1, rowvar=False))
  ref = _pytorch_fid_reference(mu1, s1, mu2, s2)
  np.testing.assert_allclose(metrics.frechet_distance(mu1, s1, mu2, s2), ref, rtol=1e-6)
  np.testing.assert_allclose(metrics.frechet_distance(mu2, s2, mu1, s1), ref, rtol=1e-6)


def test_frechet_distance_near_zero_for_one_distribution_and_grows_as_mean_shift_squared():
  rng = np.random.default_rng(1)
  mu, sigma = metrics.feature_stats(_correlated(rng, 500, 16))
  delta = rng.normal(size=16)
  # Same covariance: (S S)^½ = S, so the distance is exactly ||Δμ||².
  np.testing.assert_allclose(metrics.frechet_distance(mu, sigma, mu + delta, sigma), delta @ delta, rtol=1e-8)
  a, b = rng.normal(size=(2, 20000, 8))
  same = metrics.frechet_distance(*metrics.feature_stats(a), *metrics.feature_stats(b))
  assert 0 <= same < 0.01
  shift = np.full(8, 0.5)  # ||Δμ||² = 2
  shifted = metrics.frechet_distance(*metrics.feature_stats(a), *metrics.feature_stats(b + shift))
  np.testing.assert_allclose(shifted, shift @ shift + same, rtol=0.05)


def test_frechet_distance_of_a_set_with_itself_is_zero_when_covariance_is_singular():
  f = np.random.default_rng(2).normal(size=(50, 100))  # N < D: rank-deficient covariance
  mu, sigma = metrics.feature_stats(f)
  assert abs(metrics.frechet_distance(mu, sigma, mu, sigma)) < 1e-6 * np.trace(sigma)


def _original_inception_score(logits, splits):
  """The original IS code on softmax probabilities."""
  preds = scipy.special.softmax(logits, axis=1)
  scores = []
  for i in range(splits):
    part = preds[i * len(preds) // splits:(i + 1) * len(preds) // splits]
    kl = part * (np.log(part) - np.log(np.mean(part, 0, keepdims=True)))
    scores.append(np.exp(np.mean(np.sum(kl, 1))))
  return np.mean(scores), np.std(scores)


def test_inception_score_uniform_confident_and_reference():
  assert metrics.inception_score(np.zeros((100, 1008))) == pytest.approx((1.0, 0.0))
  confident = 100.0 * np.eye(10)[np.arange(1000) % 10]  # 10 classes, each used equally in every split
  mean, std = metrics.inception_score(np.pad(confident, ((0, 0), (0, 998))), splits=10)
  assert mean == pytest.approx(10.0, rel=1e-6) and std < 1e-6
  logits = np.random.default_rng(3).normal(size=(503, 20)) * 3
  np.testing.assert_allclose(metrics.inception_score(logits, splits=7),
                             _original_inception_score(logits, 7), rtol=1e-10)


def test_kid_unbiased_for_one_distribution_and_positive_for_a_shift():
  rng = np.random.default_rng(4)
  same, shifted = [], []
  for _ in range(20):
    a, b = rng.normal(size=(2, 200, 16))
    same.append(metrics.kernel_inception_distance(a, b, num_subsets=10, rng=rng)[0])
    shifted.append(metrics.kernel_inception_distance(a, b + 0.5, num_subsets=10, rng=rng)[0])
  # The unbiased estimate averages to 0 (keeping the diagonals, k(x, x), would bias it upwards).
  assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(len(same))
  assert abs(np.mean(same)) < 0.01 * np.mean(shifted)
  assert min(shifted) > 0


def test_kid_caps_the_subset_size_and_agrees_with_a_direct_computation():
  rng = np.random.default_rng(5)
  x, y = rng.normal(size=(30, 4)), rng.normal(size=(30, 4)) + 1
  mean, std = metrics.kernel_inception_distance(x, y, num_subsets=3, subset_size=1000)
  k = lambda a, b: (a @ b.T / 4 + 1) ** 3  # noqa: E731
  m = 30  # every subset is the whole of both sets, so each MMD² is the same
  direct = ((k(x, x).sum() - np.trace(k(x, x)) + k(y, y).sum() - np.trace(k(y, y))) / (m * (m - 1))
            - 2 * k(x, y).mean())
  assert mean == pytest.approx(direct, rel=1e-10) and std == pytest.approx(0.0, abs=1e-12)


def test_metrics_reject_bad_shapes():
  with pytest.raises(UserError, match='at least 2 feature vectors'):
    metrics.feature_stats(np.zeros((1, 3)))
  with pytest.raises(UserError, match='of one D'):
    metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
  with pytest.raises(UserError, match='N >= splits=10'):
    metrics.inception_score(np.zeros((5, 3)))
  with pytest.raises(UserError, match='of one D'):
    metrics.kernel_inception_distance(np.zeros((5, 3)), np.zeros((5, 4)))


# ---------------------------------------------------------------- the Inception network

def _to_torch_layout(path, a):
  """Flax -> pytorch-fid layout, written out independently of the converter: HWIO -> OIHW, (in, out) -> (out, in)."""
  if path[-1] != 'kernel':
    return a
  return a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T


def random_state_dict() -> dict[str, np.ndarray]:
  """A seeded random state dict in pytorch-fid's layout, scaled so activations stay O(1) through the network."""
  rng = np.random.default_rng(0)
  sd = {}
  for path, shape in inception.variable_shapes().items():
    if path[-1] == 'kernel':
      a = rng.normal(0, 1 / np.sqrt(np.prod(shape[:-1])), shape)
    elif path[-1] == 'var':
      a = rng.uniform(0.5, 1.5, shape)
    else:
      a = rng.normal(0, 0.1, shape)
    sd[inception.torch_key(path)] = np.ascontiguousarray(_to_torch_layout(path, a.astype(np.float32)))
  return sd


@pytest.fixture(scope='module')
def state_dict():
  return random_state_dict()


@pytest.fixture(scope='module')
def variables(state_dict):
  return inception.params_from_torch_state_dict(state_dict)


@pytest.fixture(scope='module')
def outputs(variables):
  """One compiled forward of 2 small images, shared by the tests that need the network's outputs."""
  images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), np.uint8)
  both = lambda v, x: (inception.InceptionV3().apply(v, x),  # noqa: E731
                       inception.InceptionV3(logits_bias=True).apply(v, x)[1])
  return images, jax.device_get(jax.jit(both)(variables, images))


def test_inception_gives_pool3_features_and_logits(outputs, variables):
  _, ((pool, logits), logits_with_bias) = outputs
  assert pool.shape == (2, 2048) and logits.shape == (2, 1008)
  assert np.isfinite(pool).all() and (pool >= 0).all()  # a mean of ReLU outputs
  fc = variables['params']['fc']
  np.testing.assert_allclose(logits, pool @ fc['kernel'], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(logits_with_bias, logits + fc['bias'], rtol=1e-5, atol=1e-5)


def test_inception_has_pytorch_fid_layout():
  shapes = inception.variable_shapes()
  torch_shapes = {inception.torch_key(p): _to_torch_layout(p, np.empty(s)).shape for p, s in shapes.items()}
  # 94 conv+BN units (5 tensors each) and the fc layer.
  assert len(torch_shapes) == 94 * 5 + 2
  # torchvision's inception_v3 has 27,161,264 parameters; without its aux head (3,326,696)
  # and with 1008 rather than 1000 classes (+16,392): pytorch-fid's FID network.
  assert sum(np.prod(s) for p, s in shapes.items() if p[0] == 'params') == 23_850_960
  known = {
      'Conv2d_1a_3x3.conv.weight': (32, 3, 3, 3),
      'Conv2d_1a_3x3.bn.running_var': (32,),
      'Conv2d_4a_3x3.conv.weight': (192, 80, 3, 3),
      'Mixed_5b.branch_pool.conv.weight': (32, 192, 1, 1),
      'Mixed_5d.branch5x5_2.conv.weight': (64, 48, 5, 5),
      'Mixed_6a.branch3x3.conv.weight': (384, 288, 3, 3),
      'Mixed_6b.branch7x7_2.conv.weight': (128, 128, 1, 7),
      'Mixed_6e.branch7x7dbl_5.conv.weight': (192, 192, 1, 7),
      'Mixed_7a.branch3x3_2.conv.weight': (320, 192, 3, 3),
      'Mixed_7b.branch3x3dbl_1.conv.weight': (448, 1280, 1, 1),
      'Mixed_7c.branch3x3dbl_3b.conv.weight': (384, 384, 3, 1),
      'Mixed_7c.branch_pool.bn.weight': (192,),
      'fc.weight': (1008, 2048),
      'fc.bias': (1008,),
  }
  for key, shape in known.items():
    assert torch_shapes[key] == shape, key


def test_converter_maps_pytorch_fid_keys_onto_the_flax_tree(state_dict, variables):
  p, stats = variables['params'], variables['batch_stats']
  np.testing.assert_array_equal(p['Conv2d_1a_3x3']['conv']['kernel'],
                                state_dict['Conv2d_1a_3x3.conv.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(p['Mixed_6b']['branch7x7_2']['conv']['kernel'][0, :, 5, 7],
                                state_dict['Mixed_6b.branch7x7_2.conv.weight'][7, 5, 0, :])
  np.testing.assert_array_equal(p['Mixed_7c']['branch_pool']['bn']['scale'],
                                state_dict['Mixed_7c.branch_pool.bn.weight'])
  np.testing.assert_array_equal(stats['Mixed_5b']['branch1x1']['bn']['var'],
                                state_dict['Mixed_5b.branch1x1.bn.running_var'])
  np.testing.assert_array_equal(p['fc']['kernel'], state_dict['fc.weight'].T)
  with_counters = dict(state_dict, **{'Conv2d_1a_3x3.bn.num_batches_tracked': np.array(0)})
  inception.params_from_torch_state_dict(with_counters)  # torch's BatchNorm counters are ignored


def test_converter_names_the_keys_that_do_not_fit(state_dict):
  missing = {k: v for k, v in state_dict.items() if k != 'Mixed_6c.branch1x1.conv.weight'}
  with pytest.raises(UserError, match=r'lack 1 .* Mixed_6c\.branch1x1\.conv\.weight'):
    inception.params_from_torch_state_dict(missing)
  bad = dict(state_dict, **{'fc.weight': np.zeros((1000, 2048), np.float32)})
  with pytest.raises(UserError, match=r'fc\.weight has shape \(1000, 2048\), the network needs \(1008, 2048\)'):
    inception.params_from_torch_state_dict(bad)
  extra = dict(state_dict, **{'AuxLogits.fc.weight': np.zeros((1008, 768), np.float32)})
  with pytest.raises(UserError, match=r'1 tensors the network has no place for, e\.g\. AuxLogits\.fc\.weight'):
    inception.params_from_torch_state_dict(extra)


def _torch_bilinear(x_HW, out):
  """torch's F.interpolate(mode='bilinear', align_corners=False) of one channel, written out."""
  def weights(n_in):
    src = np.maximum((np.arange(out) + 0.5) * n_in / out - 0.5, 0)
    i0 = np.floor(src).astype(int)
    w = np.zeros((out, n_in))
    np.add.at(w, (np.arange(out), i0), 1 - (src - i0))
    np.add.at(w, (np.arange(out), np.minimum(i0 + 1, n_in - 1)), src - i0)
    return w
  return weights(x_HW.shape[0]) @ x_HW @ weights(x_HW.shape[1]).T


@pytest.mark.parametrize('size_in,size_out', [(5, 7), (12, 5), (32, 299)])
def test_preprocess_resizes_as_pytorch_fid(size_in, size_out):
  x = np.random.default_rng(6).integers(0, 256, (1, size_in, size_in, 3), np.uint8)
  got = np.asarray(inception.preprocess(x, size_out))
  want = np.stack([_torch_bilinear(x[0, ..., c] / 255.0, size_out) for c in range(3)], -1) * 2 - 1
  np.testing.assert_allclose(got[0], want, atol=1e-5)


def test_preprocess_scales_uint8_and_float_alike_and_repeats_grayscale():
  gray = np.random.default_rng(7).integers(0, 256, (2, 6, 6, 1), np.uint8)
  from_uint8 = np.asarray(inception.preprocess(gray, 6))
  np.testing.assert_allclose(from_uint8, inception.preprocess(gray / 255.0, 6), atol=1e-6)
  np.testing.assert_allclose(from_uint8, np.repeat(gray, 3, -1) / 127.5 - 1, atol=1e-6)
  with pytest.raises(UserError, match=r'\[B, H, W, 3\] or \[B, H, W, 1\]'):
    inception.preprocess(np.zeros((1, 6, 6, 2), np.uint8))


# ---------------------------------------------------------------- torch checkpoints, without torch

class _Rebuild:
  """Stands for torch._utils._rebuild_tensor_v2 in a pickle."""


class _FloatStorage:
  """Stands for torch.FloatStorage."""


class _LongStorage:
  """Stands for torch.LongStorage."""


_TORCH_NAMES = {_Rebuild: ('torch._utils', '_rebuild_tensor_v2'), _FloatStorage: ('torch', 'FloatStorage'),
                _LongStorage: ('torch', 'LongStorage')}
_STORAGE_TYPE = {np.dtype(np.float32): _FloatStorage, np.dtype(np.int64): _LongStorage}


@dataclasses.dataclass(frozen=True)
class _StorageRef:
  key: str
  data: np.ndarray


@dataclasses.dataclass(frozen=True)
class _TensorRef:
  storage: _StorageRef
  offset: int
  shape: tuple
  stride: tuple

  def __reduce__(self):
    return _Rebuild, (self.storage, self.offset, self.shape, self.stride, False, collections.OrderedDict())


class _TorchPickler(pickle._Pickler):
  """Pickles stand-ins under torch's global names and storages as persistent ids, as torch.save does."""

  def __init__(self, f, legacy: bool):
    super().__init__(f, protocol=2)
    self.legacy = legacy

  def save_global(self, obj, name=None):
    if obj not in _TORCH_NAMES:
      return super().save_global(obj, name)
    module, name = _TORCH_NAMES[obj]
    self.write(pickle.GLOBAL + f'{module}\n{name}\n'.encode())
    self.memoize(obj)

  def persistent_id(self, obj):
    if not isinstance(obj, _StorageRef):
      return None
    pid = ('storage', _STORAGE_TYPE[obj.data.dtype], obj.key, 'cpu', obj.data.size)
    return pid + (None,) if self.legacy else pid


def _dumps(obj, legacy: bool) -> bytes:
  f = io.BytesIO()
  _TorchPickler(f, legacy).dump(obj)
  return f.getvalue()


def _torch_save(tensors: dict[str, _TensorRef], path, legacy: bool) -> None:
  """The two layouts of torch.save: the legacy stream, or the zip archive."""
  storages = {t.storage.key: t.storage.data for t in tensors.values()}
  obj = _dumps(collections.OrderedDict(tensors), legacy)
  if legacy:
    with open(path, 'wb') as f:
      for header in (torch_checkpoint.LEGACY_MAGIC, 1001, {'protocol_version': 1001, 'little_endian': True}):
        pickle.dump(header, f, protocol=2)
      f.write(obj)
      pickle.dump(sorted(storages), f, protocol=2)
      for key in sorted(storages):
        f.write(storages[key].size.to_bytes(8, 'little') + storages[key].tobytes())
    return
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', obj)
    z.writestr('archive/byteorder', 'little')
    z.writestr('archive/version', '3\n')
    for key, data in storages.items():
      z.writestr(f'archive/data/{key}', data.tobytes())


def _contiguous(arrays: dict[str, np.ndarray]) -> dict[str, _TensorRef]:
  """Each array in a storage of its own, as torch.save writes a state dict of contiguous tensors."""
  refs = {}
  for i, (name, a) in enumerate(arrays.items()):
    a = np.ascontiguousarray(a)
    refs[name] = _TensorRef(_StorageRef(str(i), a.ravel()), 0, a.shape, tuple(s // a.itemsize for s in a.strides))
  return refs


@pytest.mark.parametrize('legacy', [True, False], ids=['legacy', 'zip'])
def test_torch_checkpoint_reader_reads_both_formats(tmp_path, legacy):
  shared = _StorageRef('shared', np.arange(6, dtype=np.float32))
  tensors = _contiguous({'conv.weight': np.random.default_rng(8).normal(size=(4, 3, 2, 2)).astype(np.float32),
                         'bn.num_batches_tracked': np.array(7, np.int64)})
  tensors['transposed'] = _TensorRef(shared, 0, (3, 2), (1, 3))  # a view sharing a storage
  tensors['tail'] = _TensorRef(shared, 4, (2,), (1,))
  path = tmp_path / 'w.pth'
  _torch_save(tensors, path, legacy)
  assert zipfile.is_zipfile(path) != legacy
  sd = torch_checkpoint.load_state_dict(str(path))
  assert list(sd) == ['conv.weight', 'bn.num_batches_tracked', 'transposed', 'tail']
  np.testing.assert_array_equal(sd['conv.weight'], tensors['conv.weight'].storage.data.reshape(4, 3, 2, 2))
  assert sd['bn.num_batches_tracked'].dtype == np.int64 and sd['bn.num_batches_tracked'] == 7
  np.testing.assert_array_equal(sd['transposed'], np.arange(6).reshape(2, 3).T)
  np.testing.assert_array_equal(sd['tail'], [4, 5])


def test_torch_checkpoint_reader_runs_no_code_and_names_damage(tmp_path):
  class Evil:
    def __reduce__(self):
      return print, ('this must not run',)
  path = tmp_path / 'evil.pth'
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', pickle.dumps({'w': Evil()}, protocol=2))
  with pytest.raises(UserError, match=r'holds \S*\.print: only state dicts of plain tensors'):
    torch_checkpoint.load_state_dict(str(path))
  short = _contiguous({'w': np.zeros(10, np.float32)})
  _torch_save({'w': _TensorRef(short['w'].storage, 0, (11,), (1,))}, tmp_path / 'short.pth', legacy=False)
  with pytest.raises(UserError, match='too few for a tensor of shape'):
    torch_checkpoint.load_state_dict(str(tmp_path / 'short.pth'))
  (tmp_path / 'junk.pth').write_bytes(b'not a checkpoint')
  with pytest.raises(UserError, match='junk.pth is not a readable PyTorch state dict'):
    torch_checkpoint.load_state_dict(str(tmp_path / 'junk.pth'))


# ---------------------------------------------------------------- finding the weights

def test_load_inception_offline_says_where_to_get_and_put_the_weights(tmp_path, monkeypatch):
  monkeypatch.setattr(inception, 'network_up', lambda host: False)
  with pytest.raises(UserError) as e:
    inception.load_inception('', cache_dir=str(tmp_path))
  for part in (inception.WEIGHTS_FILE, inception.WEIGHTS_URL, '--config.eval.inception_weights=PATH',
               str(tmp_path / inception.WEIGHTS_FILE)):
    assert part in str(e.value)
  with pytest.raises(UserError, match="eval.inception_weights='/nowhere.pth' is not a file"):
    inception.load_inception('/nowhere.pth')


def test_load_inception_downloads_converts_once_and_caches(tmp_path, monkeypatch, state_dict):
  release = tmp_path / 'release.pth'
  _torch_save(_contiguous(state_dict), release, legacy=True)  # as pytorch-fid's file was written
  url = release.as_uri()
  monkeypatch.setattr(inception, 'network_up', lambda host: True)
  monkeypatch.setattr(inception, 'WEIGHTS_URL', url)
  cache = tmp_path / 'cache'
  with pytest.raises(UserError, match='came back with SHA-256'):  # the real file's hash is checked
    inception.load_inception('', cache_dir=str(cache))
  assert list(cache.iterdir()) == []  # not even a part of the download
  monkeypatch.setattr(inception, 'WEIGHTS_SHA256_PREFIX', hashlib.sha256(release.read_bytes()).hexdigest()[:8])
  got = inception.load_inception('', cache_dir=str(cache))
  (cache / inception.WEIGHTS_FILE).unlink()  # the converted .npz alone now serves
  monkeypatch.setattr(inception, 'network_up', lambda host: False)
  cached = inception.load_inception('', cache_dir=str(cache))
  explicit = inception.load_inception(str(release))
  for v in (cached, explicit):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(v)):
      np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(got['params']['fc']['kernel'], state_dict['fc.weight'].T)


# ---------------------------------------------------------------- feature extraction

def test_extract_over_4_devices_equals_a_direct_apply():
  devs = parallel.devices()
  assert len(devs.local) == 4
  params = {'w': np.random.default_rng(9).normal(size=(48, 5)).astype(np.float32)}

  def apply_fn(p, x_BHWC):
    flat = x_BHWC.reshape(x_BHWC.shape[0], -1).astype(np.float32) / 255
    return flat @ p['w'], flat.mean(axis=1)
  images = np.random.default_rng(10).integers(0, 256, (13, 4, 4, 3), np.uint8)
  got = features.extract(apply_fn, params, images, batch_size=8, devs=devs)  # 2 batches, 3 padded
  want = jax.device_get(jax.jit(apply_fn)(params, images))
  assert got[0].shape == (13, 5) and got[1].shape == (13,)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-5)
  with pytest.raises(UserError, match='batch size 6 must be a positive multiple of the 4 local devices'):
    features.extract(apply_fn, params, images, batch_size=6, devs=devs)


# ---------------------------------------------------------------- against pytorch-fid

PYTORCH_FID_REFERENCE = os.path.join(os.path.dirname(__file__), 'data', 'pytorch_fid_reference.npz')
REFERENCE_SIZES = (64, 320)  # images up- and downsampled to 299


def _reference_images(size: int) -> np.ndarray:
  return np.random.default_rng(size).integers(0, 256, (2, size, size, 3), np.uint8)


def pytorch_fid_reference(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """What tests/data/pytorch_fid_reference.npz holds: pytorch-fid's FID Inception with `state_dict`'s weights.

  Its BatchNorm statistics are first replaced by those of one seeded random batch (momentum 1), so
  that the outputs depend on the input ('bn/<key>': the new statistics); then the pool3 features and
  logits ('pool_<size>', 'logits_<size>') of `_reference_images(size)`. Needs torch and pytorch-fid.
  """
  import unittest.mock
  import torch
  from pytorch_fid import inception as pytorch_fid

  def fid_net(sd):
    with unittest.mock.patch.object(pytorch_fid, 'load_state_dict_from_url',
                                    lambda *args, **kwargs: {k: torch.from_numpy(v) for k, v in sd.items()}):
      return pytorch_fid.fid_inception_v3()
  calibrated = fid_net(state_dict)
  for m in calibrated.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      m.momentum = 1.0
  torch.manual_seed(0)
  with torch.no_grad():
    calibrated.train()(torch.rand(8, 3, 299, 299) * 2 - 1)
  ref = {f'bn/{k}': v.numpy() for k, v in calibrated.state_dict().items()
         if k.endswith(('running_mean', 'running_var'))}
  with unittest.mock.patch.object(pytorch_fid, 'fid_inception_v3', lambda: calibrated):
    net = pytorch_fid.InceptionV3([3], use_fid_inception=True).eval()  # resizes to 299, scales to [-1, 1] itself
  for size in REFERENCE_SIZES:
    with torch.no_grad():
      pool_t = net(torch.from_numpy(_reference_images(size)).permute(0, 3, 1, 2).float() / 255)[0].flatten(1)
      ref[f'pool_{size}'], ref[f'logits_{size}'] = pool_t.numpy(), calibrated.fc(pool_t).numpy()
  return ref


def test_matches_pytorch_fid_on_up_and_downsampled_images(state_dict):
  """Pool3 features and logits equal pytorch-fid's (stored: no torch needed) to 1e-4 of their scale."""
  with np.load(PYTORCH_FID_REFERENCE) as f:
    ref = dict(f)
  variables = inception.params_from_torch_state_dict(
      {**state_dict, **{k.removeprefix('bn/'): v for k, v in ref.items() if k.startswith('bn/')}})
  apply = jax.jit(inception.InceptionV3(logits_bias=True).apply)
  for size in REFERENCE_SIZES:
    pool, logits = apply(variables, _reference_images(size))
    pool_ref, logits_ref = ref[f'pool_{size}'], ref[f'logits_{size}']
    assert np.abs(pool_ref[0] - pool_ref[1]).max() > 100 * np.abs(pool - pool_ref).max()  # the inputs matter
    np.testing.assert_allclose(pool, pool_ref, atol=1e-4 * np.abs(pool_ref).max())
    np.testing.assert_allclose(logits, logits_ref, atol=1e-4 * np.abs(logits_ref).max())


def test_the_stored_reference_is_what_pytorch_fid_gives_and_torch_save_files_read_back(tmp_path, state_dict):
  """Where torch and pytorch-fid are installed: the reference file is current, and both torch.save formats load."""
  torch = pytest.importorskip('torch')
  pytest.importorskip('pytorch_fid.inception')
  for legacy in (True, False):
    path = tmp_path / f'{legacy}.pth'
    torch.save({k: torch.from_numpy(v) for k, v in state_dict.items()}, path,
               _use_new_zipfile_serialization=not legacy)
    for k, v in torch_checkpoint.load_state_dict(str(path)).items():
      np.testing.assert_array_equal(v, state_dict[k])
  fresh = pytorch_fid_reference(state_dict)
  with np.load(PYTORCH_FID_REFERENCE) as f:
    assert sorted(f.files) == sorted(fresh)
    for k, v in fresh.items():
      np.testing.assert_allclose(f[k], v, atol=1e-5 * np.abs(v).max(), err_msg=k)


if __name__ == '__main__':
  # Rewrites the stored reference: python -m tests.test_evaluation (with torch and pytorch-fid installed).
  os.makedirs(os.path.dirname(PYTORCH_FID_REFERENCE), exist_ok=True)
  np.savez_compressed(PYTORCH_FID_REFERENCE, **pytorch_fid_reference(random_state_dict()))
