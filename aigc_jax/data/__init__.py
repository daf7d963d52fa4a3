"""Input pipelines: numpy batches already shaped [devices, per_device_batch, ...] for this process.

They know nothing of models or methods; the loop tells them the process and device counts.
"""

import ml_collections

from aigc_jax.data import images
from aigc_jax.data.pipeline import ImageBatches


def create(cfg: ml_collections.ConfigDict, split: str, global_batch: int, *, seed: int,
           process_index: int, process_count: int, local_devices: int,
           train: bool) -> ImageBatches:
  """Batches of `split` of the data set `cfg` (config.data) names; shuffled and augmented if `train`."""
  return ImageBatches(images.load(cfg, split), global_batch, seed=seed, process_index=process_index,
                      process_count=process_count, local_devices=local_devices, shuffle=train,
                      random_flip=train and cfg.random_flip)
