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

from aigc_jax.errors import UserError
from aigc_jax.methods import randomness
from aigc_jax.methods.pixels import to_uint8
from aigc_jax.models import vae as vae_models
from aigc_jax.train import optim
from aigc_jax.train import state as state_lib

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


class VAE:
  """A VAE: `config.model` sizes the encoder/decoder, `config.vae` the likelihood and the KL weight."""

  def __init__(self, config: ml_collections.ConfigDict, axis_name: str,
               data_info: dict[str, Any] | None = None):
    """`data_info` is unused: the config says all an image model needs of the data."""
    del data_info
    self.check_config(config)
    self.axis_name = axis_name
    self.image_shape = (config.data.image_size, config.data.image_size, config.data.channels)
    self.num_dims = math.prod(self.image_shape)
    self.latents = config.model.latents
    self.likelihood = config.vae.likelihood
    self.model = build_model(config)
    self.beta = config.vae.beta
    self.kl_warmup_steps = config.vae.kl_warmup_steps
    self.iwae_k = config.eval.iwae_k
    self.iwae_chunk = config.eval.iwae_chunk
    self.tx, self.lr_schedule = optim.create(config.optim, config.training.num_train_steps)
    self.ema_rate = config.training.ema_rate
    self.sample_examples = config.sample.num_examples
    self.interp_steps = config.sample.interp_steps

  @staticmethod
  def check_config(config: ml_collections.ConfigDict) -> None:
    """The likelihood, model shape, KL weight, IWAE and sampler settings, before any data load or compile."""
    v, m, d, s, e = config.vae, config.model, config.data, config.sample, config.eval
    if v.likelihood not in LIKELIHOODS:
      raise UserError(f"vae.likelihood={v.likelihood!r} is unknown: use 'bernoulli' or 'logistic'")
    if v.likelihood == 'bernoulli' and d.binarize <= 0:
      raise UserError("vae.likelihood='bernoulli' needs binary pixels: set data.binarize (e.g. 0.5), "
                      "or use vae.likelihood='logistic'")
    if m.kind not in ('mlp', 'conv'):
      raise UserError(f"model.kind={m.kind!r} is unknown: use 'mlp' or 'conv'")
    if m.kind == 'conv' and d.image_size % 2 ** len(m.ch_mult):
      raise UserError(f'data.image_size={d.image_size} must be divisible by {2 ** len(m.ch_mult)} = '
                      f'2**len(model.ch_mult) for model.ch_mult={tuple(m.ch_mult)}: change one of them')
    if m.latents < 1:
      raise UserError(f'model.latents={m.latents} must be positive')
    if v.beta < 0 or v.kl_warmup_steps < 0:
      raise UserError(f'vae.beta={v.beta} and vae.kl_warmup_steps={v.kl_warmup_steps} must be >= 0')
    if e.iwae_k < 0 or e.iwae_chunk < 1:
      raise UserError(f'eval.iwae_k={e.iwae_k} must be >= 0 (0: no IWAE bound) and '
                      f'eval.iwae_chunk={e.iwae_chunk} >= 1')
    if s.num_examples == 1 or s.num_examples < 0:
      raise UserError(f'sample.num_examples={s.num_examples} must be 0 (no reconstructions or '
                      'interpolations) or at least 2 (one pair to interpolate)')
    if s.interp_steps < 2:
      raise UserError(f'sample.interp_steps={s.interp_steps} must be at least 2 (the two end points)')

  def init(self, rng: jax.Array) -> state_lib.TrainState:
    x = jnp.zeros((1,) + self.image_shape, jnp.float32)
    params = self.model.init({'params': rng}, x, jnp.zeros((1, self.latents)))['params']
    return state_lib.create(params, self.tx, jax.random.fold_in(rng, 1))

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
                  eps_BKZ: jax.Array) -> jax.Array:
    """log p(x, z_k) - log q(z_k|x) [B, K] of z_k = mean + exp(logvar / 2) * eps_k."""
    B, K, Z = eps_BKZ.shape
    z_BKZ = mean_BZ[:, None] + jnp.exp(0.5 * logvar_BZ)[:, None] * eps_BKZ
    out = self.model.apply({'params': params}, z_BKZ.reshape(B * K, Z), method=vae_models.VAE.decode)
    x_rep = jnp.repeat(x_BHWC, K, axis=0)
    log_px_BK = self.log_likelihood(out, x_rep).reshape(B, K)
    return log_px_BK + standard_normal_log_prob(z_BKZ) - posterior_log_prob(eps_BKZ, logvar_BZ[:, None])

  def iwae_log_likelihood(self, params: Any, x_BHWC: jax.Array, keys_B: jax.Array, k: int) -> jax.Array:
    """The IWAE-k bound on log p(x) per example [B]: log (1/k) sum_i w_i, in chunks of `eval.iwae_chunk` draws.

    Draw i of an example comes from fold_in(its key, i), so the bound does not depend on the
    chunking; a scan adds each chunk's weights to a running log-sum-exp, so memory holds one
    chunk of decodes (the last chunk is padded, its padding weighted 0).
    """
    C = min(self.iwae_chunk, k)
    N = -(-k // C)
    mean_BZ, logvar_BZ = self.model.apply({'params': params}, x_BHWC, method=vae_models.VAE.encode)
    draw_keys_B = jax.vmap(jax.random.fold_in, (0, None))(keys_B, 1)

    def add_chunk(lse_B, n):
      i_C = n * C + jnp.arange(C)
      eps_BCZ = jax.vmap(lambda key: jax.vmap(
          lambda i: jax.random.normal(jax.random.fold_in(key, i), (self.latents,)))(i_C))(draw_keys_B)
      log_w_BC = self.log_weights(params, x_BHWC, mean_BZ, logvar_BZ, eps_BCZ)
      log_w_BC = jnp.where(i_C < k, log_w_BC, -jnp.inf)
      return jnp.logaddexp(lse_B, jax.nn.logsumexp(log_w_BC, axis=1)), None

    lse_B, _ = jax.lax.scan(add_chunk, jnp.full((x_BHWC.shape[0],), -jnp.inf), jnp.arange(N))
    return lse_B - math.log(k)

  def _kl_weight(self, step: jax.Array) -> jax.Array:
    if not self.kl_warmup_steps:
      return jnp.asarray(self.beta, jnp.float32)
    return self.beta * jnp.minimum(1.0, (step + 1) / self.kl_warmup_steps)

  def train_step(self, state: state_lib.TrainState, batch: dict[str, Any],
                 rng: jax.Array) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
    x = batch['image']
    keys_B = randomness.example_keys(rng, x.shape[0], self.axis_name)
    beta = self._kl_weight(state.step)

    def loss_fn(params):
      rec_B, kl_B = self.elbo_terms(params, x, keys_B)
      return jnp.mean(rec_B + beta * kl_B), (jnp.mean(rec_B), jnp.mean(kl_B))

    (loss, (rec, kl)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = jax.lax.pmean(grads, self.axis_name)
    new_state = state_lib.apply_gradients(state, grads, self.tx, self.ema_rate)
    loss, rec, kl = jax.lax.pmean((loss, rec, kl), self.axis_name)
    metrics = {'loss': loss, 'neg_elbo': rec + kl, 'recon': rec, 'kl': kl,
               'bits_per_dim': (rec + kl) / (self.num_dims * math.log(2.0)), 'beta': beta,
               'grad_norm': optax.global_norm(grads), 'lr': self.lr_schedule(state.step)}
    return new_state, metrics

  def eval_step(self, state: state_lib.TrainState, batch: dict[str, Any],
                rng: jax.Array) -> dict[str, jax.Array]:
    """-ELBO (beta = 1, one draw per example), its two terms, and the IWAE-k NLL of the EMA params, in nats."""
    x = batch['image']
    keys_B = randomness.example_keys(rng, x.shape[0], self.axis_name)
    rec_B, kl_B = self.elbo_terms(state.ema_params, x, keys_B)
    metrics = {'neg_elbo': jnp.mean(rec_B + kl_B), 'recon': jnp.mean(rec_B), 'kl': jnp.mean(kl_B)}
    if self.iwae_k:
      metrics['iwae_nll'] = -jnp.mean(self.iwae_log_likelihood(state.ema_params, x, keys_B, self.iwae_k))
    return jax.lax.pmean(metrics, self.axis_name)

  def eval_summary(self, means: dict[str, float]) -> dict[str, float]:
    """Adds bits per dimension of -ELBO and of the IWAE NLL, and the k it used."""
    per_dim = self.num_dims * math.log(2.0)
    out = {**means, 'bits_per_dim': means['neg_elbo'] / per_dim}
    if self.iwae_k:
      out.update(iwae_bits_per_dim=means['iwae_nll'] / per_dim, iwae_k=float(self.iwae_k))
    return out

  def _mean_image(self, out_BHWO: jax.Array) -> jax.Array:
    """The mean of p(x|z) as uint8 images: pixel probabilities (Bernoulli) or the logistic's mean."""
    if self.likelihood == 'bernoulli':
      return to_uint8(2.0 * jax.nn.sigmoid(out_BHWO) - 1.0)
    return to_uint8(jnp.split(out_BHWO, 2, axis=-1)[0])

  def _decode(self, params: Any, z_BZ: jax.Array) -> jax.Array:
    return self._mean_image(self.model.apply({'params': params}, z_BZ, method=vae_models.VAE.decode))

  def sample(self, state: state_lib.TrainState, rng: jax.Array, num: int) -> dict[str, jax.Array]:
    """`num` images from the prior: z ~ N(0, I) decoded by the EMA params, shown as the mean of p(x|z)."""
    return {'images': self._decode(state.ema_params, jax.random.normal(rng, (num, self.latents)))}

  def sample_from_examples(self, state: state_lib.TrainState, batch: dict[str, Any],
                           rng: jax.Array) -> dict[str, jax.Array]:
    """Reconstructions of held-out images, and decodes along lines between the latents of pairs of them.

    Both start from the posterior means; examples 2i and 2i+1 form pair i, interpolated at
    `sample.interp_steps` evenly spaced points from one (t = 0) to the other (t = 1).
    """
    del rng  # deterministic: posterior means
    params, x = state.ema_params, batch['image']
    mean_EZ, _ = self.model.apply({'params': params}, x, method=vae_models.VAE.encode)
    P, T = x.shape[0] // 2, self.interp_steps
    t_T1 = jnp.linspace(0.0, 1.0, T)[:, None]
    z_PTZ = (1.0 - t_T1) * mean_EZ[0:2 * P:2, None] + t_T1 * mean_EZ[1:2 * P:2, None]
    interp = self._decode(params, z_PTZ.reshape(P * T, -1))
    return {'originals': to_uint8(x), 'reconstructions': self._decode(params, mean_EZ),
            'interpolations': interp.reshape((P, T) + interp.shape[1:])}

  def decode_samples(self, samples: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The prior samples as `images`, and laid-out grids [rows, cols, H, W, C] of the held-out ones.

    `reconstructions`: rows of up to 8 originals, each followed by a row of their
    reconstructions. `interpolations`: one row per pair, its two originals at the ends.
    """
    out = {'images': samples['images']}
    if 'originals' not in samples:
      return out
    orig, recon = samples['originals'], samples['reconstructions']
    E, cols = len(orig), min(len(orig), 8)
    rows = -(-E // cols)
    blank = np.zeros((rows * cols - E,) + orig.shape[1:], np.uint8)
    grid = np.stack([np.concatenate([orig, blank]), np.concatenate([recon, blank])], axis=1)
    out['reconstructions'] = grid.reshape((rows, cols, 2) + orig.shape[1:]).swapaxes(1, 2).reshape(
        (2 * rows, cols) + orig.shape[1:])
    P = samples['interpolations'].shape[0]
    out['interpolations'] = np.concatenate(
        [orig[0:2 * P:2, None], samples['interpolations'], orig[1:2 * P:2, None]], axis=1)
    return out
