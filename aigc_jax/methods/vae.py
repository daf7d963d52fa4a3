"""Variational autoencoder (Kingma & Welling 2014): the negative ELBO, and the IWAE bound at eval.

Training minimizes -log p(x|z) + beta * KL(q(z|x) || N(0, I)) per example: one z drawn with the
reparameterization trick, the KL in closed form, beta ramped linearly from 0 over
`vae.kl_warmup_steps`. p(x|z) is a probability of the data itself (Bernoulli over binarized
pixels, or a logistic discretized to the 256 pixel values), so -ELBO (beta = 1) bounds the
negative log-likelihood: reported in nats per example and in bits per dimension,
nats / (H W C ln 2). Eval adds the importance-weighted bound of Burda et al. (2016) with
k = `eval.iwae_k` samples, log (1/k) sum_i p(x, z_i) / q(z_i|x): tighter than the ELBO, rising
with k toward log p(x); it is the NLL estimate.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from aigc_jax.methods.base import Batch
from aigc_jax.methods.base import Method
from aigc_jax.methods.base import Metrics
from aigc_jax.methods.pixels import to_uint8
from aigc_jax.models import vae as vae_models
from aigc_jax.randomness import Rng
from aigc_jax.rules import Rule
from aigc_jax.rules import one_of
from aigc_jax.train.state import TrainState

LIKELIHOODS = ('bernoulli', 'logistic')
MIN_LOG_SCALE = -7.0  # the logistic's scale stays above exp(-7) (as in PixelCNN++)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def gaussian_kl(mean_BZ: jax.Array, logvar_BZ: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, I)) per example, [B], in closed form."""
  return 0.5 * jnp.sum(jnp.exp(logvar_BZ) + jnp.square(mean_BZ) - 1.0 - logvar_BZ, axis=-1)


def standard_normal_log_prob(z: jax.Array) -> jax.Array:
  """log N(z; 0, I), summed over the last axis."""
  return jnp.sum(-0.5 * jnp.square(z) - _HALF_LOG_2PI, axis=-1)


def posterior_log_prob(eps: jax.Array, logvar: jax.Array) -> jax.Array:
  """log q(z|x) of z = mean + exp(logvar / 2) * eps, summed over the last axis."""
  return jnp.sum(-0.5 * jnp.square(eps) - 0.5 * logvar - _HALF_LOG_2PI, axis=-1)


def bernoulli_log_prob(logits: jax.Array, x01: jax.Array) -> jax.Array:
  """log p(x) per pixel of binary x in {0, 1} under Bernoulli(sigmoid(logits))."""
  return -optax.sigmoid_binary_cross_entropy(logits, x01)


def discretized_logistic_log_prob(x: jax.Array, mean: jax.Array, log_scale: jax.Array) -> jax.Array:
  """log P(x) per subpixel for x on the 256-value grid of [-1, 1] (spacing 2/255).

  The mass the logistic puts on x's bin [x - 1/255, x + 1/255], the two edge bins reaching
  out to -inf and +inf, so the 256 values sum to 1. Computed as
  log(sigmoid(a) - sigmoid(b)) = log sigmoid(a) + log sigmoid(-b) + log(1 - exp(b - a)),
  which stays finite however narrow the bin is relative to the scale.
  """
  inv_scale = jnp.exp(-log_scale)
  a = inv_scale * (x - mean + 1.0 / 255.0)
  b = inv_scale * (x - mean - 1.0 / 255.0)
  log_cdf_a = jax.nn.log_sigmoid(a)        # the bottom bin, x = -1: log P(X <= x + 1/255)
  log_sf_b = jax.nn.log_sigmoid(-b)        # the top bin, x = 1: log P(X > x - 1/255)
  log_bin = log_cdf_a + log_sf_b + jnp.log(-jnp.expm1(b - a))
  return jnp.where(x < -0.999, log_cdf_a, jnp.where(x > 0.999, log_sf_b, log_bin))


def reconstruction_grid(orig_NHWC: np.ndarray, recon_NHWC: np.ndarray) -> np.ndarray:
  """[rows, cols, H, W, C]: rows of up to 8 originals, each followed by a row of their reconstructions."""
  n, cols = len(orig_NHWC), min(len(orig_NHWC), 8)
  rows = -(-n // cols)
  blank = np.zeros((rows * cols - n,) + orig_NHWC.shape[1:], np.uint8)
  grid = np.stack([np.concatenate([orig_NHWC, blank]), np.concatenate([recon_NHWC, blank])], axis=1)
  return grid.reshape((rows, cols, 2) + orig_NHWC.shape[1:]).swapaxes(1, 2).reshape(
      (2 * rows, cols) + orig_NHWC.shape[1:])


def build_model(config: ml_collections.ConfigDict) -> vae_models.VAE:
  """The encoder/decoder pair `config.model.kind` names, sized for the config's images and likelihood."""
  m, d = config.model, config.data
  out_ch = d.channels * (1 if config.vae.likelihood == 'bernoulli' else 2)
  out_shape = (d.image_size, d.image_size, out_ch)
  if m.kind == 'mlp':
    return vae_models.VAE(vae_models.MLPEncoder(m.hidden, m.latents),
                          vae_models.MLPDecoder(m.hidden, out_shape))
  return vae_models.VAE(vae_models.ConvEncoder(m.ch, tuple(m.ch_mult), m.latents),
                        vae_models.ConvDecoder(m.ch, tuple(m.ch_mult), out_shape))


class VAE(Method):
  """A VAE: `config.model` sizes the encoder/decoder, `config.vae` the likelihood and the KL weight."""

  RULES = (
      one_of('vae.likelihood', LIKELIHOODS),
      Rule('data.binarize', lambda c: c.vae.likelihood != 'bernoulli' or c.data.binarize > 0,
           "vae.likelihood='bernoulli' needs binary pixels: set data.binarize (e.g. 0.5), or use "
           "vae.likelihood='logistic'"),
      one_of('model.kind', ('mlp', 'conv')),
      Rule('data.image_size', lambda c: c.model.kind != 'conv' or c.data.image_size % 2 ** len(c.model.ch_mult) == 0,
           lambda c: f'data.image_size={c.data.image_size} must be divisible by {2 ** len(c.model.ch_mult)} = '
                     f'2**len(model.ch_mult) for model.ch_mult={tuple(c.model.ch_mult)}: change one of them'),
      Rule('model.latents', lambda c: c.model.latents >= 1, 'model.latents={model.latents} must be positive'),
      Rule('vae.beta', lambda c: c.vae.beta >= 0 and c.vae.kl_warmup_steps >= 0,
           'vae.beta={vae.beta} and vae.kl_warmup_steps={vae.kl_warmup_steps} must be >= 0'),
      Rule('eval.iwae_k', lambda c: c.eval.iwae_k >= 0 and c.eval.iwae_chunk >= 1,
           'eval.iwae_k={eval.iwae_k} must be >= 0 (0: no IWAE bound) and eval.iwae_chunk={eval.iwae_chunk} >= 1'),
      Rule('sample.num_examples', lambda c: c.sample.num_examples == 0 or c.sample.num_examples >= 2,
           'sample.num_examples={sample.num_examples} must be 0 (no reconstructions or interpolations) or at least '
           '2 (one pair to interpolate)'),
      Rule('sample.interp_steps', lambda c: c.sample.interp_steps >= 2,
           'sample.interp_steps={sample.interp_steps} must be at least 2 (the two end points)'),
  )

  def __init__(self, config: ml_collections.ConfigDict, axis_name: str, data_info: dict[str, Any] | None = None,
               parts: dict[str, Any] | None = None):
    super().__init__(config, axis_name, data_info, parts)
    self.image_shape = (config.data.image_size, config.data.image_size, config.data.channels)
    self.num_dims = math.prod(self.image_shape)
    self.latents = config.model.latents
    self.likelihood = config.vae.likelihood
    self.model = build_model(config)
    self.beta = config.vae.beta
    self.kl_warmup_steps = config.vae.kl_warmup_steps
    self.iwae_k = config.eval.iwae_k
    self.iwae_chunk = config.eval.iwae_chunk
    self.sample_examples = config.sample.num_examples
    self.interp_steps = config.sample.interp_steps

  def init(self, rng: jax.Array) -> tuple[Any, Any]:
    x_BHWC = jnp.zeros((1,) + self.image_shape, jnp.float32)
    return self.model.init({'params': rng}, x_BHWC, jnp.zeros((1, self.latents)))['params'], {}

  def log_likelihood(self, out_BHWO: jax.Array, x_BHWC: jax.Array) -> jax.Array:
    """log p(x|z) per example [B] from the decoder's output; x in [-1, 1] (binarized: -1 or 1)."""
    if self.likelihood == 'bernoulli':
      log_p = bernoulli_log_prob(out_BHWO, (x_BHWC + 1.0) / 2.0)
    else:
      mean, log_scale = jnp.split(out_BHWO, 2, axis=-1)
      log_p = discretized_logistic_log_prob(x_BHWC, mean, jnp.maximum(log_scale, MIN_LOG_SCALE))
    return jnp.sum(log_p.reshape(log_p.shape[0], -1), axis=-1)

  def elbo_terms(self, params: Any, x_BHWC: jax.Array, keys_B: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(-log p(x|z) at one reparameterized draw z ~ q(z|x), KL(q(z|x) || p(z))) per example, in nats."""
    eps_BZ = jax.vmap(lambda k: jax.random.normal(k, (self.latents,)))(keys_B)
    mean_BZ, logvar_BZ, out = self.model.apply({'params': params}, x_BHWC, eps_BZ)
    return -self.log_likelihood(out, x_BHWC), gaussian_kl(mean_BZ, logvar_BZ)

  def log_weights(self, params: Any, x_BHWC: jax.Array, mean_BZ: jax.Array, logvar_BZ: jax.Array,
                  eps_BMZ: jax.Array) -> jax.Array:
    """log p(x, z_m) - log q(z_m|x) [B, M] of z_m = mean + exp(logvar / 2) * eps_m."""
    B, M, Z = eps_BMZ.shape
    z_BMZ = mean_BZ[:, None] + jnp.exp(0.5 * logvar_BZ)[:, None] * eps_BMZ
    out = self.model.apply({'params': params}, z_BMZ.reshape(B * M, Z), method=vae_models.VAE.decode)
    x_rep = jnp.repeat(x_BHWC, M, axis=0)
    log_px_BM = self.log_likelihood(out, x_rep).reshape(B, M)
    return log_px_BM + standard_normal_log_prob(z_BMZ) - posterior_log_prob(eps_BMZ, logvar_BZ[:, None])

  def iwae_log_likelihood(self, params: Any, x_BHWC: jax.Array, keys_B: jax.Array, k: int) -> jax.Array:
    """The IWAE-k bound on log p(x) per example [B]: log (1/k) sum_i w_i, in chunks of `eval.iwae_chunk` draws.

    Draw i of an example comes from fold_in(its key, i), so the bound does not depend on the
    chunking; a scan adds each chunk's weights to a running log-sum-exp, so memory holds one
    chunk of M decodes (the last chunk is padded, its padding weighted 0).
    """
    M = min(self.iwae_chunk, k)
    mean_BZ, logvar_BZ = self.model.apply({'params': params}, x_BHWC, method=vae_models.VAE.encode)
    draw_keys_B = jax.vmap(jax.random.fold_in, (0, None))(keys_B, 1)

    def add_chunk(lse_B, chunk):
      i_M = chunk * M + jnp.arange(M)
      eps_BMZ = jax.vmap(lambda key: jax.vmap(
          lambda i: jax.random.normal(jax.random.fold_in(key, i), (self.latents,)))(i_M))(draw_keys_B)
      log_w_BM = self.log_weights(params, x_BHWC, mean_BZ, logvar_BZ, eps_BMZ)
      log_w_BM = jnp.where(i_M < k, log_w_BM, -jnp.inf)
      return jnp.logaddexp(lse_B, jax.nn.logsumexp(log_w_BM, axis=1)), None

    lse_B, _ = jax.lax.scan(add_chunk, jnp.full((x_BHWC.shape[0],), -jnp.inf), jnp.arange(-(-k // M)))
    return lse_B - math.log(k)

  def _kl_weight(self, step: jax.Array) -> jax.Array:
    if not self.kl_warmup_steps:
      return jnp.asarray(self.beta, jnp.float32)
    return self.beta * jnp.minimum(1.0, (step + 1) / self.kl_warmup_steps)

  def loss(self, params: Any, batch: Batch, rng: Rng, model_state: Any) -> tuple[jax.Array, tuple[Metrics, Any]]:
    """-log p(x|z) + beta KL per example, at one reparameterized draw of z per example."""
    x_BHWC = batch['images']
    rec_B, kl_B = self.elbo_terms(params, x_BHWC, rng.examples(x_BHWC.shape[0]))
    beta = self._kl_weight(rng.step)
    return jnp.mean(rec_B + beta * kl_B), ({'recon': jnp.mean(rec_B), 'kl': jnp.mean(kl_B), 'beta': beta},
                                           model_state)

  def eval_step(self, state: TrainState, batch: Batch, rng: Rng) -> Metrics:
    """Per example, of the EMA params in nats: the ELBO's two terms (one draw, beta = 1) and the IWAE-k NLL."""
    x_BHWC = batch['images']
    keys_B = rng.examples(x_BHWC.shape[0])
    rec_B, kl_B = self.elbo_terms(state.ema_params, x_BHWC, keys_B)
    metrics = {'recon': rec_B, 'kl': kl_B}
    if self.iwae_k:
      metrics['iwae_nll'] = -self.iwae_log_likelihood(state.ema_params, x_BHWC, keys_B, self.iwae_k)
    return metrics

  def summarize(self, means: dict[str, Any]) -> dict[str, Any]:
    """-ELBO = recon + KL, and it (and the IWAE NLL, with the k it used) in bits per dimension."""
    per_dim = self.num_dims * math.log(2.0)
    neg_elbo = means['recon'] + means['kl']
    out = {**means, 'neg_elbo': neg_elbo, 'bits_per_dim': neg_elbo / per_dim}
    if 'iwae_nll' in means:
      out.update(iwae_bits_per_dim=means['iwae_nll'] / per_dim, iwae_k=float(self.iwae_k))
    return out

  def _mean_image(self, out_BHWO: jax.Array) -> jax.Array:
    """The mean of p(x|z) as uint8 images: pixel probabilities (Bernoulli) or the logistic's mean."""
    if self.likelihood == 'bernoulli':
      return to_uint8(2.0 * jax.nn.sigmoid(out_BHWO) - 1.0)
    return to_uint8(jnp.split(out_BHWO, 2, axis=-1)[0])

  def _decode(self, params: Any, z_BZ: jax.Array) -> jax.Array:
    return self._mean_image(self.model.apply({'params': params}, z_BZ, method=vae_models.VAE.decode))

  def sample(self, state: TrainState, rng: jax.Array, num: int) -> dict[str, jax.Array]:
    """`num` images from the prior: z ~ N(0, I) decoded by the EMA params, shown as the mean of p(x|z)."""
    return {'images': self._decode(state.ema_params, jax.random.normal(rng, (num, self.latents)))}

  def sample_from_examples(self, state: TrainState, batch: Batch,
                           rng: jax.Array) -> dict[str, jax.Array]:
    """Reconstructions of held-out images, and decodes along lines between the latents of pairs of them.

    Both start from the posterior means; examples 2i and 2i+1 form pair i, interpolated at
    `sample.interp_steps` evenly spaced points from one (t = 0) to the other (t = 1).
    """
    del rng  # deterministic: posterior means
    params, x = state.ema_params, batch['images']
    mean_BZ, _ = self.model.apply({'params': params}, x, method=vae_models.VAE.encode)
    J, U = x.shape[0] // 2, self.interp_steps
    t_U1 = jnp.linspace(0.0, 1.0, U)[:, None]
    z_JUZ = (1.0 - t_U1) * mean_BZ[0:2 * J:2, None] + t_U1 * mean_BZ[1:2 * J:2, None]
    interp = self._decode(params, z_JUZ.reshape(J * U, -1))
    return {'originals': to_uint8(x), 'reconstructions': self._decode(params, mean_BZ),
            'interpolations': interp.reshape((J, U) + interp.shape[1:])}

  def decode_samples(self, samples: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The prior samples as `images`, and laid-out grids [rows, cols, H, W, C] of the held-out ones.

    `reconstructions`: rows of up to 8 originals, each followed by a row of their
    reconstructions. `interpolations`: one row per pair, its two originals at the ends.
    """
    out = {'images': samples['images']}
    if 'originals' not in samples:
      return out
    orig = samples['originals']
    out['reconstructions'] = reconstruction_grid(orig, samples['reconstructions'])
    J = samples['interpolations'].shape[0]
    out['interpolations'] = np.concatenate(
        [orig[0:2 * J:2, None], samples['interpolations'], orig[1:2 * J:2, None]], axis=1)
    return out
