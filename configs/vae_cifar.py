"""A convolutional VAE on CIFAR-10 with a discretized-logistic likelihood over the 256 pixel values.

128 latents; the encoder halves 32x32 three times (widths 64, 128, 128) and the decoder
mirrors it. TFDS `cifar10`; offline, from the images laid out as <root>/<split>/<class>/*.jpg:

  python run.py --config=configs/vae_cifar.py --workdir=workdirs/vae_cifar \\
    --config.data.image_folder=/path/to/cifar10

It is sized for an accelerator; on a 2-core CPU, `--config.model.ch=32
--config.training.batch_size=64` trains at about 1 step/s.
"""

import ml_collections

from configs import vae_mnist


def get_config() -> ml_collections.ConfigDict:
  config = vae_mnist.get_config()
  config.data.name = 'cifar10'
  config.data.binarize = 0.0
  config.data.image_size = 32
  config.data.channels = 3
  config.data.random_flip = True

  config.model = model = ml_collections.ConfigDict()
  model.kind = 'conv'
  model.ch = 64
  model.ch_mult = (1, 2, 2)
  model.latents = 128

  config.vae.likelihood = 'logistic'

  config.optim.lr = 1e-3
  config.optim.warmup_steps = 100

  config.training.batch_size = 128
  config.training.num_train_steps = 100_000
  config.training.checkpoint_every = 5000
  config.training.sample_every = 10_000
  config.training.ema_rate = 0.999

  config.eval.batch_size = 200
  return config
