"""Multi-process data: each process reads an equal, disjoint shard of every source and draws its rows from it."""

import numpy as np
import pytest
from PIL import Image

from aigc_jax import data
from aigc_jax.data import images
from aigc_jax.data import shards
from aigc_jax.errors import UserError
from configs import ddpm_digits
from configs import gpt_shakespeare_cpu


def _image_cfg(**kw):
  cfg = ddpm_digits.get_config().data
  for k, v in kw.items():
    cfg[k] = v
  return cfg


def _assert_shards_of(whole, load, count):
  """load(p) is [lo:hi) of `whole` for every process p, all of size len(whole) // count."""
  x_all, y_all = whole
  size = len(x_all) // count
  for p in range(count):
    x, y = load(p)
    assert len(x) == size
    np.testing.assert_array_equal(x, x_all[p * size:(p + 1) * size])
    if y_all is not None:
      np.testing.assert_array_equal(y, y_all[p * size:(p + 1) * size])


def test_bounds_are_equal_contiguous_and_drop_the_remainder():
  assert [shards.bounds(10, p, 3) for p in range(3)] == [(0, 3), (3, 6), (6, 9)]
  assert shards.bounds(10, 0, 1) == (0, 10)


def test_digits_and_npz_shards(tmp_path):
  cfg = _image_cfg()
  _assert_shards_of(images.load(cfg, 'train'), lambda p: images.load(cfg, 'train', p, 3), 3)
  x = np.random.default_rng(0).integers(0, 255, (23, 5, 5), dtype=np.uint8)
  np.savez(tmp_path / 'd.npz', images=x, labels=np.arange(23))
  cfg = _image_cfg(npz_path=str(tmp_path / 'd.npz'), npz_holdout=3, image_size=5)
  _assert_shards_of(images.load(cfg, 'train'), lambda p: images.load(cfg, 'train', p, 2), 2)
  assert len(images.load(cfg, 'train', 1, 2)[0]) == 10


def test_image_folder_shards(tmp_path):
  rng = np.random.default_rng(0)
  for label in ('cat', 'dog'):
    (tmp_path / 'train' / label).mkdir(parents=True)
    for i in range(5):
      Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).save(tmp_path / 'train' / label / f'{i}.png')
  cfg = _image_cfg(image_folder=str(tmp_path), image_size=4, channels=3)
  _assert_shards_of(images.load(cfg, 'train'), lambda p: images.load(cfg, 'train', p, 3), 3)


def test_tfds_shards_through_split_for_jax_process(tmp_path):
  import tensorflow as tf
  import tensorflow_datasets as tfds
  x = np.random.default_rng(0).integers(0, 255, (11, 4, 4, 3), dtype=np.uint8)
  split = tf.data.Dataset.from_tensor_slices({'image': x, 'label': np.arange(11) % 3})
  tfds.dataset_builders.TfDataBuilder(
      name='shard_test_images', version='1.0.0', data_dir=str(tmp_path), split_datasets={'train': split},
      features=tfds.features.FeaturesDict({'image': tfds.features.Image(shape=(4, 4, 3)),
                                           'label': tfds.features.ClassLabel(num_classes=3)})).download_and_prepare()
  cfg = _image_cfg(name='shard_test_images', tfds_data_dir=str(tmp_path), image_size=4, channels=3)
  whole = images.load(cfg, 'train')
  assert len(whole[0]) == 11
  _assert_shards_of(whole, lambda p: images.load(cfg, 'train', p, 2), 2)


def test_text_shards_share_one_vocabulary(tmp_path):
  path = tmp_path / 't.txt'
  path.write_text('the quick brown fox jumps over the lazy dog\n' * 30 + 'zebra!')
  cfg = gpt_shakespeare_cpu.get_config().data
  cfg.text_file, cfg.block_size = str(path), 8
  kw = dict(seed=0, local_devices=1, train=True)
  whole = data.create(cfg, 'train', 4, process_index=0, process_count=1, **kw)
  parts = [data.create(cfg, 'train', 4, process_index=p, process_count=2, **kw) for p in range(2)]
  assert all(part.info == whole.info for part in parts)  # 'z' is only in the last shard, yet in every vocabulary
  _assert_shards_of((whole.tokens, None), lambda p: (parts[p].tokens, None), 2)


def test_single_process_batches_are_unchanged():
  """One process draws what it drew before sharding existed: resumed runs keep their data order."""
  cfg = _image_cfg()
  ds = data.create(cfg, 'train', 8, seed=3, process_index=0, process_count=1, local_devices=4, train=True)
  order = np.random.default_rng([3, 0, 0]).permutation(len(ds.images))
  for step in (0, 5):
    np.testing.assert_array_equal(ds.indices(step), order[step * 8:(step + 1) * 8])
    assert ds.batch(step)['images'].shape == (4, 2, 8, 8, 1)
  starts = data.pipeline.TextBatches(np.arange(100), 8, 10, seed=1, process_index=0, process_count=1,
                                     local_devices=2, shuffle=True, info={}).window_starts(3)
  np.testing.assert_array_equal(starts, np.random.default_rng([1, 2, 3]).integers(0, 90, 8))


def test_processes_draw_their_rows_from_their_own_shards():
  cfg = _image_cfg()
  kw = dict(seed=3, process_count=2, local_devices=2, train=True)
  parts = [data.create(cfg, 'train', 8, process_index=p, **kw) for p in range(2)]
  whole_x, _ = images.load(cfg, 'train')
  for p, part in enumerate(parts):
    lo, _ = shards.bounds(len(whole_x), p, 2)
    b = part.batch(4)
    assert b['images'].shape == (2, 2, 8, 8, 1) and b['labels'].shape == (2, 2)
    expected = whole_x[lo + part.indices(4)].astype(np.float32) / 127.5 - 1.0
    np.testing.assert_array_equal(b['images'].reshape(-1, 8, 8, 1), expected)
    np.testing.assert_array_equal(b['images'], data.create(cfg, 'train', 8, process_index=p, **kw).batch(4)['images'])
  assert not np.array_equal(parts[0].indices(4), parts[1].indices(4))  # each process has its own stream
  evals = [data.create(cfg, 'test', 8, process_index=p, process_count=2, local_devices=2, seed=3, train=False)
           for p in range(2)]
  assert len(evals[0]) == len(evals[1]) == 200 // 2 // 4  # the collective eval steps line up


def test_a_shard_smaller_than_a_window_is_a_clear_error(tmp_path):
  path = tmp_path / 't.txt'
  path.write_text('abcdefghijklmnopqrstuvwxyz' * 2)
  cfg = gpt_shakespeare_cpu.get_config().data
  cfg.text_file, cfg.block_size, cfg.val_fraction = str(path), 8, 0.5
  with pytest.raises(UserError, match=r"split 'validation' \(process 3's shard of 4\) has 6 tokens"):
    data.create(cfg, 'validation', 4, seed=0, process_index=3, process_count=4, local_devices=1, train=False)
