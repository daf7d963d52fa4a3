"""Defaults every experiment config starts from; a config changes only what differs."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.method = 'ddpm'
  config.seed = 0

  config.data = data = ml_collections.ConfigDict()
  data.kind = 'images'        # 'images' or 'text' (the LM configs replace this section)
  data.name = 'cifar10'       # a TFDS name, or 'digits' (scikit-learn's 8x8 digits, offline)
  data.image_folder = ''      # if set: a tfds.ImageFolder root (<split>/<class>/<image>) used instead of TFDS
  data.npz_path = ''          # if set: an .npz with `images` uint8 [N,H,W(,C)] (and `labels`) used instead
  data.npz_holdout = 0        # data.npz_path: its last this many examples are 'test', the rest 'train'
  data.pad = 0                # pixels of value 0 added on every side after loading (MNIST 28 -> 32: 2)
  data.binarize = 0.0         # > 0: pixels >= this fraction of 255 become 255, the rest 0
  data.tfds_data_dir = ''     # TFDS data_dir ('' = TFDS's default, ~/tensorflow_datasets)
  data.train_split = 'train'
  data.eval_split = 'test'
  data.image_size = 32
  data.channels = 3
  data.random_flip = True

  config.optim = optim = ml_collections.ConfigDict()
  optim.optimizer = 'adam'
  optim.lr = 2e-4
  optim.schedule = 'constant'  # after warmup: 'constant' or 'cosine' (to min_lr)
  optim.min_lr = 0.0
  optim.warmup_steps = 5000
  optim.grad_clip = 1.0        # global-norm clipping; 0 disables
  optim.b1 = 0.9
  optim.b2 = 0.999
  optim.eps = 1e-8
  optim.weight_decay = 0.0

  config.training = training = ml_collections.ConfigDict()
  training.batch_size = 128    # global, over all devices and processes
  training.num_train_steps = 800_000
  training.steps_per_call = 1  # optimizer steps per device call (lax.scan)
  training.log_every = 100
  training.checkpoint_every = 10_000
  training.keep_checkpoints = 3
  training.sample_every = 50_000  # 0: no samples during training
  training.eval_every = 0         # held-out metrics (and sample quality) during training; 0: never
  training.ema_rate = 0.9999
  training.skip_nonfinite = False  # a step with a NaN/Inf loss or update: False stops the run, True skips it

  config.sample = sample = ml_collections.ConfigDict()
  sample.num = 64

  config.eval = ev = ml_collections.ConfigDict()
  ev.batch_size = 256
  ev.num_batches = 0           # 0: the whole eval split
  ev.num_samples = 0           # image methods: samples judged by FID/IS/KID at --mode=eval (0: none)
  ev.num_samples_in_training = 0  # the same at every training.eval_every steps (a smaller, faster proxy)
  ev.sample_batch = 500        # samples drawn per sampler call while collecting them
  ev.feature_net = ''          # classifier feature network ('digits', 'mnist', 'cifar10'); '' = data.name
  ev.inception_weights = ''    # pt_inception-2015-12-05-6726825d.pth (or its cached .npz); '' = the cache
  ev.reference_split = ''      # real images the samples are compared with; '' = data.train_split
  return config
