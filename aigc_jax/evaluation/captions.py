"""Caption accuracy of MNIST-pairs samples: is what the prompt says what the image shows?

A sample is read back by the benchmark's grammar (data/scenes.py): its two 16x16 cells at rows
8..23, columns 0..15 and 16..31. Each cell's digit is the cell classifier's reading of the cell in
gray (its brightest channel), a classifier the project trains on the real MNIST digits as the
scenes draw them (`python -m aigc_jax.evaluation.feature_net --dataset=mnist_cells`, its held-out
accuracy in its feature_net.json); its colour is the set of channels whose mean over the cell's
stroke pixels (those whose brightest channel is at least half the cell's peak) reaches half of the
strongest channel's mean. A sample is correct when both digits and both colours are those of its
prompt. Accuracy is reported over all parsed prompts, over prompts of seen pairs only and over
prompts with a held-out pair.
"""

from typing import Callable

import numpy as np

from aigc_jax.data import scenes

# bits of (red, green, blue) -> colour name
_COLOUR_OF_BITS = {tuple(rgb): name for name, rgb in scenes.RGB.items()}


def cells(images_NHWC: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The left and right cells of scenes, uint8 [N, 16, 16, 3] each."""
  rows = images_NHWC[:, scenes.TOP:scenes.TOP + scenes.CELL]
  return rows[:, :, :scenes.CELL], rows[:, :, scenes.CELL:2 * scenes.CELL]


def gray(cells_NHWC: np.ndarray) -> np.ndarray:
  """A cell as the classifier reads it: its brightest channel, uint8 [N, 16, 16, 1]."""
  return cells_NHWC.max(axis=-1, keepdims=True)


def colours(cells_NHWC: np.ndarray) -> list[str | None]:
  """The colour each cell is drawn in, or None for a cell with no stroke."""
  out = []
  for c in cells_NHWC.astype(np.float32):
    peak = c.max(axis=-1)
    stroke = peak >= 0.5 * max(float(peak.max()), 1.0)
    if peak.max() < 32:
      out.append(None)
      continue
    mean_C = c[stroke].mean(axis=0)
    out.append(_COLOUR_OF_BITS.get(tuple(int(v) for v in mean_C >= 0.5 * mean_C.max())))
  return out


def read(images_NHWC: np.ndarray, classify: Callable[[np.ndarray], np.ndarray]) -> list[scenes.Scene]:
  """(left colour, left digit, right colour, right digit) of each scene; `classify` maps gray cells to digits."""
  left, right = cells(images_NHWC)
  digits_left, digits_right = classify(gray(left)), classify(gray(right))
  return [(cl, int(dl), cr, int(dr)) for cl, dl, cr, dr in
          zip(colours(left), digits_left, colours(right), digits_right)]


def accuracy(images_NHWC: np.ndarray, prompts_N: list[str],
             classify: Callable[[np.ndarray], np.ndarray]) -> dict[str, float]:
  """Caption accuracy (all, seen pairs, held-out pairs) and the share of digits and colours read as prompted.

  Prompts that are not scene captions are left out; {} if none is one.
  """
  wanted = [scenes.parse(str(p)) for p in prompts_N]
  keep = [i for i, w in enumerate(wanted) if w is not None]
  if not keep:
    return {}
  got = read(np.asarray(images_NHWC)[keep], classify)
  wanted = [wanted[i] for i in keep]
  right_N = np.array([g == w for g, w in zip(got, wanted)])
  held_N = np.array([scenes.has_held_out_pair(w) for w in wanted])
  out = {'caption_accuracy': float(right_N.mean()),
         'digit_accuracy': float(np.mean([[g[1] == w[1], g[3] == w[3]] for g, w in zip(got, wanted)])),
         'colour_accuracy': float(np.mean([[g[0] == w[0], g[2] == w[2]] for g, w in zip(got, wanted)])),
         'num_prompts_seen': float((~held_N).sum()), 'num_prompts_held_out': float(held_N.sum())}
  if (~held_N).any():
    out['caption_accuracy_seen'] = float(right_N[~held_N].mean())
  if held_N.any():
    out['caption_accuracy_held_out'] = float(right_N[held_N].mean())
  return out


def scene_outputs(cell_outputs: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
                  ) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
  """Scene (features, logits) from a cell classifier's: the two gray cells' features side by side (the FID
  features of scenes), and the left cell's logits."""
  def outputs(images_NHWC: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    left, right = cells(np.asarray(images_NHWC))
    (feats_l, logits_l), (feats_r, _) = cell_outputs(gray(left)), cell_outputs(gray(right))
    return np.concatenate([feats_l, feats_r], axis=1), logits_l
  return outputs
