"""The KL autoencoder of latent diffusion on MNIST pairs: 32x32x3 scenes -> 8x8x4 latents (f = 4).

Build the benchmark once, then train (and evaluate its reconstruction PSNR):

  python -m aigc_jax.data.scenes --images=../shared/data/mnist_t10k-images-idx3-ubyte.gz \\
      --labels=../shared/data/mnist_t10k-labels-idx1-ubyte.gz --out=workdirs/mnist_pairs
  python run.py --config=configs/autoencoder_scenes.py --workdir=workdirs/ae_scenes
  python run.py --config=configs/autoencoder_scenes.py --workdir=workdirs/ae_scenes --mode=eval

`--config.autoencoder.disc_weight=0.1 --config.autoencoder.disc_start=1000` adds the patch
discriminator from step 1000 on.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.method = 'autoencoder'
  config.data = default.image_data(name='mnist_pairs', image_size=32, channels=3, random_flip=False,
                                   image_folder='workdirs/mnist_pairs')  # <split>/metadata.jsonl and its PNGs

  config.model = model = ml_collections.ConfigDict()
  model.ch = 32
  model.ch_mult = (1, 2, 2)    # f = 2**(len - 1) = 4: 32x32 -> 8x8
  model.num_res_blocks = 1
  model.z_channels = 4
  model.num_groups = 8
  model.disc_ch = 32           # the patch discriminator's first width (doubling per layer)
  model.disc_layers = 2        # stride-2 layers: 32x32 -> 8x8 patches

  config.autoencoder = ae = ml_collections.ConfigDict()
  ae.reconstruction = 'l1'     # or 'l2'
  ae.kl_weight = 1e-6          # relative to a loss summed over pixels, as Stable Diffusion's KL-f8
  ae.disc_weight = 0.0         # > 0: a patch discriminator (hinge loss) trains as a second network
  ae.disc_start = 0            # the step from which the adversarial terms count
  ae.latent_std_rate = 0.99    # running average of the latents' moments (the scale latent diffusion uses)

  config.optim.lr = 1e-3
  config.optim.warmup_steps = 100

  config.training.batch_size = 32
  config.training.num_train_steps = 1500
  config.training.log_every = 100
  config.training.checkpoint_every = 500
  config.training.ema_rate = 0.99

  config.sample.num = 16
  config.sample.num_examples = 16  # held-out scenes and their reconstructions

  config.eval.batch_size = 500
  return config
