"""Deterministic, random-access batches of images or text: the batch of step s is a pure function of (seed, s).

That makes resuming exact (a restarted run asks for step s and gets the batch it would have
had) and multi-process sharding trivial (every process computes the same global batch
indices and keeps its own slice). Image epochs are fresh permutations of the data set; text
windows start at random offsets.
"""

import functools

import numpy as np


class _GlobalBatches:
  """What every pipeline shares: one global batch per step, of which this process keeps rows lo:hi.

  `global_batch` must divide evenly over processes and devices (`parallel.check_batch`).
  """

  def __init__(self, global_batch: int, *, seed: int, process_index: int, process_count: int,
               local_devices: int, shuffle: bool):
    per_process = global_batch // process_count
    self.global_batch = global_batch
    self.seed = seed
    self.shuffle = shuffle
    self.local_devices = local_devices
    self.lo = process_index * per_process
    self.hi = self.lo + per_process

  def per_device(self, x: np.ndarray) -> np.ndarray:
    """This process's rows [B/P, ...] as [local_devices, B/(P*L), ...]."""
    return x.reshape((self.local_devices, -1) + x.shape[1:])


class ImageBatches(_GlobalBatches):
  """Global batches of images scaled to [-1, 1], this process's share shaped [devices, per_device, H, W, C].

  With `labels`, each batch also holds the images' int32 class labels under 'label'.
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
    """Full global batches in one pass over the data (the last partial one is dropped)."""
    return len(self.images) // self.global_batch

  @functools.lru_cache(maxsize=2)
  def _order(self, epoch: int) -> np.ndarray:
    n = len(self.images)
    return np.random.default_rng([self.seed, 0, epoch]).permutation(n) if self.shuffle else np.arange(n)

  def global_indices(self, step: int) -> np.ndarray:
    """Data-set indices of the whole global batch of `step`, over all processes."""
    n = len(self.images)
    pos = np.arange(step * self.global_batch, (step + 1) * self.global_batch)
    epochs, offsets = np.divmod(pos, n)
    idx = np.empty_like(pos)
    for e in np.unique(epochs):
      idx[epochs == e] = self._order(int(e))[offsets[epochs == e]]
    return idx

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's part of the global batch of `step`: {'image': float32 [L, B/L, H, W, C]} (+ 'label')."""
    idx = self.global_indices(step)[self.lo:self.hi]
    x = self.images[idx].astype(np.float32) / 127.5 - 1.0
    if self.random_flip:
      flip = np.random.default_rng([self.seed, 1, step]).random(self.global_batch) < 0.5
      flip = flip[self.lo:self.hi]
      x[flip] = x[flip, :, ::-1]
    if self.labels is None:
      return {'image': self.per_device(x)}
    return {'image': self.per_device(x), 'label': self.per_device(self.labels[idx])}


class TextBatches(_GlobalBatches):
  """Windows of `block_size + 1` consecutive tokens, this process's share shaped [devices, per_device, T+1].

  Training draws window starts uniformly at random (as nanoGPT does); evaluation walks the
  split in consecutive windows whose targets do not overlap, so every token is scored once.
  `info` is what a method must know of the data (the tokenizer), saved with checkpoints.
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

  def __len__(self) -> int:
    """Full global batches of non-overlapping windows in the split."""
    return self.num_windows // self.global_batch

  def window_starts(self, step: int) -> np.ndarray:
    """Token offsets of the windows of the whole global batch of `step`, over all processes."""
    if self.shuffle:
      high = len(self.tokens) - self.block_size  # a window of T+1 tokens must fit
      return np.random.default_rng([self.seed, 2, step]).integers(0, high, self.global_batch)
    pos = np.arange(step * self.global_batch, (step + 1) * self.global_batch)
    return (pos % self.num_windows) * self.block_size

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's part of the global batch of `step`: {'tokens': int32 [L, B/L, T+1]}."""
    starts = self.window_starts(step)[self.lo:self.hi]
    x = self.tokens[starts[:, None] + np.arange(self.block_size + 1)]
    return {'tokens': self.per_device(x.astype(np.int32))}
