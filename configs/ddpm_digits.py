"""The embedded default: DDPM on scikit-learn's 8x8 digits (offline), a whole run in minutes on a CPU."""

import ml_collections

from configs import ddpm_cifar


def get_config() -> ml_collections.ConfigDict:
  config = ddpm_cifar.get_config()
  config.data.name = 'digits'
  config.data.image_size = 8
  config.data.channels = 1
  config.data.random_flip = False

  config.model.ch = 32
  config.model.ch_mult = (1, 2)
  config.model.num_res_blocks = 1
  config.model.attn_resolutions = (4,)
  config.model.dropout = 0.0
  config.model.num_groups = 8

  config.optim.lr = 1e-3
  config.optim.warmup_steps = 200

  config.training.batch_size = 128
  config.training.num_train_steps = 2000
  config.training.log_every = 100
  config.training.checkpoint_every = 500
  config.training.sample_every = 2000
  config.training.ema_rate = 0.999

  config.sample.num = 100
  config.eval.batch_size = 200
  return config
