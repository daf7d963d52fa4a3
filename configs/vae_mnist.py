"""An MLP VAE on binarized MNIST, the Flax example's (784 -> 500 -> 20 latents -> 500 -> 784 Bernoulli logits).

TFDS `binarized_mnist` (50,000 training digits, the fixed binarization of Larochelle &
Murray; its pixels are stored as 0/1), batch 128, Adam 1e-3, 30 epochs (11,700 steps), as the
Flax example trains it. Offline, on MNIST's idx files converted to an .npz
(`python -m aigc_jax.data.idx --images=... --labels=... --out=mnist_test.npz`), its last
2,000 digits held out and each pixel thresholded at half of 255:

  python run.py --config=configs/vae_mnist.py --workdir=workdirs/vae_mnist \\
    --config.data.npz_path=mnist_test.npz --config.data.npz_holdout=2000 --config.data.binarize=0.5
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.method = 'vae'
  config.data = default.image_data(name='binarized_mnist', image_size=28, channels=1, random_flip=False,
                                   binarize=0.5 / 255)  # binarized_mnist's 0/1 pixels: 1 becomes 255

  config.model = model = ml_collections.ConfigDict()
  model.kind = 'mlp'          # 'mlp' or 'conv'
  model.hidden = 500
  model.latents = 20

  config.vae = vae = ml_collections.ConfigDict()
  vae.likelihood = 'bernoulli'  # binarized pixels; 'logistic': discretized logistic over 256 values
  vae.beta = 1.0                # weight of the KL term (1: the ELBO)
  vae.kl_warmup_steps = 0       # > 0: the KL weight rises linearly from 0 to vae.beta over these steps

  config.optim.lr = 1e-3

  config.training.batch_size = 128
  config.training.num_train_steps = 11_700
  config.training.checkpoint_every = 1000
  config.training.sample_every = 11_700
  config.training.ema_rate = 0.999

  config.sample.num = 64
  config.sample.num_examples = 16  # held-out images: reconstructed, and interpolated in pairs (0: none)
  config.sample.interp_steps = 8   # decodes along each pair's latent line, ends included

  config.eval.batch_size = 500
  config.eval.iwae_k = 100         # importance samples of the IWAE bound (0: no IWAE)
  config.eval.iwae_chunk = 10      # of them decoded at once (memory)
  return config
