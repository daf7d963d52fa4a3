"""DCGAN (Radford et al. 2015) on MNIST padded to 32x32: transposed-conv generator with BatchNorm and ReLU,
strided-conv discriminator with LeakyReLU(0.2), weights from N(0, 0.02), Adam 2e-4 with beta1 0.5.

TFDS `mnist`, each 28x28 digit padded by 2 black pixels per side (data.pad). Offline, as for
configs/gan_mnist.py:

  python run.py --config=configs/dcgan_mnist.py --workdir=workdirs/dcgan_mnist \\
    --config.data.npz_path=mnist_test.npz --config.data.npz_holdout=2000

The 28x28 MNIST classifier judges its samples cropped back to 28x28 (the 2-pixel border removed).
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.method = 'gan'
  config.data = default.image_data(name='mnist', image_size=32, channels=1, random_flip=False, pad=2)

  config.model = model = ml_collections.ConfigDict()
  model.kind = 'dcgan'             # or 'mlp' (configs/gan_mnist.py)
  model.latents = 100
  model.width = 64                 # the discriminator's first conv; doubled per level (generator: the reverse)

  config.gan = gan = ml_collections.ConfigDict()
  gan.loss = 'non_saturating'      # or 'minimax' (the saturating -log(1 - D(G(z))) for G) or 'hinge'

  config.optim.lr = 2e-4           # both networks, each with its own Adam state
  config.optim.b1 = 0.5

  config.training.batch_size = 64
  config.training.num_train_steps = 50_000
  config.training.checkpoint_every = 5000
  config.training.sample_every = 5000
  config.training.ema_rate = 0.0   # 0: samples come from G as trained; e.g. 0.999 for an EMA of its params

  config.sample.num = 100
  config.eval.batch_size = 500
  return config
