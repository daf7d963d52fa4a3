"""The MLP GAN on MNIST: generator z(100) -> 256 -> 512 -> 1024 -> 784 tanh, discriminator 784 -> 1024 -> 512 -> 256 -> 1,
LeakyReLU(0.2) throughout, the non-saturating loss, Adam 2e-4 with beta1 0.5 for both, batch 64.

TFDS `mnist` (60,000 training digits). Offline, on MNIST's idx files converted to an .npz
(`python -m aigc_jax.data.idx --images=... --labels=... --out=mnist_test.npz`), its last
2,000 digits held out:

  python run.py --config=configs/gan_mnist.py --workdir=workdirs/gan_mnist \\
    --config.data.npz_path=mnist_test.npz --config.data.npz_holdout=2000
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.method = 'gan'
  config.data = default.image_data(name='mnist', image_size=28, channels=1, random_flip=False)

  config.model = model = ml_collections.ConfigDict()
  model.kind = 'mlp'               # 'mlp' or 'dcgan'
  model.latents = 100
  model.g_hidden = (256, 512, 1024)
  model.d_hidden = (1024, 512, 256)

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
