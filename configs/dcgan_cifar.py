"""DCGAN (Radford et al. 2015) on CIFAR-10 at 32x32: z(100) -> 4x4x256 -> 8x8x128 -> 16x16x64 -> 32x32x3,
discriminator 64 -> 128 -> 256 channels -> 1 logit; batch 128, Adam 2e-4 with beta1 0.5, no
augmentation (the paper's settings).

Offline: --config.data.image_folder=<folder with train/<class>/*.jpg>.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.method = 'gan'
  config.data = default.image_data(name='cifar10', image_size=32, channels=3, random_flip=False)

  config.model = model = ml_collections.ConfigDict()
  model.kind = 'dcgan'             # or 'mlp' (configs/gan_mnist.py)
  model.latents = 100
  model.width = 64                 # the discriminator's first conv; doubled per level (generator: the reverse)

  config.gan = gan = ml_collections.ConfigDict()
  gan.loss = 'non_saturating'      # or 'minimax' (the saturating -log(1 - D(G(z))) for G) or 'hinge'

  config.optim.lr = 2e-4           # both networks, each with its own Adam state
  config.optim.b1 = 0.5

  config.training.batch_size = 128
  config.training.num_train_steps = 20_000  # about 51 epochs of 50,000 images
  config.training.checkpoint_every = 2000
  config.training.sample_every = 2000
  config.training.ema_rate = 0.0   # 0: samples come from G as trained; e.g. 0.999 for an EMA of its params

  config.eval.batch_size = 500
  return config
