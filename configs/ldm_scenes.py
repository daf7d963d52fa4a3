"""Latent diffusion on MNIST pairs: text-to-image as Stable Diffusion does it, sized for a CPU.

A frozen autoencoder run (configs/autoencoder_scenes.py) gives 8x8x4 latents; a UNet with
cross-attention at 8x8 and 4x4 attends to a 2-layer bidirectional Transformer over the caption's
characters; captions are dropped with probability 0.1 for classifier-free guidance.

  python run.py --config=configs/ldm_scenes.py --workdir=workdirs/ldm_scenes \\
      --config.parts.autoencoder=workdirs/ae_scenes
  python run.py --config=configs/ldm_scenes.py --workdir=workdirs/ldm_scenes --mode=sample \\
      --config.sample.prompt='red 3 left of green 7' --config.sample.guidance_scale=3
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.method = 'ldm'
  config.data = default.captioned_data(name='mnist_pairs', image_size=32, channels=3, caption_length=32,
                                       image_folder='workdirs/mnist_pairs')
  config.parts.autoencoder = ''  # the workdir of a trained autoencoder run (configs/autoencoder_scenes.py)

  config.model = model = ml_collections.ConfigDict()  # the UNet, on the latents
  model.ch = 64
  model.ch_mult = (1, 2)
  model.num_res_blocks = 1
  model.attn_resolutions = ()
  model.cross_attn_resolutions = (8, 4)
  model.cross_attn_heads = 4
  model.dropout = 0.0
  model.num_groups = 16
  model.caption_dropout = 0.1   # captions replaced by the empty one: the unconditional model of guidance
  model.dtype = 'float32'

  config.text = text = ml_collections.ConfigDict()  # the text encoder: a Transformer without the causal mask
  text.num_layers = 2
  text.num_heads = 4
  text.width = 64
  text.dropout = 0.0

  config.diffusion = diffusion = ml_collections.ConfigDict()
  diffusion.schedule = 'linear'
  diffusion.num_timesteps = 1000
  diffusion.beta_start = 1e-4
  diffusion.beta_end = 0.02
  diffusion.prediction = 'eps'

  config.optim.lr = 5e-4
  config.optim.warmup_steps = 200
  config.optim.grad_clip = 1.0

  config.training.batch_size = 64
  config.training.num_train_steps = 3000
  config.training.log_every = 100
  config.training.checkpoint_every = 500
  config.training.ema_rate = 0.999

  config.sample = sample = ml_collections.ConfigDict()
  sample.num = 0                # ignored: each prompt is drawn sample.num_per_prompt times
  sample.method = 'ddim'
  sample.steps = 50
  sample.eta = 0.0
  sample.ddim_eps = 'model'
  sample.clip_x0 = False        # latents have no [-1, 1] range to clip predictions to
  sample.guidance_scale = 3.0
  sample.prompt = ''            # one prompt; else the lines of sample.prompts_file; else sample.prompts
  sample.prompts_file = ''
  sample.prompts = ('red 3 left of green 7', 'green 7 left of red 3', 'green 7 right of red 3',
                    'blue 1 left of yellow 4', 'white 5 right of cyan 2', 'magenta 8 left of red 0')
  sample.num_per_prompt = 4

  config.eval.batch_size = 500
  config.eval.num_batches = 2
  config.eval.sample_batch = 1000
  config.eval.feature_net = 'mnist_cells'   # the cell classifier reads scenes back (caption accuracy)
  return config
