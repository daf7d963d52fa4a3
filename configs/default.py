"""The method-neutral keys every experiment config starts from: seed, training loop, evaluation, parts.

An experiment config is one flat file, as big_vision's are: it calls `get_config()` and sets
the rest itself — `config.method`, its data section (`image_data(...)` or `text_data(...)`,
every key the pipelines read), the optimizer values that differ, and its method's sections.
So every value of a run is found in its own config file or here. What has no neutral value
(`method`, `optim.lr`, `training.batch_size`, `training.num_train_steps`) is a placeholder
that the run refuses to start without.
"""

from typing import Any

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.method = config_dict.placeholder(str)  # a name of aigc_jax.methods.REGISTRY
  config.seed = 0

  config.optim = optim = ml_collections.ConfigDict()
  optim.optimizer = 'adam'     # or 'adamw'
  optim.lr = config_dict.placeholder(float)
  optim.schedule = 'constant'  # after warmup: 'constant' or 'cosine' (to min_lr)
  optim.min_lr = 0.0
  optim.warmup_steps = 0
  optim.grad_clip = 0.0        # global-norm clipping; 0 disables
  optim.b1 = 0.9
  optim.b2 = 0.999
  optim.eps = 1e-8
  optim.weight_decay = 0.0     # adamw: on matrices and embeddings only

  config.training = training = ml_collections.ConfigDict()
  training.batch_size = config_dict.placeholder(int)       # global, over all devices and processes
  training.num_train_steps = config_dict.placeholder(int)
  training.steps_per_call = 1    # optimizer steps per device call (lax.scan)
  training.log_every = 100
  training.checkpoint_every = 1000
  training.keep_checkpoints = 3
  training.sample_every = 0      # 0: no samples during training
  training.eval_every = 0        # held-out metrics (and sample quality) during training; 0: never
  training.ema_rate = 0.0        # 0: ema_params are the trained params
  training.skip_nonfinite = False  # a step with a NaN/Inf loss or update: False stops the run, True skips it

  config.sample = sample = ml_collections.ConfigDict()
  sample.num = 64

  config.eval = ev = ml_collections.ConfigDict()
  ev.batch_size = 256
  ev.num_batches = 0              # 0: the whole eval split
  ev.num_samples = 0              # image methods: samples judged by FID/IS/KID at --mode=eval (0: none)
  ev.num_samples_in_training = 0  # the same at every training.eval_every steps (a smaller, faster proxy)
  ev.sample_batch = 500           # samples drawn per sampler call while collecting them
  ev.feature_net = ''             # classifier feature network ('digits', 'mnist', 'cifar10'); '' = data.name
  ev.inception_weights = ''       # pt_inception-2015-12-05-6726825d.pth (or its cached .npz); '' = the cache
  ev.reference_split = ''         # real images the samples are compared with; '' = data.train_split

  config.init_from = ''  # LM: a Hugging Face GPT-2 folder (interop/gpt2.py) to start from when the workdir has no checkpoint
  config.parts = ml_collections.ConfigDict()  # models from other runs a method builds on: name -> '<workdir>[@step]'
  return config


def _set(section: ml_collections.ConfigDict, values: dict[str, Any]) -> ml_collections.ConfigDict:
  """`section` with `values` set; a key it does not have is an error (a typo, not a new key)."""
  for key, value in values.items():
    if key not in section:
      raise KeyError(f'data has no key {key!r}: it has {", ".join(section)}')
    section[key] = value
  return section


def image_data(*, name: str, image_size: int, channels: int, random_flip: bool,
               **values: Any) -> ml_collections.ConfigDict:
  """The data section of an image experiment: `name`, sizes and flipping, and `values` for the other keys."""
  data = ml_collections.ConfigDict()
  data.kind = 'images'
  data.name = name            # a TFDS name, or 'digits' (scikit-learn's 8x8 digits, offline)
  data.image_folder = ''      # if set: a tfds.ImageFolder root (<split>/<class>/<image>) used instead of TFDS
  data.npz_path = ''          # if set: an .npz with `images` uint8 [N,H,W(,C)] (and `labels`) used instead
  data.npz_holdout = 0        # data.npz_path: its last this many examples are 'test', the rest 'train'
  data.pad = 0                # pixels of value 0 added on every side after loading (MNIST 28 -> 32: 2)
  data.binarize = 0.0         # > 0: pixels >= this fraction of 255 become 255, the rest 0
  data.tfds_data_dir = ''     # TFDS data_dir ('' = TFDS's default, ~/tensorflow_datasets)
  data.train_split = 'train'
  data.eval_split = 'test'
  data.image_size = image_size
  data.channels = channels
  data.random_flip = random_flip
  return _set(data, values)


def captioned_data(*, name: str, image_size: int, channels: int, caption_length: int,
                   **values: Any) -> ml_collections.ConfigDict:
  """The data section of a text-to-image experiment: image data (never flipped: captions say left and right)
  with a caption per image (data/captions.py)."""
  data = image_data(name=name, image_size=image_size, channels=channels, random_flip=False)
  data.kind = 'captioned'
  data.caption_key = 'caption'        # TFDS: the text feature holding the caption
  data.tokenizer = 'char'             # 'char' (characters of the training captions), 'byte' or 'bpe'
  data.bpe_dir = ''                   # data.tokenizer='bpe': GPT-2's vocab.json + merges.txt (or tokenizer.json)
  data.caption_length = caption_length  # token positions: a start token, the caption, padding
  return _set(data, values)


def text_data(*, name: str, block_size: int, **values: Any) -> ml_collections.ConfigDict:
  """The data section of a text experiment: `name`, the context length, and `values` for the other keys."""
  data = ml_collections.ConfigDict()
  data.kind = 'text'
  data.name = name                # a TFDS data set with a 'text' feature
  data.text_file = ''             # if set: this UTF-8 file is used instead of TFDS
  data.val_fraction = 0.1         # data.text_file: the last fraction is the 'validation' split
  data.manual_dir = ''            # TFDS: a folder holding the file it would download (input.txt)
  data.tfds_data_dir = ''         # TFDS data_dir ('' = TFDS's default, ~/tensorflow_datasets)
  data.train_split = 'train'
  data.eval_split = 'validation'
  data.tokenizer = 'char'         # 'char' (vocabulary of the training text), 'byte' (256 values) or 'bpe'
  data.bpe_dir = ''               # data.tokenizer='bpe': GPT-2's vocab.json + merges.txt (or tokenizer.json)
  data.block_size = block_size    # context length: tokens per training window (plus one target)
  return _set(data, values)
