"""Input pipelines: numpy batches already shaped [devices, per_device_batch, ...] for this process.

They know nothing of models or methods; the loop tells them the process and device counts.
Each pipeline's `info` is what a method must know of the data beyond the config (for text,
the tokenizer and its vocabulary); checkpoints keep it, and passing it back as `data_info`
tokenizes new data the way the checkpointed model was trained.
"""

import ml_collections

from aigc_jax.data import captions
from aigc_jax.data import images
from aigc_jax.data import text
from aigc_jax.data import tokenizers
from aigc_jax.data.pipeline import ImageBatches
from aigc_jax.data.pipeline import TextBatches
from aigc_jax.errors import UserError


def create(cfg: ml_collections.ConfigDict, split: str, global_batch: int, *, seed: int,
           process_index: int, process_count: int, local_devices: int, train: bool,
           data_info: dict[str, str] | None = None) -> ImageBatches | TextBatches | captions.CaptionBatches:
  """Batches of `split` of the data set `cfg` (config.data) names; shuffled (and augmented) if `train`.

  Each process reads only its shard of the split (`data.shards`) and draws its part of every global batch from it.
  """
  if cfg.kind == 'images':
    x, labels = images.load(cfg, split, process_index, process_count)
    return ImageBatches(x, global_batch, seed=seed, process_index=process_index,
                        process_count=process_count, local_devices=local_devices, shuffle=train,
                        random_flip=train and cfg.random_flip, labels=labels)
  if cfg.kind == 'text':
    return text.create(cfg, split, global_batch, seed=seed, process_index=process_index,
                       process_count=process_count, local_devices=local_devices, train=train,
                       data_info=data_info)
  if cfg.kind == 'captioned':
    return captions.create(cfg, split, global_batch, seed=seed, process_index=process_index,
                           process_count=process_count, local_devices=local_devices, train=train,
                           data_info=data_info)
  raise UserError(f"data.kind={cfg.kind!r} is unknown: use 'images', 'captioned' or 'text'")


def info_without_data(cfg: ml_collections.ConfigDict) -> dict[str, str]:
  """The data info of a run that starts from no data: a text run whose tokenizer needs none (BPE files, bytes)."""
  if cfg.kind == 'text' and cfg.tokenizer in ('bpe', 'byte'):
    return tokenizers.build(cfg.tokenizer, '', cfg.bpe_dir).info
  raise UserError(f'data.kind={cfg.kind!r} with data.tokenizer={cfg.get("tokenizer")!r} needs the data to know its '
                  "vocabulary: train first, or use data.tokenizer='bpe' with data.bpe_dir")
