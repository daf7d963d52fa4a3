"""Input pipelines: TFDS (mocked), ImageFolder, digits; shapes, range, determinism, sharding."""

import functools
import logging
import pathlib
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
from tests.conftest import TFDS_PREPARE_STAGES
from tests.conftest import needs_shared_data
from tests.conftest import tfds_prepared_by_another_process_first


def _create(cfg, split='train', batch=8, devices=4, train=True, process_index=0, process_count=1):
  return data.create(cfg, split, batch, seed=3, process_index=process_index,
                     process_count=process_count, local_devices=devices, train=train)


def test_tfds_cifar10_on_mock_data_has_right_shapes_and_range():
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=20):
    ds = _create(ddpm_cifar.get_config().data)
  b = ds.batch(0)['images']
  assert b.shape == (4, 2, 32, 32, 3) and b.dtype == np.float32
  assert -1.0 <= b.min() < 0.0 < b.max() <= 1.0
  assert ds.batch(0)['labels'].shape == (4, 2) and ds.batch(0)['labels'].dtype == np.int32
  np.testing.assert_array_equal(ds.batch(5)['images'], ds.batch(5)['images'])  # random access is deterministic


def test_tfds_missing_offline_is_a_clear_error(monkeypatch, tmp_path):
  monkeypatch.setattr(images, 'network_up', lambda: False)
  cfg = ddpm_cifar.get_config().data
  cfg.tfds_data_dir = str(tmp_path)
  with pytest.raises(UserError, match=r"not prepared in .* no network .*tfds build cifar10.*data.image_folder"):
    images.load(cfg, 'train')


@functools.cache
def _tfds_images_preparable_offline() -> str:
  """The name of a TFDS image data set that prepares without a download: 6 generated 8x8 images."""
  import tensorflow_datasets as tfds

  class AigcJaxTestImages(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(8, 8, 1)), 'label': tfds.features.ClassLabel(num_classes=2)}))

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples()}

    def _generate_examples(self):
      for i in range(6):
        yield i, {'image': np.full((8, 8, 1), 40 * i, np.uint8), 'label': i % 2}

  return AigcJaxTestImages.name


def test_tfds_images_prepared_by_two_processes_at_once(monkeypatch, tmp_path):
  """Another process (of the same run, or a sweep's trial) downloads and prepares the same data
  set and finishes first: before this one starts writing, or while it writes (then TFDS cannot
  put this one's copy in place). Either way this one reads the other's copy."""
  monkeypatch.setattr(images, 'network_up', lambda: True)
  cfg = ddpm_digits.get_config().data
  cfg.name = _tfds_images_preparable_offline()
  for stage in TFDS_PREPARE_STAGES:
    cfg.tfds_data_dir = str(tmp_path / stage)
    with tfds_prepared_by_another_process_first(stage, cfg.name, cfg.tfds_data_dir) as other:
      x, y = images.load(cfg, 'train')
    assert other, stage
    assert sorted(x[:, 0, 0, 0]) == [0, 40, 80, 120, 160, 200] and sorted(y) == [0, 0, 0, 1, 1, 1], stage


def test_unknown_tfds_name_is_a_clear_error():
  cfg = ddpm_cifar.get_config().data
  cfg.name = 'no_such_dataset_xyz'
  with pytest.raises(UserError, match='neither a TFDS data set'):
    images.load(cfg, 'train')


def test_digits_are_real_and_split():
  cfg = ddpm_digits.get_config().data
  (train, train_y), (test, test_y) = images.load(cfg, 'train'), images.load(cfg, 'test')
  assert train.shape == (1597, 8, 8, 1) and test.shape == (images.DIGITS_TEST, 8, 8, 1)
  assert train.dtype == np.uint8 and train.max() == 255 and train.min() == 0
  assert train_y.shape == (1597,) and set(test_y) == set(range(10))


def _npz_cfg(path, holdout=3, size=5):
  cfg = ddpm_digits.get_config().data
  cfg.npz_path, cfg.npz_holdout, cfg.image_size = str(path), holdout, size
  return cfg


def test_npz_source_splits_by_holdout_and_keeps_labels(tmp_path):
  x = np.arange(10 * 25, dtype=np.uint8).reshape(10, 5, 5)
  np.savez(tmp_path / 'd.npz', images=x, labels=np.arange(10))
  train, train_y = images.load(_npz_cfg(tmp_path / 'd.npz'), 'train')
  test, test_y = images.load(_npz_cfg(tmp_path / 'd.npz'), 'test')
  np.testing.assert_array_equal(np.concatenate([train, test])[..., 0], x)
  assert train_y.tolist() == list(range(7)) and test_y.tolist() == [7, 8, 9]
  ds = _create(_npz_cfg(tmp_path / 'd.npz'), batch=4, devices=2)
  b = ds.batch(1)
  np.testing.assert_array_equal(np.round((b['images'].reshape(4, 25) + 1.0) * 127.5),
                                x.reshape(10, 25)[b['labels'].reshape(4)])


def test_npz_source_errors_say_what_to_fix(tmp_path):
  np.savez(tmp_path / 'd.npz', images=np.zeros((10, 5, 5), np.uint8))
  assert images.load(_npz_cfg(tmp_path / 'd.npz'), 'test')[1] is None
  with pytest.raises(UserError, match=r'held-out count must be in 1\.\.9, not 0'):
    images.load(_npz_cfg(tmp_path / 'd.npz', holdout=0), 'train')
  with pytest.raises(UserError, match='does not exist'):
    images.load(_npz_cfg(tmp_path / 'missing.npz'), 'train')
  np.savez(tmp_path / 'f.npz', images=np.zeros((10, 5, 5), np.float32))
  with pytest.raises(UserError, match='must be uint8'):
    images.load(_npz_cfg(tmp_path / 'f.npz'), 'train')


def test_binarize_maps_pixels_to_0_or_255(tmp_path):
  np.savez(tmp_path / 'd.npz', images=np.arange(250, dtype=np.uint8).reshape(10, 5, 5))
  cfg = _npz_cfg(tmp_path / 'd.npz')
  cfg.binarize = 0.5
  x, _ = images.load(cfg, 'train')
  assert set(np.unique(x)) == {0, 255} and (x == 255).sum() == ((np.arange(175) >= 127.5).sum())


def test_pad_surrounds_images_with_zeros(tmp_path):
  x = np.arange(1, 251, dtype=np.uint8).reshape(10, 5, 5)
  np.savez(tmp_path / 'd.npz', images=x)
  cfg = _npz_cfg(tmp_path / 'd.npz', size=9)
  cfg.pad = 2
  padded, _ = images.load(cfg, 'train')
  assert padded.shape == (7, 9, 9, 1)
  np.testing.assert_array_equal(padded[:, 2:-2, 2:-2, 0], x[:7])
  assert padded.sum() == x[:7].astype(int).sum()  # the border is all zeros
  cfg.image_size = 5
  with pytest.raises(UserError, match=r'padded by data.pad=2 has images of shape \(9, 9, 1\)'):
    images.load(cfg, 'train')
  cfg.pad = -1
  with pytest.raises(UserError, match='data.pad=-1 must be >= 0'):
    images.load(cfg, 'train')


def test_idx_files_convert_to_the_npz_source(tmp_path):
  import gzip
  from aigc_jax.data import idx
  x = np.random.default_rng(0).integers(0, 255, (6, 4, 3), dtype=np.uint8)
  with gzip.open(tmp_path / 'x.gz', 'wb') as f:
    f.write(bytes([0, 0, 8, 3]) + np.array(x.shape, '>i4').tobytes() + x.tobytes())
  with open(tmp_path / 'y', 'wb') as f:
    f.write(bytes([0, 0, 8, 1]) + np.array([6], '>i4').tobytes() + bytes(range(6)))
  assert idx.to_npz(str(tmp_path / 'x.gz'), str(tmp_path / 'y'), str(tmp_path / 'o.npz')) == (6, 4, 3, 1)
  with np.load(tmp_path / 'o.npz') as f:
    np.testing.assert_array_equal(f['images'][..., 0], x)
    assert f['labels'].tolist() == list(range(6))
  (tmp_path / 'bad').write_bytes(b'\x1f\x8b junk')
  with pytest.raises(UserError, match='not a uint8 idx file'):
    idx.read(str(tmp_path / 'bad'))


def test_real_mnist_test_digits_convert(tmp_path):
  from aigc_jax.data import idx
  images_gz = needs_shared_data('mnist_t10k-images-idx3-ubyte.gz')
  labels_gz = needs_shared_data('mnist_t10k-labels-idx1-ubyte.gz')
  idx.to_npz(str(images_gz), str(labels_gz), str(tmp_path / 'mnist.npz'))
  cfg = _npz_cfg(tmp_path / 'mnist.npz', holdout=2000, size=28)
  (train, train_y), (test, _) = images.load(cfg, 'train'), images.load(cfg, 'test')
  assert train.shape == (8000, 28, 28, 1) and test.shape == (2000, 28, 28, 1)
  assert 0.12 < train.mean() / 255 < 0.14 and np.bincount(train_y).min() > 700  # MNIST's mean ink ~0.13


def test_epoch_visits_every_example_once_and_epochs_differ():
  x = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
  ds = ImageBatches(x, 5, seed=0, process_index=0, process_count=1, local_devices=1)
  first = np.concatenate([ds.indices(s) for s in range(2)])
  second = np.concatenate([ds.indices(s) for s in range(2, 4)])
  assert sorted(first) == list(range(10)) and sorted(second) == list(range(10))
  assert list(first) != list(second)


def test_flip_only_in_training(tmp_path):
  """data.random_flip mirrors about half the training images left-right, and no held-out image."""
  x_NHWC = np.random.default_rng(0).integers(0, 255, (32, 4, 4, 3), dtype=np.uint8)
  np.savez(tmp_path / 'x.npz', images=x_NHWC)
  cfg = ddpm_cifar.get_config().data
  cfg.npz_path, cfg.npz_holdout, cfg.image_size, cfg.random_flip = str(tmp_path / 'x.npz'), 16, 4, True

  def pixels(batch):
    return np.round((batch['images'][0] + 1) * 127.5).astype(np.uint8)  # [-1, 1] back to 0..255

  held_out = pixels(_create(cfg, 'test', batch=16, devices=1, train=False).batch(0))
  np.testing.assert_array_equal(held_out, x_NHWC[16:])
  trained = pixels(_create(cfg, batch=16, devices=1).batch(0))
  originals = {a.tobytes() for a in x_NHWC[:16]}
  mirrored = [a[:, ::-1].tobytes() in originals and a.tobytes() not in originals for a in trained]
  assert all(m or a.tobytes() in originals for m, a in zip(mirrored, trained)) and 0 < sum(mirrored) < 16


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
  x, y = images.load(cfg, 'train')
  assert x.shape == (12, 32, 32, 3) and sorted(y) == [0] * 6 + [1] * 6
  assert images.load(cfg, 'test')[0].shape == (4, 32, 32, 3)
  cfg.image_size = 16
  with pytest.raises(UserError, match='data.image_size=16'):
    images.load(cfg, 'test')
  with pytest.raises(UserError, match="no 'validation' folder"):
    images.load(cfg, 'validation')


def _write_folder(root: pathlib.Path, images_NHWC: np.ndarray, labels_N: np.ndarray) -> None:
  """<root>/train/<label>/<i>.png for each image (2-D arrays for grayscale files), losslessly."""
  for i, (image, label) in enumerate(zip(images_NHWC, labels_N)):
    (root / 'train' / str(label)).mkdir(parents=True, exist_ok=True)
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(root / 'train' / str(label) / f'{i}.png')


def _by_pixels(images_NHWC: np.ndarray, labels_N: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The images and their labels in the order of their pixel bytes: folder order aside, the same data."""
  order = sorted(range(len(images_NHWC)), key=lambda i: images_NHWC[i].tobytes())
  return images_NHWC[order], np.asarray(labels_N)[order]


def test_image_folder_decodes_files_to_data_channels(tmp_path):
  rng = np.random.default_rng(0)
  gray, rgb = rng.integers(0, 256, (6, 8, 8, 1), dtype=np.uint8), rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
  labels = np.arange(6) % 2
  _write_folder(tmp_path / 'gray', gray, labels)
  _write_folder(tmp_path / 'rgb', rgb, labels)
  cfg = ddpm_digits.get_config().data
  cfg.image_size, cfg.channels, cfg.image_folder = 8, 1, str(tmp_path / 'gray')
  x, y = _by_pixels(*images.load(cfg, 'train'))
  want_x, want_y = _by_pixels(gray, labels)
  assert x.shape == (6, 8, 8, 1)
  np.testing.assert_array_equal(x, want_x)
  np.testing.assert_array_equal(y, want_y)
  cfg.channels = 3
  np.testing.assert_array_equal(_by_pixels(*images.load(cfg, 'train'))[0], np.repeat(want_x, 3, axis=-1))
  cfg.image_folder = str(tmp_path / 'rgb')
  x, y = _by_pixels(*images.load(cfg, 'train'))
  want_x, want_y = _by_pixels(rgb, labels)
  np.testing.assert_array_equal(x, want_x)
  np.testing.assert_array_equal(y, want_y)
  cfg.channels = 2
  with pytest.raises(UserError, match=r'data.channels=2: .*set data.channels to one of those'):
    images.load(cfg, 'train')


def test_undecodable_images_in_a_folder_are_skipped_counted_and_named(tmp_path, caplog):
  rng = np.random.default_rng(0)
  folder = tmp_path / 'train' / 'digit'
  folder.mkdir(parents=True)
  for i in range(6):
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f'{i}.jpg')
  whole = (folder / '0.jpg').read_bytes()
  (folder / 'cut.jpg').write_bytes(whole[:len(whole) // 2])  # a download cut short
  (folder / 'text.png').write_bytes(b'not an image')
  (folder / 'empty.jpg').write_bytes(b'')
  cfg = ddpm_cifar.get_config().data
  cfg.image_folder = str(tmp_path)
  with caplog.at_level(logging.WARNING):
    x, y = images.load(cfg, 'train')
  assert x.shape == (6, 32, 32, 3) and len(y) == 6
  warnings = [r.getMessage() for r in caplog.records if 'skipped' in r.getMessage()]
  assert len(warnings) == 1
  assert f"skipped 3 of the 9 'train' images, which do not decode: {folder}/cut.jpg, {folder}/empty.jpg, " \
         f'{folder}/text.png' in warnings[0]


@pytest.mark.slow
def test_real_cifar10_jpegs_through_image_folder(tmp_path):
  archive = needs_shared_data('cifar10_jpeg.tar.gz')
  with tarfile.open(archive) as tar:
    tar.extractall(tmp_path, filter='data')
  cfg = ddpm_cifar.get_config().data
  cfg.image_folder = str(tmp_path)
  test, labels = images.load(cfg, 'test')
  assert test.shape == (10_000, 32, 32, 3) and np.bincount(labels).tolist() == [1000] * 10
  mean = test.reshape(-1, 3).mean(0) / 255.0
  np.testing.assert_allclose(mean, [0.4942, 0.4851, 0.4504], atol=0.01)  # CIFAR-10 test-set channel means
