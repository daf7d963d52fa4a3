"""MNIST pairs: a captioned text-to-image benchmark built offline from the MNIST idx files.

    python -m aigc_jax.data.scenes --images=../shared/data/mnist_t10k-images-idx3-ubyte.gz \
        --labels=../shared/data/mnist_t10k-labels-idx1-ubyte.gz --out=DIR [--train=50000 --test=5000 --seed=0]

writes DIR/train/ and DIR/test/ in the imagefolder layout (PNGs and a metadata.jsonl of
{"file_name": <relative to that folder>, "text": <caption>} rows), plus DIR/cells.npz: the
10,000 digits as the scenes draw them (16x16, gray) with their labels, its first 8,000 the
digits of the training scenes, and DIR/test_prompts.txt: up to 500 test captions of seen pairs, then up
to 500 with a held-out pair (`--config.sample.prompts_file` of a caption-accuracy eval); the cells for the cell classifier that reads scenes back
(`python -m aigc_jax.evaluation.feature_net --dataset=mnist_cells`). The grammar is fixed,
because evaluation reads images back by it:

  - a black 32x32 RGB canvas with two MNIST digits, each resized from 28x28 to 16x16 (PIL
    bilinear) and multiplied by a colour, at rows 8..23: the left one in columns 0..15, the
    right one in columns 16..31;
  - colours (pure RGB): red, green, blue, yellow, magenta, cyan, white;
  - caption "{c1} {d1} left of {c2} {d2}" or, the same scene named from the other side,
    "{c2} {d2} right of {c1} {d1}", half each at random;
  - training scenes take their digits from the first 8,000 MNIST t10k images, test scenes from the last 2,000;
  - held-out pairs: a (colour, digit) pair with (index of the colour + digit) % 7 == 0 never appears in
    a training scene, in either position. Half the test scenes hold at least one held-out pair, the
    other half none, so that accuracy on seen and on held-out pairs are both measured.

In each scene the two (colour, digit) pairs are drawn uniformly from those allowed, and each digit's
image uniformly from the pool's images of that digit.
"""

import json
import os
import re

import numpy as np
from absl import app
from absl import flags
from PIL import Image

from aigc_jax.data import idx
from aigc_jax.errors import UserError

COLOURS = ('red', 'green', 'blue', 'yellow', 'magenta', 'cyan', 'white')
RGB = {'red': (1, 0, 0), 'green': (0, 1, 0), 'blue': (0, 0, 1), 'yellow': (1, 1, 0), 'magenta': (1, 0, 1),
       'cyan': (0, 1, 1), 'white': (1, 1, 1)}
SIZE, CELL, TOP = 32, 16, 8  # canvas side; a digit's side; its first row
TRAIN_POOL = 8000            # the first 8,000 t10k digits serve the training scenes, the rest the test scenes
EVAL_PROMPTS = 500           # test captions of seen pairs, and of held-out pairs, in test_prompts.txt
CAPTION = re.compile(r'^(\w+) (\d) (left|right) of (\w+) (\d)$')

Pair = tuple[str, int]               # (colour, digit)
Scene = tuple[str, int, str, int]    # (left colour, left digit, right colour, right digit)


def held_out(colour: str, digit: int) -> bool:
  """Whether (colour, digit) is a held-out pair: (index of the colour + digit) % 7 == 0."""
  return (COLOURS.index(colour) + digit) % 7 == 0


def cell(digit_28x28: np.ndarray) -> np.ndarray:
  """A 28x28 uint8 digit as the scenes draw it: 16x16, PIL bilinear."""
  return np.asarray(Image.fromarray(digit_28x28).resize((CELL, CELL), Image.BILINEAR))


def render(left_28x28: np.ndarray, left_colour: str, right_28x28: np.ndarray, right_colour: str) -> np.ndarray:
  """The uint8 [32, 32, 3] scene of two digits (28x28 uint8) in their colours."""
  canvas = np.zeros((SIZE, SIZE, 3), np.uint8)
  for col, digit, colour in ((0, left_28x28, left_colour), (CELL, right_28x28, right_colour)):
    canvas[TOP:TOP + CELL, col:col + CELL] = cell(digit)[..., None] * np.asarray(RGB[colour], np.uint8)
  return canvas


def caption(scene: Scene, from_right: bool) -> str:
  """The scene's caption, named from the left digit or (`from_right`) from the right one."""
  c1, d1, c2, d2 = scene
  return f'{c2} {d2} right of {c1} {d1}' if from_right else f'{c1} {d1} left of {c2} {d2}'


def parse(text: str) -> Scene | None:
  """The scene a caption describes as (left colour, left digit, right colour, right digit); None if not one."""
  m = CAPTION.match(text.strip())
  if not m or m[1] not in RGB or m[4] not in RGB:
    return None
  a, b = (m[1], int(m[2])), (m[4], int(m[5]))
  (c1, d1), (c2, d2) = (a, b) if m[3] == 'left' else (b, a)
  return c1, d1, c2, d2


def has_held_out_pair(scene: Scene) -> bool:
  return held_out(scene[0], scene[1]) or held_out(scene[2], scene[3])


def _scenes(rng: np.random.Generator, n: int, held_out_share: float) -> list[Scene]:
  """`n` scenes: a share `held_out_share` with at least one held-out pair, the rest with none."""
  pairs = [(c, d) for c in COLOURS for d in range(10)]
  seen = [p for p in pairs if not held_out(*p)]
  with_held_out = [(a, b) for a in pairs for b in pairs if held_out(*a) or held_out(*b)]
  out = []
  for i in range(n):
    if i < round(n * held_out_share):
      a, b = with_held_out[rng.integers(len(with_held_out))]
    else:
      a, b = seen[rng.integers(len(seen))], seen[rng.integers(len(seen))]
    out.append((a[0], a[1], b[0], b[1]))
  return [out[i] for i in rng.permutation(n)]


def _write_split(folder: str, scenes: list[Scene], digits: np.ndarray, labels: np.ndarray,
                 rng: np.random.Generator) -> list[str]:
  os.makedirs(folder, exist_ok=True)
  by_digit = {d: np.flatnonzero(labels == d) for d in range(10)}
  rows = []
  for i, scene in enumerate(scenes):
    c1, d1, c2, d2 = scene
    left, right = digits[rng.choice(by_digit[d1])], digits[rng.choice(by_digit[d2])]
    name = f'{i:05d}.png'
    Image.fromarray(render(left, c1, right, c2)).save(os.path.join(folder, name))
    rows.append({'file_name': name, 'text': caption(scene, from_right=bool(rng.random() < 0.5))})
  with open(os.path.join(folder, 'metadata.jsonl.tmp'), 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in rows)
  os.replace(os.path.join(folder, 'metadata.jsonl.tmp'), os.path.join(folder, 'metadata.jsonl'))
  return [r['text'] for r in rows]


def generate(digits: np.ndarray, labels: np.ndarray, out: str, train: int, test: int, seed: int) -> None:
  """Writes the benchmark from the 10,000 t10k digits [N, 28, 28] and their labels into `out`."""
  if digits.shape[1:] != (28, 28) or len(digits) <= TRAIN_POOL or labels.shape != digits.shape[:1]:
    raise UserError(f'MNIST pairs are built from the 10,000 MNIST t10k digits [N, 28, 28] with their labels, not '
                    f'images {list(digits.shape)} and labels {list(labels.shape)}')
  rng = np.random.default_rng(seed)
  _write_split(os.path.join(out, 'train'), _scenes(rng, train, 0.0), digits[:TRAIN_POOL], labels[:TRAIN_POOL], rng)
  texts = _write_split(os.path.join(out, 'test'), _scenes(rng, test, 0.5), digits[TRAIN_POOL:],
                       labels[TRAIN_POOL:], rng)
  seen = [t for t in texts if not has_held_out_pair(parse(t))][:EVAL_PROMPTS]
  unseen = [t for t in texts if has_held_out_pair(parse(t))][:EVAL_PROMPTS]
  with open(os.path.join(out, 'test_prompts.txt'), 'w') as f:
    f.writelines(t + '\n' for t in seen + unseen)
  cells = np.stack([cell(d) for d in digits])[..., None]
  np.savez(os.path.join(out, 'cells.npz'), images=cells, labels=labels.astype(np.int32))


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  try:
    generate(idx.read(f.images), idx.read(f.labels), f.out, f.train, f.test, f.seed)
  except UserError as e:
    raise SystemExit(f'error: {e}') from None
  print(f'wrote {f.train} training and {f.test} test scenes to {f.out}/train and {f.out}/test, '
        f'and the digits as cells to {f.out}/cells.npz')


if __name__ == '__main__':
  flags.DEFINE_string('images', None, 'MNIST t10k images idx file', required=True)
  flags.DEFINE_string('labels', None, 'MNIST t10k labels idx file', required=True)
  flags.DEFINE_string('out', None, 'folder to write the benchmark into', required=True)
  flags.DEFINE_integer('train', 50_000, 'training scenes')
  flags.DEFINE_integer('test', 5_000, 'test scenes')
  flags.DEFINE_integer('seed', 0, 'seed of the scenes drawn')
  app.run(main)
