"""DCGAN (Radford et al. 2015) on CIFAR-10 at 32x32: z(100) -> 4x4x256 -> 8x8x128 -> 16x16x64 -> 32x32x3,
discriminator 64 -> 128 -> 256 channels -> 1 logit; batch 128, Adam 2e-4 with beta1 0.5, no
augmentation (the paper's settings).

Offline: --config.data.image_folder=<folder with train/<class>/*.jpg>.
"""

import ml_collections

from configs import dcgan_mnist


def get_config() -> ml_collections.ConfigDict:
  config = dcgan_mnist.get_config()
  config.data.name = 'cifar10'
  config.data.pad = 0
  config.data.image_size = 32
  config.data.channels = 3
  config.data.random_flip = False

  config.training.batch_size = 128
  config.training.num_train_steps = 20_000  # about 51 epochs of 50,000 images
  config.training.checkpoint_every = 2000
  config.training.sample_every = 2000
  config.sample.num = 64
  return config
