"""Generative adversarial networks (Goodfellow et al. 2014; DCGAN, Radford et al. 2015).

A discriminator D (one logit l per image, D = sigmoid(l)) and a generator G of images from
noise z ~ N(0, I) play the minimax game; each training step first updates D on the real
batch and as many fakes, then G on fresh noise against the updated D (two phases of the shared
train step), each with its own optimizer of the settings of `config.optim`. The losses
(`gan.loss`), from logits so that no sigmoid saturates to log(0):

  minimax, non_saturating   L_D = -E[log D(x)] - E[log(1 - D(G(z)))]
                                = E[softplus(-l_real)] + E[softplus(l_fake)]
  non_saturating            L_G = -E[log D(G(z))] = E[softplus(-l_fake)]
  minimax                   L_G = E[log(1 - D(G(z)))] = -E[softplus(l_fake)]
  hinge                     L_D = E[relu(1 - l_real)] + E[relu(1 + l_fake)],  L_G = -E[l_fake]

BatchNorm (DCGAN) normalizes each forward pass by its own batch, the real and the fake ones
apart, with statistics averaged over the devices, so the step does not depend on how the
batch is split; its running averages (the train state's `model_state`) are what sampling
and evaluation use. The D step updates only D's parameters, optimizer state and statistics,
the G step only G's (and the EMA of G's parameters, which samples come from).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from aigc_jax.methods.base import Batch
from aigc_jax.methods.base import Method
from aigc_jax.methods.base import Metrics
from aigc_jax.methods.base import Phase
from aigc_jax.methods.pixels import to_uint8
from aigc_jax.models import gan as gan_models
from aigc_jax.randomness import Rng
from aigc_jax.rules import Rule
from aigc_jax.rules import one_of
from aigc_jax.train.state import TrainState

LOSSES = ('non_saturating', 'minimax', 'hinge')
MODEL_KEYS = {'mlp': ('g_hidden', 'd_hidden'), 'dcgan': ('width',)}  # what each model.kind is sized by
G, D = 'generator', 'discriminator'


def discriminator_loss(real_logits_B: jax.Array, fake_logits_B: jax.Array, kind: str) -> jax.Array:
  """L_D of `kind` (see the module docstring) from D's logits on real and generated images."""
  if kind == 'hinge':
    return jnp.mean(jax.nn.relu(1.0 - real_logits_B)) + jnp.mean(jax.nn.relu(1.0 + fake_logits_B))
  return jnp.mean(jax.nn.softplus(-real_logits_B)) + jnp.mean(jax.nn.softplus(fake_logits_B))


def generator_loss(fake_logits_B: jax.Array, kind: str) -> jax.Array:
  """L_G of `kind` (see the module docstring) from D's logits on generated images."""
  if kind == 'non_saturating':
    return jnp.mean(jax.nn.softplus(-fake_logits_B))
  if kind == 'minimax':
    return -jnp.mean(jax.nn.softplus(fake_logits_B))
  return -jnp.mean(fake_logits_B)


def build_models(config: ml_collections.ConfigDict, axis_name: str | None) -> tuple[nn.Module, nn.Module]:
  """The generator and discriminator `config.model` describes; BatchNorm averages over `axis_name`."""
  m, d = config.model, config.data
  shape = (d.image_size, d.image_size, d.channels)
  if m.kind == 'mlp':
    return (gan_models.MLPGenerator(shape, tuple(m.g_hidden)), gan_models.MLPDiscriminator(tuple(m.d_hidden)))
  return (gan_models.DCGANGenerator(shape, m.width, axis_name),
          gan_models.DCGANDiscriminator(m.width, axis_name))


def _split_variables(variables: dict[str, Any]) -> tuple[Any, Any]:
  """(params, the other collections: BatchNorm statistics or {})."""
  return variables['params'], {k: v for k, v in variables.items() if k != 'params'}


def _missing_model_keys(c: Any) -> list[str]:
  return [k for k in MODEL_KEYS[c.model.kind] if k not in c.model]


class GAN(Method):
  """A GAN: `config.model` picks and sizes the networks ('mlp' or 'dcgan'), `config.gan` the loss."""

  RULES = (
      one_of('model.kind', MODEL_KEYS),
      Rule('model.kind', lambda c: not _missing_model_keys(c),
           lambda c: f'model.kind={c.model.kind!r} needs model.{", model.".join(_missing_model_keys(c))}: start from '
                     f'configs/{"gan_mnist" if c.model.kind == "mlp" else "dcgan_mnist"}.py'),
      Rule('data.image_size', lambda c: c.model.kind != 'dcgan' or (
          c.data.image_size >= 8 and not c.data.image_size & (c.data.image_size - 1)),
           'data.image_size={data.image_size}: the DCGAN needs a power of two >= 8 (e.g. 32; MNIST: data.pad=2 makes '
           'its 28x28 digits 32x32)'),
      Rule('model.latents', lambda c: c.model.latents >= 1, 'model.latents={model.latents} must be positive'),
      one_of('gan.loss', LOSSES),
      Rule('training.ema_rate', lambda c: 0.0 <= c.training.ema_rate < 1.0,
           'training.ema_rate={training.ema_rate} must be in [0, 1) (0: no EMA)'),
  )

  def __init__(self, config: ml_collections.ConfigDict, axis_name: str, data_info: dict[str, Any] | None = None,
               parts: dict[str, Any] | None = None):
    super().__init__(config, axis_name, data_info, parts)
    self.image_shape = (config.data.image_size, config.data.image_size, config.data.channels)
    self.latents = config.model.latents
    self.loss_kind = config.gan.loss
    self.generator, self.discriminator = build_models(config, axis_name)

  @property
  def phases(self) -> tuple[Phase, Phase]:
    """D on the real batch and as many fakes, then G on fresh noise against the updated D; the EMA follows G."""
    return (Phase(self.discriminator_loss, network=D, name='d', ema=False),
            Phase(self.generator_loss, network=G, name='g'))

  def init(self, rng: jax.Array) -> tuple[Any, Any]:
    """Both networks' parameters and statistics."""
    rng_g, rng_d = jax.random.split(rng)
    params_g, stats_g = _split_variables(self.generator.init(
        {'params': rng_g}, jnp.zeros((1, self.latents)), train=False))
    params_d, stats_d = _split_variables(self.discriminator.init(
        {'params': rng_d}, jnp.zeros((1,) + self.image_shape), train=False))
    return {G: params_g, D: params_d}, {G: stats_g, D: stats_d}

  def noise(self, keys_B: jax.Array) -> jax.Array:
    """z [B, Z] ~ N(0, I), each row from its example's key."""
    return jax.vmap(lambda k: jax.random.normal(k, (self.latents,)))(keys_B)

  def generate(self, params: Any, stats: Any, z_BZ: jax.Array, train: bool) -> tuple[jax.Array, Any]:
    """G(z) [B, H, W, C] in [-1, 1], and G's statistics (updated by the batch when `train`)."""
    if not train:
      return self.generator.apply({'params': params, **stats}, z_BZ, train=False), stats
    return self.generator.apply({'params': params, **stats}, z_BZ, train=True, mutable=list(stats))

  def discriminate(self, params: Any, stats: Any, x_BHWC: jax.Array, train: bool) -> tuple[jax.Array, Any]:
    """D's logits [B], and D's statistics (updated by the batch when `train`)."""
    if not train:
      return self.discriminator.apply({'params': params, **stats}, x_BHWC, train=False), stats
    return self.discriminator.apply({'params': params, **stats}, x_BHWC, train=True, mutable=list(stats))

  def discriminator_loss(self, params: Any, batch: Batch, rng: Rng,
                         model_state: Any) -> tuple[jax.Array, tuple[Metrics, Any]]:
    """L_D on the real batch and as many fakes of G (in training mode, its statistics left as they are).

    Metrics are of D before the update: mean D(x) and D(G(z)), and its accuracy (real logits > 0, fake ones < 0).
    """
    x_real = batch['images']
    s = model_state
    x_fake, _ = self.generate(params[G], s[G], self.noise(rng.examples(x_real.shape[0])), train=True)
    x_fake = jax.lax.stop_gradient(x_fake)
    real_B, stats = self.discriminate(params[D], s[D], x_real, train=True)
    fake_B, stats = self.discriminate(params[D], stats, x_fake, train=True)
    metrics = {'d_real': jnp.mean(jax.nn.sigmoid(real_B)), 'd_fake': jnp.mean(jax.nn.sigmoid(fake_B)),
               'd_accuracy': 0.5 * (jnp.mean(real_B > 0) + jnp.mean(fake_B < 0))}
    return discriminator_loss(real_B, fake_B, self.loss_kind), (metrics, {**s, D: stats})

  def generator_loss(self, params: Any, batch: Batch, rng: Rng,
                     model_state: Any) -> tuple[jax.Array, tuple[Metrics, Any]]:
    """L_G on as many fakes as the batch has real images; D judges them in training mode, its statistics kept.

    Metrics are of G before the update: mean D(G(z)).
    """
    s = model_state
    z_BZ = self.noise(rng.examples(batch['images'].shape[0]))
    x_fake, stats = self.generate(params[G], s[G], z_BZ, train=True)
    fake_B, _ = self.discriminate(params[D], s[D], x_fake, train=True)
    return (generator_loss(fake_B, self.loss_kind),
            ({'d_fake_g_step': jnp.mean(jax.nn.sigmoid(fake_B))}, {**s, G: stats}))

  def eval_step(self, state: TrainState, batch: Batch, rng: Rng) -> Metrics:
    """Per pair of a held-out real image and a sample of the EMA generator: D's losses, D(x), D(G(z)), accuracy.

    Both networks in inference mode (BatchNorm's running statistics).
    """
    x_real = batch['images']
    p, s = state.params, state.model_state
    x_fake, _ = self.generate(state.ema_params, s[G], self.noise(rng.examples(x_real.shape[0])), train=False)
    real_B, _ = self.discriminate(p[D], s[D], x_real, train=False)
    fake_B, _ = self.discriminate(p[D], s[D], x_fake, train=False)
    per_pair = jax.vmap(lambda r, f: (discriminator_loss(r[None], f[None], self.loss_kind),
                                      generator_loss(f[None], self.loss_kind)))
    d_loss_B, g_loss_B = per_pair(real_B, fake_B)
    return {'d_loss': d_loss_B, 'g_loss': g_loss_B, 'd_real': jax.nn.sigmoid(real_B),
            'd_fake': jax.nn.sigmoid(fake_B), 'd_accuracy': 0.5 * ((real_B > 0) + (fake_B < 0).astype(jnp.float32))}

  def sample(self, state: TrainState, rng: jax.Array, num: int) -> dict[str, jax.Array]:
    """`num` images G(z), z ~ N(0, I), from the EMA generator with BatchNorm's running statistics."""
    z_BZ = jax.random.normal(rng, (num, self.latents))
    x, _ = self.generate(state.ema_params, state.model_state[G], z_BZ, train=False)
    return {'images': to_uint8(x)}
