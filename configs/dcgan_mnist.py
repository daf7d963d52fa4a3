"""DCGAN (Radford et al. 2015) on MNIST padded to 32x32: transposed-conv generator with BatchNorm and ReLU,
strided-conv discriminator with LeakyReLU(0.2), weights from N(0, 0.02), Adam 2e-4 with beta1 0.5.

TFDS `mnist`, each 28x28 digit padded by 2 black pixels per side (data.pad). Offline, as for
configs/gan_mnist.py:

  python run.py --config=configs/dcgan_mnist.py --workdir=workdirs/dcgan_mnist \\
    --config.data.npz_path=mnist_test.npz --config.data.npz_holdout=2000

The 28x28 MNIST classifier judges its samples cropped back to 28x28 (the 2-pixel border removed).
"""

import ml_collections

from configs import gan_mnist


def get_config() -> ml_collections.ConfigDict:
  config = gan_mnist.get_config()
  config.data.pad = 2
  config.data.image_size = 32

  config.model = model = ml_collections.ConfigDict()
  model.kind = 'dcgan'
  model.latents = 100
  model.width = 64   # the discriminator's first conv; doubled per level (generator: the reverse)
  return config
