"""Class-conditional DDPM on CIFAR-10 with classifier-free guidance (Ho & Salimans 2022).

The paper's CIFAR-10 UNet and schedule (as configs/ddpm_cifar.py) with the CIFAR-10 label
added to the time embedding; 10% of training labels are replaced by the null class, and
sampling mixes the conditional and unconditional predictions with `sample.guidance_scale`.
100 samples, one class per row of the grid.

Offline: --config.data.image_folder=<folder with train/<class>/*.jpg>.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.method = 'ddpm'
  config.data = default.image_data(name='cifar10', image_size=32, channels=3, random_flip=True)

  config.model = model = ml_collections.ConfigDict()
  model.ch = 128
  model.ch_mult = (1, 2, 2, 2)
  model.num_res_blocks = 2
  model.attn_resolutions = (16,)
  model.dropout = 0.1
  model.num_groups = 32
  model.dtype = 'auto'        # bfloat16 compute on GPUs/TPUs, float32 on CPUs (methods/precision.py)
  model.num_classes = 10      # the CIFAR-10 label, added to the time embedding (0: unconditional)
  model.label_dropout = 0.1   # class-conditional: share of training labels replaced by the null class

  config.diffusion = diffusion = ml_collections.ConfigDict()
  diffusion.schedule = 'linear'   # betas linear from beta_start to beta_end (diffusion/schedules.py)
  diffusion.num_timesteps = 1000
  diffusion.beta_start = 1e-4
  diffusion.beta_end = 0.02
  diffusion.prediction = 'eps'    # what the UNet outputs (diffusion/prediction.py)

  config.optim.lr = 2e-4
  config.optim.warmup_steps = 5000
  config.optim.grad_clip = 1.0

  config.training.batch_size = 128
  config.training.num_train_steps = 800_000
  config.training.checkpoint_every = 10_000
  config.training.sample_every = 50_000
  config.training.ema_rate = 0.9999

  config.sample.num = 100             # one class per row of the grid
  config.sample.method = 'ancestral'  # a sampler of diffusion/samplers.py: 'ancestral' or 'ddim'
  config.sample.steps = 100           # DDIM steps
  config.sample.eta = 0.0             # DDIM: 0 deterministic, 1 ancestral-like
  config.sample.ddim_eps = 'auto'     # DDIM's noise beside the clipped x_0: 'model' (its prediction), 'clipped'
                                      # (the noise the clipped x_0 implies, as GLIDE), 'auto': 'clipped' if w > 1
  config.sample.guidance_scale = 1.0  # w in (1 + w) eps(x, c) - w eps(x, null)
  config.sample.labels = ()           # class-conditional: the classes to draw; () = all, evenly

  config.eval.bits_per_dim = True     # --mode=eval: the variational bound (one network call per timestep)
  return config
