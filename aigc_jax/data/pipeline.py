"""Deterministic, random-access batches of images or text: the batch of step s is a pure function of (seed, s).

That makes resuming exact: a restarted run asks for step s and gets the batch it would have
had. Image epochs are fresh permutations of the data set; text windows start at random offsets.

In a multi-process run each pipeline holds only its process's shard of the examples
(`data.shards`) and draws that process's global_batch / processes rows of every step from
it, with randomness keyed by (seed, process index): the global batch of step s is the
processes' batches one after another, still a pure function of (seed, s). With one process
the pipeline holds everything and its randomness is keyed by the seed alone.
"""

import functools

import numpy as np


class _ProcessBatches:
  """What every pipeline shares: this process's rows of each step's global batch, split over its devices.

  `global_batch` must divide evenly over processes and devices (`parallel.check_batch`).
  """

  tokens_per_example: int | None = None  # tokens a training example scores, for text; progress shows tokens/s

  def __init__(self, global_batch: int, *, seed: int, process_index: int, process_count: int,
               local_devices: int, shuffle: bool):
    self.batch_size = global_batch // process_count  # rows this process draws per step
    self.seed = (seed,) if process_count == 1 else (seed, process_index)
    self.shuffle = shuffle
    self.local_devices = local_devices

  def per_device(self, x: np.ndarray) -> np.ndarray:
    """This process's rows of the global batch as [local devices, rows per device, ...]."""
    return x.reshape((self.local_devices, -1) + x.shape[1:])

  def share(self, step: int) -> float:
    """The share of the batch of `step` that is data rather than padding (1: a full batch)."""
    del step
    return 1.0


class ImageBatches(_ProcessBatches):
  """Batches of images scaled to [-1, 1], this process's share shaped [devices, per_device, H, W, C].

  `images` are this process's shard of the data set (all of it with one process).

  With `labels`, each batch also holds the images' int32 class labels under 'labels'.
  """

  def __init__(self, images: np.ndarray, global_batch: int, *, seed: int, process_index: int,
               process_count: int, local_devices: int, shuffle: bool = True,
               random_flip: bool = False, labels: np.ndarray | None = None):
    super().__init__(global_batch, seed=seed, process_index=process_index, process_count=process_count,
                     local_devices=local_devices, shuffle=shuffle)
    self.images = images
    self.labels = labels
    self.random_flip = random_flip

  @property
  def info(self) -> dict[str, str]:
    """What a method must know of the data beyond the config: nothing, for images."""
    return {}

  def __len__(self) -> int:
    """Full batches in one pass over the data (the last partial one is dropped)."""
    return len(self.images) // self.batch_size

  @functools.lru_cache(maxsize=2)
  def _order(self, epoch: int) -> np.ndarray:
    n = len(self.images)
    return np.random.default_rng([*self.seed, 0, epoch]).permutation(n) if self.shuffle else np.arange(n)

  def indices(self, step: int) -> np.ndarray:
    """Indices into `images` of this process's rows of the batch of `step`."""
    n = len(self.images)
    pos = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
    epochs, offsets = np.divmod(pos, n)
    idx = np.empty_like(pos)
    for e in np.unique(epochs):
      idx[epochs == e] = self._order(int(e))[offsets[epochs == e]]
    return idx

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's part of the global batch of `step`: {'images': float32 [devices, B, H, W, C]} (+ 'labels')."""
    idx = self.indices(step)
    x = self.images[idx].astype(np.float32) / 127.5 - 1.0
    if self.random_flip:
      flip = np.random.default_rng([*self.seed, 1, step]).random(self.batch_size) < 0.5
      x[flip] = x[flip, :, ::-1]
    if self.labels is None:
      return {'images': self.per_device(x)}
    return {'images': self.per_device(x), 'labels': self.per_device(self.labels[idx])}


class TextBatches(_ProcessBatches):
  """Windows of `block_size + 1` consecutive tokens, this process's share shaped [devices, per_device, T+1].

  `tokens` are this process's shard of the split (all of it with one process).

  Training draws window starts uniformly at random (as nanoGPT does); evaluation walks the
  split in consecutive windows whose targets do not overlap, so every token is scored once:
  its last batch is filled up with windows of weight 0 ('weights', float32 [devices, B]; 1 for the
  others), which a method's eval step leaves out of its mean. The tokens after the last whole
  window (fewer than block_size) are not scored. Process shards are equally long, so every
  process has as many batches. `info` is what a method must know of the data (the tokenizer),
  saved with checkpoints.
  """

  def __init__(self, tokens: np.ndarray, global_batch: int, block_size: int, *, seed: int,
               process_index: int, process_count: int, local_devices: int, shuffle: bool,
               info: dict[str, str]):
    super().__init__(global_batch, seed=seed, process_index=process_index, process_count=process_count,
                     local_devices=local_devices, shuffle=shuffle)
    self.tokens = tokens
    self.block_size = block_size
    self.info = info
    self.num_windows = (len(tokens) - 1) // block_size

  @property
  def tokens_per_example(self) -> int:
    """A window scores its block_size next tokens."""
    return self.block_size

  def __len__(self) -> int:
    """Batches of non-overlapping windows that score every window once, the last one padded."""
    return -(-self.num_windows // self.batch_size)

  def _real_windows(self, step: int) -> int:
    """Windows of the split in the evaluation batch of `step`; the rest of it pads the last batch."""
    return int(np.clip(self.num_windows - step * self.batch_size, 0, self.batch_size))

  def share(self, step: int) -> float:
    """The share of real windows in the evaluation batch of `step` (below 1 only for the last one)."""
    return 1.0 if self.shuffle else self._real_windows(step) / self.batch_size

  def window_starts(self, step: int) -> np.ndarray:
    """Offsets into `tokens` of the windows of this process's rows of the batch of `step`."""
    if self.shuffle:
      high = len(self.tokens) - self.block_size  # a window of T+1 tokens must fit
      return np.random.default_rng([*self.seed, 2, step]).integers(0, high, self.batch_size)
    pos = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
    return (pos % self.num_windows) * self.block_size

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's part of the global batch of `step`: {'tokens': int32 [devices, B, T+1]} (+ 'weights', eval)."""
    starts = self.window_starts(step)
    x = self.tokens[starts[:, None] + np.arange(self.block_size + 1)]
    if self.shuffle:
      return {'tokens': self.per_device(x.astype(np.int32))}
    real = np.arange(self.batch_size) < self._real_windows(step)
    return {'tokens': self.per_device(x.astype(np.int32)), 'weights': self.per_device(real.astype(np.float32))}
