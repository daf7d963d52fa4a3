"""DDPM (Ho et al. 2020) in pixel space: the denoising loss, the variational bound at eval, and the samplers.

The diffusion itself (schedule, parameterization, forward process, bound, guidance,
samplers) is the `aigc_jax.diffusion` package; this method is the pixel-space model on top:
a UNet that predicts the noise of x_t. With `model.num_classes` > 0 the UNet is
class-conditional, trained with label dropout and sampled with classifier-free guidance.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from aigc_jax.diffusion import bound
from aigc_jax.diffusion import guidance
from aigc_jax.diffusion import prediction
from aigc_jax.diffusion import process
from aigc_jax.diffusion import samplers
from aigc_jax.diffusion import schedules
from aigc_jax.methods import labels
from aigc_jax.methods import precision
from aigc_jax.methods.base import Batch
from aigc_jax.methods.base import Method
from aigc_jax.methods.base import Metrics
from aigc_jax.methods.pixels import to_uint8
from aigc_jax.models.unet import UNet
from aigc_jax.randomness import Rng
from aigc_jax.rules import Rule
from aigc_jax.rules import one_of
from aigc_jax.train.state import TrainState


def _level_resolutions(c: Any) -> list[int]:
  return [c.data.image_size // 2**i for i in range(len(c.model.ch_mult))]


def _bad_widths(c: Any) -> list[int]:
  return [w for w in sorted({c.model.ch * k for k in c.model.ch_mult}) if w % c.model.num_groups]


def _classes_drawn(c: Any) -> int:
  return len(c.sample.labels) or c.model.num_classes


def noised(schedule: schedules.Schedule, x0: jax.Array, keys_B: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(x_t, t, noise) of a training example, each example's t and noise drawn from its own key."""
  t_B = jax.vmap(lambda k: jax.random.randint(k, (), 0, schedule.num_timesteps))(keys_B)
  noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 1), x0.shape[1:]))(keys_B)
  return process.q_sample(schedule, x0, t_B, noise), t_B, noise


UNET_RULES = (
    Rule('data.image_size', lambda c: c.data.image_size % 2 ** (len(c.model.ch_mult) - 1) == 0,
         lambda c: f'data.image_size={c.data.image_size} must be divisible by {2 ** (len(c.model.ch_mult) - 1)} = '
                   f'2**(len(model.ch_mult)-1) for model.ch_mult={tuple(c.model.ch_mult)}: change one of them'),
    Rule('model.ch', lambda c: c.model.ch >= 4,
         'model.ch={model.ch} must be >= 4: the sinusoidal time embedding, model.ch wide, needs two frequencies of '
         'sine and cosine'),
    Rule('model.num_groups', lambda c: not _bad_widths(c),
         lambda c: f'model.num_groups={c.model.num_groups} must divide every level width (model.ch * model.ch_mult '
                   f'= {_bad_widths(c)[0]}): change model.num_groups or model.ch'),
    Rule('model.attn_resolutions', lambda c: set(c.model.attn_resolutions) <= set(_level_resolutions(c)),
         lambda c: f'model.attn_resolutions contains '
                   f'{min(set(c.model.attn_resolutions) - set(_level_resolutions(c)))}, but the UNet levels have '
                   f'resolutions {_level_resolutions(c)}: pick from those'),
    Rule('model.dtype', lambda c: c.model.dtype in precision.CHOICES,
         lambda c: f'model.dtype={c.model.dtype!r} is unknown: use one of {", ".join(precision.CHOICES)}'),
)

CONDITIONING_RULES = (
    Rule('model.num_classes', lambda c: c.model.num_classes >= 0,
         'model.num_classes={model.num_classes} must be >= 0 (0: unconditional)'),
    Rule('model.label_dropout', lambda c: 0.0 <= c.model.label_dropout < 1.0,
         'model.label_dropout={model.label_dropout} must be in [0, 1)'),
    Rule('sample.guidance_scale', lambda c: c.model.num_classes or not (c.sample.guidance_scale or c.sample.labels),
         'sample.guidance_scale and sample.labels need a class-conditional model: set model.num_classes (e.g. '
         'configs/ddpm_digits_cond.py) or leave them at 0 and ()'),
    Rule('sample.guidance_scale', lambda c: not (c.model.num_classes and c.sample.guidance_scale)
         or c.model.label_dropout,
         'sample.guidance_scale={sample.guidance_scale} needs the unconditional model, which training teaches only '
         'with model.label_dropout > 0 (e.g. 0.1): set it, or sample.guidance_scale=0'),
    Rule('sample.guidance_scale', lambda c: c.sample.guidance_scale >= -1.0,
         'sample.guidance_scale={sample.guidance_scale} must be >= -1 (0: the conditional model alone, -1: the '
         'unconditional one)'),
    Rule('sample.labels', lambda c: all(0 <= k < c.model.num_classes for k in c.sample.labels),
         lambda c: f'sample.labels has {[k for k in c.sample.labels if not 0 <= k < c.model.num_classes]}, outside '
                   f'the classes 0..{c.model.num_classes - 1} of model.num_classes'),
    # each sampler call cycles through the classes, so that the samples judged are class-balanced
    Rule('eval.sample_batch', lambda c: not c.model.num_classes or c.eval.sample_batch % _classes_drawn(c) == 0
         or max(c.eval.num_samples, c.eval.num_samples_in_training) <= c.eval.sample_batch,
         lambda c: f'eval.sample_batch={c.eval.sample_batch} must be a multiple of the {_classes_drawn(c)} classes '
                   'drawn: each sampler call cycles through them, so that the samples judged are class-balanced'),
)


class DDPM(Method):
  """Denoising diffusion: `config.model` sizes the UNet, `config.diffusion` the process, `config.sample` the sampler."""

  RULES = (*UNET_RULES, *CONDITIONING_RULES, one_of('diffusion.schedule', schedules.SCHEDULES),
           one_of('diffusion.prediction', prediction.PREDICTIONS), samplers.rules)

  def __init__(self, config: ml_collections.ConfigDict, axis_name: str, data_info: dict[str, Any] | None = None,
               parts: dict[str, Any] | None = None):
    super().__init__(config, axis_name, data_info, parts)
    self.image_shape = (config.data.image_size, config.data.image_size, config.data.channels)
    m = config.model
    self.model = UNet(ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
                      attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
                      num_groups=m.num_groups, out_ch=config.data.channels,
                      num_classes=m.num_classes, dtype=precision.compute_dtype(m.dtype))
    self.num_classes = m.num_classes  # the null class (no label) is label num_classes
    self.label_dropout = m.label_dropout
    self.prediction = config.diffusion.prediction
    self.schedule = schedules.from_config(config.diffusion)
    self.sampler = samplers.get(config.sample.method)
    self.sample_cfg = config.sample
    self.eval_bits_per_dim = config.eval.bits_per_dim

  def init(self, rng: jax.Array) -> tuple[Any, Any]:
    x_BHWC = jnp.zeros((1,) + self.image_shape, jnp.float32)
    zeros_B = jnp.zeros((1,), jnp.int32)
    params = self.model.init({'params': rng}, x_BHWC, zeros_B, train=False,
                             labels_B=zeros_B if self.num_classes else None)['params']
    return params, {}

  def _labels(self, batch: Batch) -> jax.Array | None:
    """The batch's class labels for a class-conditional model, None for an unconditional one."""
    if not self.num_classes:
      return None
    return labels.of(batch, f'model.num_classes={self.num_classes}', ' or set model.num_classes=0')

  def _noised(self, x0_BHWC: jax.Array, keys_B: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    return noised(self.schedule, x0_BHWC, keys_B)

  def loss(self, params: Any, batch: Batch, rng: Rng, model_state: Any) -> tuple[jax.Array, tuple[Metrics, Any]]:
    """The MSE between the network's output and its target (the noise) at one random timestep per image."""
    noise_rng, dropout_rng = rng.split()
    x0_BHWC = batch['images']
    xt, t_B, noise = self._noised(x0_BHWC, noise_rng.examples(x0_BHWC.shape[0]))
    labels_B = self._labels(batch)
    if labels_B is not None:  # the null class in place of some labels teaches the unconditional model
      labels_B = labels.drop(labels_B, rng.fold_in(2).examples(labels_B.shape[0]), self.label_dropout,
                             self.num_classes)
    out = self.model.apply({'params': params}, xt, t_B, train=True, labels_B=labels_B,
                           rngs={'dropout': dropout_rng.device()})
    target = prediction.target(self.prediction, self.schedule, x0_BHWC, t_B, noise)
    return jnp.mean(jnp.square(out - target)), ({}, model_state)

  def _denoiser(self, params: Any, labels_B: jax.Array | None = None) -> prediction.Denoiser:
    """eps(x_t, t_B) of the network with `params` (given the labels, for a class-conditional one)."""
    return prediction.denoiser(self.prediction, self.schedule, lambda x, t_B: self.model.apply(
        {'params': params}, x, t_B, train=False, labels_B=labels_B))

  def eval_step(self, state: TrainState, batch: Batch, rng: Rng) -> Metrics:
    """The denoising loss of the EMA parameters on held-out images, and their bound in bits/dim, per image.

    A class-conditional model is judged given each image's label: -log p(x | c).
    """
    x0_BHWC = batch['images']
    B = x0_BHWC.shape[0]
    xt, t_B, noise = self._noised(x0_BHWC, rng.examples(B))
    eps_fn = self._denoiser(state.ema_params, self._labels(batch))
    metrics = {'loss': jnp.mean(jnp.square(eps_fn(xt, t_B) - noise), axis=(1, 2, 3))}
    if self.eval_bits_per_dim:
      metrics.update(bound.bits_per_dim(eps_fn, self.schedule, x0_BHWC, rng.fold_in(1).examples(B)))
    return metrics

  def sample(self, state: TrainState, rng: jax.Array, num: int) -> dict[str, jax.Array]:
    """`num` images from the EMA parameters with the sampler `sample.method`, one jitted loop.

    A class-conditional model draws the classes `sample.labels` (default: all, evenly) with
    guidance scale `sample.guidance_scale`; the labels come back beside the images.
    """
    shape = (num,) + self.image_shape
    if not self.num_classes:
      return {'images': to_uint8(self.sampler(self._denoiser(state.ema_params), self.schedule, shape, rng,
                                              self.sample_cfg))}
    classes = tuple(self.sample_cfg.labels) or tuple(range(self.num_classes))
    labels_B = labels.cycled(num, classes, self.axis_name)
    eps_fn = guidance.guided(lambda x, t_B, c_B: self._denoiser(state.ema_params, c_B)(x, t_B), labels_B,
                             self.sample_cfg.guidance_scale, self.num_classes)
    x = self.sampler(eps_fn, self.schedule, shape, rng, self.sample_cfg)
    return {'images': to_uint8(x), 'labels': labels_B}
