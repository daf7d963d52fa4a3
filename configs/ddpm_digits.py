"""The embedded default: DDPM on scikit-learn's 8x8 digits (offline), a whole run in minutes on a CPU."""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.method = 'ddpm'
  config.data = default.image_data(name='digits', image_size=8, channels=1, random_flip=False)

  config.model = model = ml_collections.ConfigDict()
  model.ch = 32
  model.ch_mult = (1, 2)
  model.num_res_blocks = 1
  model.attn_resolutions = (4,)
  model.dropout = 0.0
  model.num_groups = 8
  model.dtype = 'auto'        # bfloat16 compute on GPUs/TPUs, float32 on CPUs (methods/precision.py)
  model.num_classes = 0       # > 0: class-conditional (classifier-free guidance); 0: no label path
  model.label_dropout = 0.1   # class-conditional: share of training labels replaced by the null class

  config.diffusion = diffusion = ml_collections.ConfigDict()
  diffusion.schedule = 'linear'   # betas linear from beta_start to beta_end (diffusion/schedules.py)
  diffusion.num_timesteps = 1000
  diffusion.beta_start = 1e-4
  diffusion.beta_end = 0.02
  diffusion.prediction = 'eps'    # what the UNet outputs (diffusion/prediction.py)

  config.optim.lr = 1e-3
  config.optim.warmup_steps = 200
  config.optim.grad_clip = 1.0

  config.training.batch_size = 128
  config.training.num_train_steps = 2000
  config.training.checkpoint_every = 500
  config.training.sample_every = 2000
  config.training.ema_rate = 0.999

  config.sample.num = 100
  config.sample.method = 'ancestral'  # a sampler of diffusion/samplers.py: 'ancestral' or 'ddim'
  config.sample.steps = 100           # DDIM steps
  config.sample.eta = 0.0             # DDIM: 0 deterministic, 1 ancestral-like
  config.sample.ddim_eps = 'auto'     # DDIM's noise beside the clipped x_0: 'model' (its prediction), 'clipped'
                                      # (the noise the clipped x_0 implies, as GLIDE), 'auto': 'clipped' if w > 1
  config.sample.guidance_scale = 0.0  # class-conditional: w in (1 + w) eps(x, c) - w eps(x, null)
  config.sample.labels = ()           # class-conditional: the classes to draw; () = all, evenly

  config.eval.batch_size = 200
  config.eval.bits_per_dim = True     # --mode=eval: the variational bound (one network call per timestep)
  return config
