"""Input pipelines: TFDS (mocked), ImageFolder, digits; shapes, range, determinism, sharding."""

import tarfile

import numpy as np
import pytest
from PIL import Image

from aigc_jax import data
from aigc_jax.data import images
from aigc_jax.data.pipeline import ImageBatches
from aigc_jax.errors import UserError
from configs import ddpm_cifar
from configs import ddpm_digits
from tests.conftest import needs_shared_data


def _create(cfg, split='train', batch=8, devices=4, train=True, process_index=0, process_count=1):
  return data.create(cfg, split, batch, seed=3, process_index=process_index,
                     process_count=process_count, local_devices=devices, train=train)


def test_tfds_cifar10_on_mock_data_has_right_shapes_and_range():
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=20):
    ds = _create(ddpm_cifar.get_config().data)
  b = ds.batch(0)['image']
  assert b.shape == (4, 2, 32, 32, 3) and b.dtype == np.float32
  assert -1.0 <= b.min() < 0.0 < b.max() <= 1.0
  np.testing.assert_array_equal(ds.batch(5)['image'], ds.batch(5)['image'])  # random access is deterministic


def test_tfds_missing_offline_is_a_clear_error(monkeypatch, tmp_path):
  monkeypatch.setattr(images, 'network_up', lambda: False)
  cfg = ddpm_cifar.get_config().data
  cfg.tfds_data_dir = str(tmp_path)
  with pytest.raises(UserError, match=r"not prepared in .* no network .*tfds build cifar10.*data.image_folder"):
    images.load(cfg, 'train')


def test_unknown_tfds_name_is_a_clear_error():
  cfg = ddpm_cifar.get_config().data
  cfg.name = 'no_such_dataset_xyz'
  with pytest.raises(UserError, match='neither a TFDS data set'):
    images.load(cfg, 'train')


def test_digits_are_real_and_split():
  cfg = ddpm_digits.get_config().data
  train, test = images.load(cfg, 'train'), images.load(cfg, 'test')
  assert train.shape == (1597, 8, 8, 1) and test.shape == (images.DIGITS_TEST, 8, 8, 1)
  assert train.dtype == np.uint8 and train.max() == 255 and train.min() == 0


def test_epoch_visits_every_example_once_and_epochs_differ():
  x = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
  ds = ImageBatches(x, 5, seed=0, process_index=0, process_count=1, local_devices=1)
  first = np.concatenate([ds.global_indices(s) for s in range(2)])
  second = np.concatenate([ds.global_indices(s) for s in range(2, 4)])
  assert sorted(first) == list(range(10)) and sorted(second) == list(range(10))
  assert list(first) != list(second)


def test_processes_share_one_global_batch():
  x = np.random.default_rng(0).integers(0, 255, (40, 4, 4, 3), dtype=np.uint8)
  kw = dict(seed=1, local_devices=2, random_flip=True)
  whole = ImageBatches(x, 8, process_index=0, process_count=1, **kw).batch(7)['image']
  parts = [ImageBatches(x, 8, process_index=p, process_count=2, **kw).batch(7)['image'] for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([p.reshape(-1, 4, 4, 3) for p in parts]),
                                whole.reshape(-1, 4, 4, 3))


def test_flip_only_in_training():
  x = np.random.default_rng(0).integers(0, 255, (16, 4, 4, 3), dtype=np.uint8)
  kw = dict(seed=0, process_index=0, process_count=1, local_devices=1, shuffle=False)
  plain = ImageBatches(x, 16, **kw).batch(0)['image'][0]
  flipped = ImageBatches(x, 16, random_flip=True, **kw).batch(0)['image'][0]
  same = [np.array_equal(a, b) for a, b in zip(plain, flipped)]
  mirrored = [np.array_equal(a[:, ::-1], b) for a, b in zip(plain, flipped)]
  assert all(s or m for s, m in zip(same, mirrored)) and 0 < sum(mirrored) < 16


def test_image_folder_source(tmp_path):
  rng = np.random.default_rng(0)
  for split, n in (('train', 6), ('test', 2)):
    for label in ('cat', 'dog'):
      (tmp_path / split / label).mkdir(parents=True)
      for i in range(n):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
            tmp_path / split / label / f'{i}.png')
  cfg = ddpm_cifar.get_config().data
  cfg.image_folder = str(tmp_path)
  assert images.load(cfg, 'train').shape == (12, 32, 32, 3)
  assert images.load(cfg, 'test').shape == (4, 32, 32, 3)
  cfg.image_size = 16
  with pytest.raises(UserError, match='data.image_size=16'):
    images.load(cfg, 'test')
  with pytest.raises(UserError, match="no 'validation' folder"):
    images.load(cfg, 'validation')


@pytest.mark.slow
def test_real_cifar10_jpegs_through_image_folder(tmp_path):
  archive = needs_shared_data('cifar10_jpeg.tar.gz')
  with tarfile.open(archive) as tar:
    tar.extractall(tmp_path, filter='data')
  cfg = ddpm_cifar.get_config().data
  cfg.image_folder = str(tmp_path)
  test = images.load(cfg, 'test')
  assert test.shape == (10_000, 32, 32, 3)
  mean = test.reshape(-1, 3).mean(0) / 255.0
  np.testing.assert_allclose(mean, [0.4942, 0.4851, 0.4504], atol=0.01)  # CIFAR-10 test-set channel means
