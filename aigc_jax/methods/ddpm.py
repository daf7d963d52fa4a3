"""DDPM (Ho et al. 2020): epsilon prediction with a plain MSE loss, ancestral and DDIM samplers.

The forward process q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) with linear betas;
the model predicts the noise; the reverse process uses the posterior q(x_{t-1} | x_t, x_0)
with x_0 predicted from the noise, and the "fixed large" variance beta_t. With
`model.num_classes` > 0 the model is class-conditional and samples with classifier-free
guidance (`guidance.py`).
"""

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from aigc_jax.errors import UserError
from aigc_jax.methods import guidance
from aigc_jax.methods import precision
from aigc_jax.methods import randomness
from aigc_jax.methods.pixels import to_uint8
from aigc_jax.models.unet import UNet
from aigc_jax.train import optim
from aigc_jax.train import state as state_lib


@flax.struct.dataclass
class Schedule:
  """Per-timestep constants of the diffusion, each a float32 [T] array (computed in float64)."""
  betas: jax.Array
  alphas_cumprod: jax.Array
  alphas_cumprod_prev: jax.Array
  posterior_variance: jax.Array
  posterior_mean_coef1: jax.Array  # multiplies x_0
  posterior_mean_coef2: jax.Array  # multiplies x_t
  fixed_large_log_variance: jax.Array

  @property
  def num_timesteps(self) -> int:
    return self.betas.shape[0]


def linear_schedule(num_timesteps: int, beta_start: float, beta_end: float) -> Schedule:
  """The DDPM schedule: betas linear from `beta_start` to `beta_end` over T steps."""
  betas = np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
  alphas = 1.0 - betas
  abar = np.cumprod(alphas)
  abar_prev = np.append(1.0, abar[:-1])
  post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
  arrays = dict(
      betas=betas,
      alphas_cumprod=abar,
      alphas_cumprod_prev=abar_prev,
      posterior_variance=post_var,
      posterior_mean_coef1=betas * np.sqrt(abar_prev) / (1.0 - abar),
      posterior_mean_coef2=(1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
      # beta_t, with beta_1 replaced by the posterior variance at t=1 so that the last
      # step is not over-noised (as in the original implementation).
      fixed_large_log_variance=np.log(np.append(post_var[1], betas[1:])),
  )
  return Schedule(**{k: jnp.asarray(v, jnp.float32) for k, v in arrays.items()})


def _at(a_T: jax.Array, t_B: jax.Array, x_B: jax.Array) -> jax.Array:
  """a[t] broadcast against x's trailing dimensions."""
  return a_T[t_B].reshape((-1,) + (1,) * (x_B.ndim - 1))


def q_sample(s: Schedule, x0: jax.Array, t_B: jax.Array, noise: jax.Array) -> jax.Array:
  """A draw of x_t ~ q(x_t | x_0) given the standard-normal `noise`."""
  abar = _at(s.alphas_cumprod, t_B, x0)
  return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * noise


def q_posterior(s: Schedule, x0: jax.Array, xt: jax.Array, t_B: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean and variance of q(x_{t-1} | x_t, x_0)."""
  mean = _at(s.posterior_mean_coef1, t_B, xt) * x0 + _at(s.posterior_mean_coef2, t_B, xt) * xt
  return mean, _at(s.posterior_variance, t_B, xt)


def predict_x0(s: Schedule, xt: jax.Array, t_B: jax.Array, eps: jax.Array) -> jax.Array:
  """x_0 implied by x_t and the predicted noise."""
  abar = _at(s.alphas_cumprod, t_B, xt)
  return (xt - jnp.sqrt(1.0 - abar) * eps) / jnp.sqrt(abar)


def ddim_timesteps(num_timesteps: int, steps: int) -> np.ndarray:
  """`steps` timesteps from T-1 down to 0, evenly spaced."""
  if not 1 <= steps <= num_timesteps:
    raise UserError(f'sample.steps={steps} must be in 1..{num_timesteps} (diffusion.num_timesteps)')
  return np.round(np.linspace(num_timesteps - 1, 0, steps)).astype(np.int32)


def normal_kl(mean1: jax.Array, logvar1: jax.Array, mean2: jax.Array, logvar2: jax.Array) -> jax.Array:
  """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) per element, in nats."""
  return 0.5 * (logvar2 - logvar1 + jnp.exp(logvar1 - logvar2) + jnp.square(mean1 - mean2) * jnp.exp(-logvar2)
                - 1.0)


def _std_normal_cdf(x: jax.Array) -> jax.Array:
  return 0.5 * (1.0 + jax.scipy.special.erf(x / jnp.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x: jax.Array, mean: jax.Array, log_scale: jax.Array) -> jax.Array:
  """log P(x) per element for x on the 256 levels of [-1, 1]: Gaussian mass of x's bin of width 2/255.

  The first and last bins reach out to -inf and +inf, so the masses of the 256 levels sum to 1.
  """
  inv_std = jnp.exp(-log_scale)
  cdf_plus = _std_normal_cdf(inv_std * (x - mean + 1.0 / 255.0))
  cdf_minus = _std_normal_cdf(inv_std * (x - mean - 1.0 / 255.0))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_minus = jnp.log(jnp.maximum(1.0 - cdf_minus, 1e-12))
  log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_minus, 1e-12))
  return jnp.where(x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_minus, log_delta))


class DDPM:
  """Denoising diffusion: `config.model` sizes the UNet, `config.diffusion` the schedule."""

  sample_examples = 0  # sampling needs no held-out data

  def __init__(self, config: ml_collections.ConfigDict, axis_name: str,
               data_info: dict[str, Any] | None = None):
    """`data_info` is unused: the config says all an image model needs of the data."""
    del data_info
    self.check_config(config)
    self.axis_name = axis_name
    self.image_shape = (config.data.image_size, config.data.image_size, config.data.channels)
    m = config.model
    self.model = UNet(ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
                      attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
                      num_groups=m.num_groups, out_ch=config.data.channels,
                      num_classes=m.num_classes, dtype=precision.compute_dtype(m.dtype))
    self.num_classes = m.num_classes  # the null class (no label) is label num_classes
    self.label_dropout = m.label_dropout
    d = config.diffusion
    self.schedule = linear_schedule(d.num_timesteps, d.beta_start, d.beta_end)
    self.tx, self.lr_schedule = optim.create(config.optim, config.training.num_train_steps)
    self.ema_rate = config.training.ema_rate
    self.sample_cfg = config.sample
    self.eval_bits_per_dim = config.eval.bits_per_dim

  @staticmethod
  def check_config(config: ml_collections.ConfigDict) -> None:
    """The UNet's shape constraints and the sampler settings, checked before any data load or compile."""
    _validate_unet(config.model, config.data.image_size)
    precision.compute_dtype(config.model.dtype)
    _validate_conditioning(config.model, config.sample, config.eval)
    if config.sample.method not in ('ancestral', 'ddim'):
      raise UserError(f"sample.method={config.sample.method!r} is unknown: use 'ancestral' or 'ddim'")
    if config.sample.method == 'ddim':
      ddim_timesteps(config.diffusion.num_timesteps, config.sample.steps)
      if not 0.0 <= config.sample.eta <= 1.0:  # past 1 the DDIM step's noise outweighs its variance: NaN images
        raise UserError(f'sample.eta={config.sample.eta} must be in [0, 1] (0: deterministic DDIM, 1: as noisy '
                        'as the ancestral sampler)')
      if config.sample.ddim_eps not in ('auto', 'model', 'clipped'):
        raise UserError(f"sample.ddim_eps={config.sample.ddim_eps!r} is unknown: use 'model', 'clipped' or 'auto'")

  def init(self, rng: jax.Array) -> state_lib.TrainState:
    x = jnp.zeros((1,) + self.image_shape, jnp.float32)
    zeros = jnp.zeros((1,), jnp.int32)
    params = self.model.init({'params': rng}, x, zeros, train=False,
                             label_B=zeros if self.num_classes else None)['params']
    return state_lib.create(params, self.tx, jax.random.fold_in(rng, 1))

  def _labels(self, batch: dict[str, Any]) -> jax.Array | None:
    """The batch's class labels for a class-conditional model, None for an unconditional one."""
    if not self.num_classes:
      return None
    if 'label' not in batch:
      raise UserError(f'model.num_classes={self.num_classes} needs labelled images, but this data source has '
                      'none: use one with labels (an .npz needs a `labels` array) or set model.num_classes=0')
    return batch['label']

  def _noised(self, x0: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(x_t, t, noise) with t and noise drawn per example from a key of its global index.

    Keying by the example's position in the global batch makes the loss independent of
    how the batch is split over devices.
    """
    keys = randomness.example_keys(rng, x0.shape[0], self.axis_name)
    t = jax.vmap(lambda k: jax.random.randint(k, (), 0, self.schedule.num_timesteps))(keys)
    noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 1), x0.shape[1:]))(keys)
    return q_sample(self.schedule, x0, t, noise), t, noise

  def train_step(self, state: state_lib.TrainState, batch: dict[str, Any],
                 rng: jax.Array) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
    rng_noise, rng_dropout = jax.random.split(rng)
    xt, t, noise = self._noised(batch['image'], rng_noise)
    rng_dropout = jax.random.fold_in(rng_dropout, jax.lax.axis_index(self.axis_name))
    label_B = self._labels(batch)
    if label_B is not None:  # the null class in place of some labels teaches the unconditional model
      label_B = guidance.drop_labels(label_B, jax.random.fold_in(rng, 2), self.label_dropout, self.num_classes,
                                     self.axis_name)

    def loss_fn(params):
      eps = self.model.apply({'params': params}, xt, t, train=True, label_B=label_B, rngs={'dropout': rng_dropout})
      return jnp.mean(jnp.square(eps - noise))

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    grads = jax.lax.pmean(grads, self.axis_name)
    new_state = state_lib.apply_gradients(state, grads, self.tx, self.ema_rate)
    metrics = {'loss': jax.lax.pmean(loss, self.axis_name), 'grad_norm': optax.global_norm(grads),
               'lr': self.lr_schedule(state.step)}
    return new_state, metrics

  def eval_step(self, state: state_lib.TrainState, batch: dict[str, Any],
                rng: jax.Array) -> dict[str, jax.Array]:
    """The denoising loss of the EMA parameters on held-out images, and their bound in bits/dim.

    A class-conditional model is judged given each image's label: -log p(x | c).
    """
    xt, t, noise = self._noised(batch['image'], rng)
    label_B = self._labels(batch)
    eps = self.model.apply({'params': state.ema_params}, xt, t, train=False, label_B=label_B)
    metrics = {'loss': jnp.mean(jnp.square(eps - noise))}
    if self.eval_bits_per_dim:
      metrics.update(self.bits_per_dim(state.ema_params, batch['image'], jax.random.fold_in(rng, 1), label_B))
    return jax.lax.pmean(metrics, self.axis_name)

  def bits_per_dim(self, params: Any, x0: jax.Array, rng: jax.Array,
                   label_B: jax.Array | None = None) -> dict[str, jax.Array]:
    """The variational bound -log p(x_0) <= L_T + sum_{t>1} L_{t-1} + L_0 of Ho et al., in bits/dim.

    L_T = KL(q(x_T|x_0) || N(0, I)); L_{t-1} = KL(q(x_{t-1}|x_t, x_0) || p(x_{t-1}|x_t)) with
    the sampler's clipped x_0 prediction and fixed-large variance, at one x_t ~ q(x_t|x_0) per
    image and t; L_0 = -log p(x_0|x_1) under the discretized Gaussian decoder. Every
    timestep is visited (one network call each, in a scan); noise is keyed by the example's
    global index, as in training, so the result does not depend on the device split. With
    `label_B` (class-conditional models) it bounds -log p(x_0 | label).
    """
    s = self.schedule
    B, T = x0.shape[0], s.num_timesteps
    keys = randomness.example_keys(rng, B, self.axis_name)
    log2_dims = np.log(2.0) * np.prod(x0.shape[1:])

    def per_image(a):
      return jnp.sum(a, axis=tuple(range(1, a.ndim))) / log2_dims

    def term(t):
      t_B = jnp.full((B,), t, jnp.int32)
      noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, t), x0.shape[1:]))(keys)
      xt = q_sample(s, x0, t_B, noise)
      eps = self.model.apply({'params': params}, xt, t_B, train=False, label_B=label_B)
      x0_hat = jnp.clip(predict_x0(s, xt, t_B, eps), -1.0, 1.0)
      model_mean, _ = q_posterior(s, x0_hat, xt, t_B)
      model_logvar = s.fixed_large_log_variance[t]
      true_mean, true_var = q_posterior(s, x0, xt, t_B)
      kl = per_image(normal_kl(true_mean, jnp.log(true_var), model_mean, model_logvar))
      nll = -per_image(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar))
      return jnp.where(t == 0, nll, kl)

    terms_TB = jax.lax.map(term, jnp.arange(T))
    abar_T = s.alphas_cumprod[-1]
    prior_B = per_image(normal_kl(jnp.sqrt(abar_T) * x0, jnp.log(1.0 - abar_T), 0.0, 0.0))
    return {'bits_per_dim': jnp.mean(prior_B + jnp.sum(terms_TB, axis=0)),
            'bpd_prior': jnp.mean(prior_B), 'bpd_decoder': jnp.mean(terms_TB[0])}

  def eval_summary(self, means: dict[str, float]) -> dict[str, float]:
    """The batch-averaged loss is the final metric."""
    return means

  def sample(self, state: state_lib.TrainState, rng: jax.Array, num: int) -> dict[str, jax.Array]:
    """`num` images from the EMA parameters with `config.sample.method`, one jitted loop.

    A class-conditional model draws the classes `sample.labels` (default: all, evenly) with
    guidance scale `sample.guidance_scale`; the labels come back beside the images.
    """
    params = state.ema_params

    def apply(x, t_B, label_B=None):
      return self.model.apply({'params': params}, x, t_B, train=False, label_B=label_B)

    if not self.num_classes:
      return {'images': to_uint8(self.denoise(apply, rng, num))}
    classes = tuple(self.sample_cfg.labels) or tuple(range(self.num_classes))
    label_B = guidance.sample_labels(num, classes, self.axis_name)
    scale = self.sample_cfg.guidance_scale
    x = self.denoise(lambda x, t_B: guidance.guided_eps(apply, x, t_B, label_B, scale, self.num_classes), rng, num)
    return {'images': to_uint8(x), 'labels': label_B}

  def denoise(self, eps_fn: Callable[[jax.Array, jax.Array], jax.Array], rng: jax.Array, num: int) -> jax.Array:
    """`num` samples in [-1, 1] by `config.sample.method`, with the noise predicted by `eps_fn(x_t, t_B)`."""
    s = self.schedule
    x = jax.random.normal(rng, (num,) + self.image_shape)
    if self.sample_cfg.method == 'ancestral':
      def body(i, x):
        t = s.num_timesteps - 1 - i
        t_B = jnp.full((num,), t, jnp.int32)
        x0 = jnp.clip(predict_x0(s, x, t_B, eps_fn(x, t_B)), -1.0, 1.0)
        mean, _ = q_posterior(s, x0, x, t_B)
        z = jax.random.normal(jax.random.fold_in(rng, t), x.shape)
        return mean + (t > 0) * jnp.exp(0.5 * s.fixed_large_log_variance[t]) * z
      x = jax.lax.fori_loop(0, s.num_timesteps, body, x)
    else:
      ts = jnp.asarray(ddim_timesteps(s.num_timesteps, self.sample_cfg.steps))
      abar_S = s.alphas_cumprod[ts]
      abar_prev_S = jnp.append(abar_S[1:], 1.0)
      eta = self.sample_cfg.eta
      clipped_eps = _ddim_clipped_eps(self.sample_cfg)

      def body(i, x):
        t_B = jnp.full((num,), ts[i], jnp.int32)
        abar, abar_prev = abar_S[i], abar_prev_S[i]
        eps = eps_fn(x, t_B)
        x0 = jnp.clip(predict_x0(s, x, t_B, eps), -1.0, 1.0)
        if clipped_eps:
          eps = (x - jnp.sqrt(abar) * x0) / jnp.sqrt(1.0 - abar)
        sigma = eta * jnp.sqrt((1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev))
        z = jax.random.normal(jax.random.fold_in(rng, i), x.shape)
        return jnp.sqrt(abar_prev) * x0 + jnp.sqrt(1.0 - abar_prev - sigma**2) * eps + sigma * z
      x = jax.lax.fori_loop(0, ts.shape[0], body, x)
    return x

  def decode_samples(self, samples: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The uint8 images (and a conditional model's requested labels) are written as they are."""
    return samples


def _ddim_clipped_eps(sample: ml_collections.ConfigDict) -> bool:
  """Whether DDIM steps with the noise that the clipped x_0 implies rather than the model's own.

  Measured on configs/ddpm_digits_cond.py (class accuracy, FID under the digits classifier): the model's
  noise is better unguided (0.996 / 1.44 against 0.681 / 11.1 at w = 0), the implied noise under strong
  guidance, where the model's noise beside a clipped x_0 drives x_t off the forward path (0.282 / 47.6
  against 1.000 / 0.61 at w = 3); 'auto' takes the implied noise for w > 1.
  """
  if sample.ddim_eps == 'auto':
    return sample.guidance_scale > 1.0
  return sample.ddim_eps == 'clipped'


def _validate_unet(m: ml_collections.ConfigDict, image_size: int) -> None:
  """Shape constraints of the UNet, checked before anything compiles."""
  down = 2 ** (len(m.ch_mult) - 1)
  if image_size % down:
    raise UserError(f'data.image_size={image_size} must be divisible by {down} = 2**(len(model.ch_mult)-1) '
                    f'for model.ch_mult={tuple(m.ch_mult)}: change one of them')
  if m.ch < 4:
    raise UserError(f'model.ch={m.ch} must be >= 4: the sinusoidal time embedding, model.ch wide, needs two '
                    'frequencies of sine and cosine')
  for width in {m.ch * k for k in m.ch_mult}:
    if width % m.num_groups:
      raise UserError(f'model.num_groups={m.num_groups} must divide every level width '
                      f'(model.ch * model.ch_mult = {width}): change model.num_groups or model.ch')
  resolutions = [image_size // 2**i for i in range(len(m.ch_mult))]
  for r in m.attn_resolutions:
    if r not in resolutions:
      raise UserError(f'model.attn_resolutions contains {r}, but the UNet levels have resolutions '
                      f'{resolutions}: pick from those')


def _validate_conditioning(m: ml_collections.ConfigDict, s: ml_collections.ConfigDict,
                           e: ml_collections.ConfigDict) -> None:
  """Class conditioning and guidance settings, checked before anything compiles."""
  if m.num_classes < 0:
    raise UserError(f'model.num_classes={m.num_classes} must be >= 0 (0: unconditional)')
  if not 0.0 <= m.label_dropout < 1.0:
    raise UserError(f'model.label_dropout={m.label_dropout} must be in [0, 1)')
  if not m.num_classes:
    if s.guidance_scale or s.labels:
      raise UserError('sample.guidance_scale and sample.labels need a class-conditional model: set '
                      'model.num_classes (e.g. configs/ddpm_digits_cond.py) or leave them at 0 and ()')
    return
  if s.guidance_scale and not m.label_dropout:
    raise UserError(f'sample.guidance_scale={s.guidance_scale} needs the unconditional model, which training '
                    'teaches only with model.label_dropout > 0 (e.g. 0.1): set it, or sample.guidance_scale=0')
  if s.guidance_scale < -1.0:
    raise UserError(f'sample.guidance_scale={s.guidance_scale} must be >= -1 (0: the conditional model alone, '
                    '-1: the unconditional one)')
  bad = [c for c in s.labels if not 0 <= c < m.num_classes]
  if bad:
    raise UserError(f'sample.labels has {bad}, outside the classes 0..{m.num_classes - 1} of model.num_classes')
  num_drawn = len(s.labels) or m.num_classes
  if max(e.num_samples, e.num_samples_in_training) > e.sample_batch and e.sample_batch % num_drawn:
    raise UserError(f'eval.sample_batch={e.sample_batch} must be a multiple of the {num_drawn} classes drawn: '
                    'each sampler call cycles through them, so that the samples judged are class-balanced')
