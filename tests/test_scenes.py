"""MNIST pairs follow their grammar exactly, and captioned sources load as tokens with padding masks."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from aigc_jax.data import captions
from aigc_jax.data import scenes
from aigc_jax.data import tokenizers
from aigc_jax.errors import UserError
from configs import default


def _stroke(value: int) -> np.ndarray:
  """A 28x28 'digit': a vertical bar of `value` in columns 10..17, black elsewhere."""
  x = np.zeros((28, 28), np.uint8)
  x[4:24, 10:18] = value
  return x


def test_a_scene_is_two_resized_digits_in_their_colours_at_their_cells():
  left, right = _stroke(255), np.full((28, 28), 200, np.uint8)
  x = scenes.render(left, 'yellow', right, 'cyan')
  assert x.shape == (32, 32, 3) and x.dtype == np.uint8
  want_left = np.asarray(Image.fromarray(left).resize((16, 16), Image.BILINEAR))
  np.testing.assert_array_equal(x[8:24, 0:16, 0], want_left)   # yellow = red + green
  np.testing.assert_array_equal(x[8:24, 0:16, 1], want_left)
  np.testing.assert_array_equal(x[8:24, 0:16, 2], 0)
  np.testing.assert_array_equal(x[8:24, 16:32], np.array([0, 200, 200]) + np.zeros((16, 16, 3)))  # cyan
  np.testing.assert_array_equal(x[:8], 0)
  np.testing.assert_array_equal(x[24:], 0)
  assert want_left.max() == 255 and want_left[:, :4].max() == 0  # the bar stays in the cell's middle

  scene = ('red', 3, 'green', 7)
  assert scenes.caption(scene, from_right=False) == 'red 3 left of green 7'
  assert scenes.caption(scene, from_right=True) == 'green 7 right of red 3'
  assert scenes.parse('red 3 left of green 7') == scenes.parse('green 7 right of red 3') == scene
  assert scenes.parse('green 7 left of red 3') == ('green', 7, 'red', 3)
  assert scenes.parse('a photo of a cat') is None
  assert [d for d in range(10) if scenes.held_out('red', d)] == [0, 7]
  assert [d for d in range(10) if scenes.held_out('white', d)] == [1, 8]


@pytest.fixture(scope='module')
def benchmark(tmp_path_factory):
  """The benchmark from a fake t10k: the first 8,000 digits bars of value 100, the last 2,000 of value 200."""
  out = str(tmp_path_factory.mktemp('scenes'))
  digits = np.stack([_stroke(100)] * 8000 + [_stroke(200)] * 2000)
  labels = np.arange(10000) % 10
  scenes.generate(digits, labels, out, train=300, test=200, seed=0)
  return out


def _rows(out, split):
  with open(os.path.join(out, split, 'metadata.jsonl')) as f:
    return [json.loads(line) for line in f]


def test_held_out_pairs_never_appear_in_training_and_splits_draw_from_their_own_digits(benchmark):
  train, test = _rows(benchmark, 'train'), _rows(benchmark, 'test')
  assert len(train) == 300 and len(test) == 200
  train_scenes = [scenes.parse(r['text']) for r in train]
  assert not any(scenes.has_held_out_pair(s) for s in train_scenes)
  assert sum(scenes.has_held_out_pair(scenes.parse(r['text'])) for r in test) == 100
  phrasings = [' right of ' in r['text'] for r in train]
  assert 100 < sum(phrasings) < 200  # both phrasings, about half each
  for split, value, rows in (('train', 100, train[:20]), ('test', 200, test[:20])):
    for r in rows:
      x = np.asarray(Image.open(os.path.join(benchmark, split, r['file_name'])))
      c1, _, c2, _ = scenes.parse(r['text'])
      assert set(np.unique(x[8:24, :16])) <= {0, value} | set(np.unique(scenes.cell(_stroke(value))))
      np.testing.assert_array_equal(x, scenes.render(_stroke(value), c1, _stroke(value), c2))
  with np.load(os.path.join(benchmark, 'cells.npz')) as f:
    assert f['images'].shape == (10000, 16, 16, 1) and list(f['labels'][:3]) == [0, 1, 2]


def _caption_config(**values):
  return default.captioned_data(name='none', image_size=32, channels=3, caption_length=32, **values)


def _check_batch(batch, texts, tokenizer, per_device):
  tokens, mask = batch['captions'], batch['caption_mask']
  assert batch['images'].shape == (2, per_device, 32, 32, 3) and tokens.shape == mask.shape == (2, per_device, 32)
  for t, m in zip(tokens.reshape(-1, 32), mask.reshape(-1, 32)):
    assert t[0] == tokenizer.vocab_size and m[0]  # the start token, never masked
    n = int(m.sum())
    assert m[:n].all() and not m[n:].any() and not t[n:].any()
    assert tokenizer.decode(t[1:n]) in texts


def test_captioned_sources_give_tokens_and_padding_masks(benchmark, tmp_path):
  cfg = _caption_config(image_folder=benchmark)
  ds = captions.create(cfg, 'test', 8, seed=0, process_index=0, process_count=1, local_devices=2, train=True)
  texts = [r['text'] for r in _rows(benchmark, 'test')]
  tokenizer = tokenizers.from_info(ds.info)
  assert set(tokenizer.vocab) == set(''.join(r['text'] for r in _rows(benchmark, 'train')))  # training captions'
  _check_batch(ds.batch(3), texts, tokenizer, 4)
  idx = ds.indices(3)
  np.testing.assert_array_equal(ds.batch(3)['images'].reshape(8, 32, 32, 3),
                                ds.images[idx].astype(np.float32) / 127.5 - 1.0)
  assert [tokenizer.decode(t[1:m.sum()]) for t, m in zip(ds.tokens_NT[idx], ds.mask_NT[idx])] == [texts[i] for i in idx]

  x = np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), np.uint8)
  words = [f'a photo of a {c}' for c in ('cat', 'dog', 'ship')] * 4
  np.savez(tmp_path / 'c.npz', images=x, captions=np.array(words))
  cfg = _caption_config(npz_path=str(tmp_path / 'c.npz'), npz_holdout=4, tokenizer='byte')
  ds = captions.create(cfg, 'train', 4, seed=0, process_index=0, process_count=1, local_devices=2, train=False)
  assert len(ds.images) == 8
  _check_batch(ds.batch(0), words, tokenizers.ByteTokenizer(), 2)
  np.testing.assert_array_equal(ds.batch(0)['images'].reshape(4, 32, 32, 3), x[:4].astype(np.float32) / 127.5 - 1.0)

  with pytest.raises(UserError, match=r"'a photo of a cat' has 16 tokens, more than data.caption_length - 1 = 9"):
    captions.encode(tokenizers.ByteTokenizer(), words, 10)
  with pytest.raises(UserError, match=r'has no train/metadata.jsonl'):
    captions.load(_caption_config(image_folder=str(tmp_path)), 'train')


def test_caption_accuracy_reads_digits_and_colours_back_by_the_grammar():
  from aigc_jax.evaluation import captions as caption_eval
  templates = [np.zeros((28, 28), np.uint8) for _ in range(10)]
  for d, t in enumerate(templates):  # digit d: a bar at its own height
    t[2 * d + 2:2 * d + 8, 4:24] = 255
  cells = np.stack([scenes.cell(t) for t in templates]).astype(np.float32)

  def classify(gray_N16161):  # the oracle: the nearest template
    return np.argmin(((gray_N16161[..., 0][:, None].astype(np.float32) - cells[None]) ** 2).sum((2, 3)), axis=1)

  drawn = [('red', 3, 'green', 7), ('white', 1, 'cyan', 4), ('magenta', 9, 'blue', 0), ('yellow', 5, 'red', 0)]
  images = np.stack([scenes.render(templates[d1], c1, templates[d2], c2) for c1, d1, c2, d2 in drawn])
  assert caption_eval.read(images, classify) == drawn
  prompts = ['green 7 right of red 3', 'white 1 left of cyan 4',  # right, seen; right, held-out (white 1)
             'magenta 9 left of green 0', 'red 0 right of yellow 5']  # wrong colour; right, held-out (red 0)
  got = caption_eval.accuracy(images, prompts + [], classify)
  assert got['caption_accuracy'] == 0.75 and got['colour_accuracy'] == 7 / 8 and got['digit_accuracy'] == 1.0
  assert got['caption_accuracy_seen'] == 0.5 and got['caption_accuracy_held_out'] == 1.0
  assert caption_eval.accuracy(images, ['a photo of a cat'] * 4, classify) == {}
