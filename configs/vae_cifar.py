"""A convolutional VAE on CIFAR-10 with a discretized-logistic likelihood over the 256 pixel values.

128 latents; the encoder halves 32x32 three times (widths 64, 128, 128) and the decoder
mirrors it. TFDS `cifar10`; offline, from the images laid out as <root>/<split>/<class>/*.jpg:

  python run.py --config=configs/vae_cifar.py --workdir=workdirs/vae_cifar \\
    --config.data.image_folder=/path/to/cifar10

It is sized for an accelerator; on a 2-core CPU, `--config.model.ch=32
--config.training.batch_size=64` trains at about 1 step/s.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.method = 'vae'
  config.data = default.image_data(name='cifar10', image_size=32, channels=3, random_flip=True)

  config.model = model = ml_collections.ConfigDict()
  model.kind = 'conv'         # 'mlp' or 'conv'
  model.ch = 64
  model.ch_mult = (1, 2, 2)
  model.latents = 128

  config.vae = vae = ml_collections.ConfigDict()
  vae.likelihood = 'logistic'   # the discretized logistic over the 256 values; 'bernoulli': binarized pixels
  vae.beta = 1.0                # weight of the KL term (1: the ELBO)
  vae.kl_warmup_steps = 0       # > 0: the KL weight rises linearly from 0 to vae.beta over these steps

  config.optim.lr = 1e-3
  config.optim.warmup_steps = 100

  config.training.batch_size = 128
  config.training.num_train_steps = 100_000
  config.training.checkpoint_every = 5000
  config.training.sample_every = 10_000
  config.training.ema_rate = 0.999

  config.sample.num = 64
  config.sample.num_examples = 16  # held-out images: reconstructed, and interpolated in pairs (0: none)
  config.sample.interp_steps = 8   # decodes along each pair's latent line, ends included

  config.eval.batch_size = 200
  config.eval.iwae_k = 100         # importance samples of the IWAE bound (0: no IWAE)
  config.eval.iwae_chunk = 10      # of them decoded at once (memory)
  return config
