"""The KL-regularized autoencoder of latent diffusion (Rombach et al. 2022), in the VAE family, with an optional
patch discriminator from the GAN family.

Per example, with z drawn from q(z|x) by the reparameterization trick and P = H W C pixels:

  loss = rec(x, D(z)) + kl_weight * KL(q(z|x) || N(0, I)) / P  [+ disc_weight * (-mean patch logit of D(z))]

rec is the mean per-pixel L1 or squared error (`autoencoder.reconstruction`); dividing the KL,
summed over the latents, by P keeps Stable Diffusion's balance of a loss summed over pixels with
kl_weight 1e-6, so the KL only keeps the latents from drifting in scale. With
`autoencoder.disc_weight` > 0 a PatchGAN discriminator is a second network, trained by the hinge
loss after the autoencoder in each step (a second phase of the shared step); both adversarial
terms count from step `autoencoder.disc_start` on (before it they are weighted 0), as SD's
`disc_start`. SD weights its generator term adaptively by gradient norms; here the weight is fixed.

The latents' standard deviation over the training data (all elements of the drawn z, as SD
computes its scale factor) is tracked as a running average of each batch's first two moments
(rate `autoencoder.latent_std_rate`, debiased), kept in the model state and so saved with every
checkpoint; a latent diffusion run takes it with the params (`part_variables`) and scales the
latents by 1 / std. Eval reports the reconstruction of the posterior mean: its loss, PSNR on the
uint8 images, and the KL.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from aigc_jax.methods import gan
from aigc_jax.methods import vae
from aigc_jax.methods.base import Batch
from aigc_jax.methods.base import Method
from aigc_jax.methods.base import Metrics
from aigc_jax.methods.base import Phase
from aigc_jax.methods.pixels import to_uint8
from aigc_jax.models import autoencoder as models
from aigc_jax.randomness import Rng
from aigc_jax.rules import Rule
from aigc_jax.rules import one_of
from aigc_jax.train.state import TrainState

RECONSTRUCTIONS = ('l1', 'l2')
AE, DISC = 'autoencoder', 'discriminator'
MOMENTS = 'latent_moments'  # model state: running [weight, E z, E z^2] of the drawn latents


def downsampling(config: ml_collections.ConfigDict) -> int:
  """The factor f between image and latent sides: 2 ** (len(model.ch_mult) - 1)."""
  return 2 ** (len(config.model.ch_mult) - 1)


def latent_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """[H/f, W/f, Z] of an autoencoder run's config."""
  side = config.data.image_size // downsampling(config)
  return (side, side, config.model.z_channels)


def _bad_widths(c: Any) -> list[int]:
  return [w for w in sorted({c.model.ch * k for k in c.model.ch_mult}) if w % c.model.num_groups]


class Autoencoder(Method):
  """`config.model` sizes the autoencoder and discriminator, `config.autoencoder` the loss."""

  RULES = (
      one_of('autoencoder.reconstruction', RECONSTRUCTIONS),
      Rule('data.image_size', lambda c: c.data.image_size % (2 ** (len(c.model.ch_mult) - 1)) == 0,
           lambda c: f'data.image_size={c.data.image_size} must be divisible by {downsampling(c)} = '
                     f'2**(len(model.ch_mult)-1) for model.ch_mult={tuple(c.model.ch_mult)}: change one of them'),
      Rule('model.num_groups', lambda c: not _bad_widths(c),
           lambda c: f'model.num_groups={c.model.num_groups} must divide every level width (model.ch * '
                     f'model.ch_mult = {_bad_widths(c)[0]}): change model.num_groups or model.ch'),
      Rule('model.z_channels', lambda c: c.model.z_channels >= 1, 'model.z_channels={model.z_channels} must be >= 1'),
      Rule('autoencoder.kl_weight', lambda c: c.autoencoder.kl_weight >= 0 and c.autoencoder.disc_weight >= 0
           and c.autoencoder.disc_start >= 0,
           'autoencoder.kl_weight={autoencoder.kl_weight}, disc_weight={autoencoder.disc_weight} and '
           'disc_start={autoencoder.disc_start} must be >= 0'),
      Rule('autoencoder.latent_std_rate', lambda c: 0.0 <= c.autoencoder.latent_std_rate < 1.0,
           'autoencoder.latent_std_rate={autoencoder.latent_std_rate} must be in [0, 1)'),
  )

  def __init__(self, config: ml_collections.ConfigDict, axis_name: str, data_info: dict[str, Any] | None = None,
               parts: dict[str, Any] | None = None):
    super().__init__(config, axis_name, data_info, parts)
    m, a = config.model, config.autoencoder
    self.image_shape = (config.data.image_size, config.data.image_size, config.data.channels)
    self.latent_shape = latent_shape(config)
    self.model = models.Autoencoder(
        models.Encoder(m.ch, tuple(m.ch_mult), m.num_res_blocks, m.z_channels, m.num_groups),
        models.Decoder(m.ch, tuple(m.ch_mult), m.num_res_blocks, config.data.channels, m.num_groups))
    self.discriminator = models.PatchDiscriminator(m.disc_ch, m.disc_layers) if a.disc_weight > 0 else None
    self.reconstruction = a.reconstruction
    self.kl_weight, self.disc_weight, self.disc_start = a.kl_weight, a.disc_weight, a.disc_start
    self.std_rate = a.latent_std_rate
    self.sample_examples = config.sample.num_examples

  @property
  def phases(self) -> tuple[Phase, ...]:
    """The autoencoder, then (with a discriminator) the discriminator against its new reconstructions."""
    ae = Phase(self.loss, network=AE)
    return (ae,) if self.discriminator is None else (ae, Phase(self.discriminator_loss, network=DISC, name='d',
                                                               ema=False))

  def init(self, rng: jax.Array) -> tuple[Any, Any]:
    rng_ae, rng_d = jax.random.split(rng)
    x = jnp.zeros((1,) + self.image_shape, jnp.float32)
    params = {AE: self.model.init(rng_ae, x, jnp.zeros((1,) + self.latent_shape))['params']}
    if self.discriminator is not None:
      params[DISC] = self.discriminator.init(rng_d, x)['params']
    return params, {MOMENTS: jnp.zeros((3,), jnp.float32)}

  def _reconstruct(self, params: Any, x_BHWC: jax.Array, keys_B: jax.Array) -> tuple[jax.Array, ...]:
    eps = jax.vmap(lambda k: jax.random.normal(k, self.latent_shape))(keys_B)
    return self.model.apply({'params': params[AE]}, x_BHWC, eps)

  def rec_loss(self, x_BHWC: jax.Array, recon_BHWC: jax.Array) -> jax.Array:
    """The mean per-pixel L1 or squared error per example [B]."""
    err = jnp.abs(recon_BHWC - x_BHWC) if self.reconstruction == 'l1' else jnp.square(recon_BHWC - x_BHWC)
    return jnp.mean(err, axis=(1, 2, 3))

  def _adversarial(self, step: jax.Array) -> jax.Array:
    return (step >= self.disc_start).astype(jnp.float32)

  def loss(self, params: Any, batch: Batch, rng: Rng, model_state: Any) -> tuple[jax.Array, tuple[Metrics, Any]]:
    """Reconstruction + weighted KL (+ the adversarial term), and the latents' running moments updated."""
    x = batch['images']
    mean, logvar, z, recon = self._reconstruct(params, x, rng.examples(x.shape[0]))
    rec_B = self.rec_loss(x, recon)
    kl_B = vae.gaussian_kl(mean.reshape(x.shape[0], -1), logvar.reshape(x.shape[0], -1))
    loss = jnp.mean(rec_B + self.kl_weight * kl_B / math.prod(self.image_shape))
    metrics = {'rec': jnp.mean(rec_B), 'kl': jnp.mean(kl_B)}
    if self.discriminator is not None:
      g_loss = gan.generator_loss(self.discriminator.apply({'params': params[DISC]}, recon), 'hinge')
      loss = loss + self.disc_weight * self._adversarial(rng.step) * g_loss
      metrics['g_loss'] = g_loss
    zs = jax.lax.stop_gradient(z)
    batch_moments = jax.lax.pmean(jnp.stack([1.0, jnp.mean(zs), jnp.mean(jnp.square(zs))]), self.axis_name)
    moments = self.std_rate * model_state[MOMENTS] + (1.0 - self.std_rate) * batch_moments
    return loss, (metrics, {**model_state, MOMENTS: moments})

  def discriminator_loss(self, params: Any, batch: Batch, rng: Rng,
                         model_state: Any) -> tuple[jax.Array, tuple[Metrics, Any]]:
    """The hinge loss of real images against the (updated) autoencoder's reconstructions, per patch."""
    x = batch['images']
    _, _, _, recon = self._reconstruct(params, x, rng.examples(x.shape[0]))
    real = self.discriminator.apply({'params': params[DISC]}, x)
    fake = self.discriminator.apply({'params': params[DISC]}, jax.lax.stop_gradient(recon))
    d_loss = gan.discriminator_loss(real, fake, 'hinge')
    return self._adversarial(rng.step) * d_loss, ({'d_hinge': d_loss, 'd_accuracy': 0.5 * (
        jnp.mean(real > 0) + jnp.mean(fake < 0))}, model_state)

  @staticmethod
  def latent_std(model_state: Any) -> jax.Array:
    """The standard deviation of the drawn latents over the training batches seen (1 before any step)."""
    w, m1, m2 = model_state[MOMENTS][0], model_state[MOMENTS][1], model_state[MOMENTS][2]
    var = m2 / jnp.maximum(w, 1e-12) - jnp.square(m1 / jnp.maximum(w, 1e-12))
    return jnp.where(w > 0, jnp.sqrt(jnp.maximum(var, 1e-12)), 1.0)

  def part_variables(self, state: TrainState) -> dict[str, Any]:
    """The EMA autoencoder's params and the latents' standard deviation, which latent diffusion scales by."""
    return {'params': state.ema_params, 'latent_std': self.latent_std(state.model_state)}

  def encode(self, variables: dict[str, Any], x_BHWC: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean, logvar) of q(z|x) under `part_variables`' params."""
    return self.model.apply({'params': variables['params']}, x_BHWC, method=models.Autoencoder.encode)

  def decode(self, variables: dict[str, Any], z: jax.Array) -> jax.Array:
    """Images in about [-1, 1] of latents z under `part_variables`' params."""
    return self.model.apply({'params': variables['params']}, z, method=models.Autoencoder.decode)

  def eval_step(self, state: TrainState, batch: Batch, rng: Rng) -> Metrics:
    """Per held-out image, of the EMA params: the reconstruction of the posterior mean, its PSNR (uint8), the KL."""
    del rng
    x = batch['images']
    variables = self.part_variables(state)
    mean, logvar = self.encode(variables, x)
    recon = self.decode(variables, mean)
    mse_B = jnp.mean(jnp.square(to_uint8(recon).astype(jnp.float32) - to_uint8(x).astype(jnp.float32)),
                     axis=(1, 2, 3))
    return {'rec': self.rec_loss(x, recon), 'psnr': 10.0 * jnp.log10(255.0**2 / jnp.maximum(mse_B, 1e-10)),
            'kl': vae.gaussian_kl(mean.reshape(x.shape[0], -1), logvar.reshape(x.shape[0], -1))}

  def sample(self, state: TrainState, rng: jax.Array, num: int) -> dict[str, jax.Array]:
    """What the decoder makes of latents drawn from N(0, std^2), std the training latents' (no prior is learned)."""
    variables = self.part_variables(state)
    z = variables['latent_std'] * jax.random.normal(rng, (num,) + self.latent_shape)
    return {'images': to_uint8(self.decode(variables, z))}

  def sample_from_examples(self, state: TrainState, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    """Held-out images and their reconstructions from the posterior mean."""
    del rng
    variables = self.part_variables(state)
    x = batch['images']
    return {'originals': to_uint8(x), 'reconstructions': to_uint8(self.decode(variables, self.encode(variables, x)[0]))}

  def decode_samples(self, samples: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {'images': samples['images']}
    if 'originals' in samples:
      out['reconstructions'] = vae.reconstruction_grid(samples['originals'], samples['reconstructions'])
    return out
