"""Generative adversarial networks (Goodfellow et al. 2014; DCGAN, Radford et al. 2015).

A discriminator D (one logit l per image, D = sigmoid(l)) and a generator G of images from
noise z ~ N(0, I) play the minimax game; each training step first updates D on the real
batch and as many fakes, then G on fresh noise against the updated D, each with its own
optimizer (both from `config.optim`). The losses (`gan.loss`), from logits so that no
sigmoid saturates to log(0):

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
import numpy as np
import optax

from aigc_jax.errors import UserError
from aigc_jax.methods import randomness
from aigc_jax.methods.pixels import to_uint8
from aigc_jax.models import gan as gan_models
from aigc_jax.train import optim
from aigc_jax.train import state as state_lib

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


class GAN:
  """A GAN: `config.model` picks and sizes the networks ('mlp' or 'dcgan'), `config.gan` the loss."""

  sample_examples = 0  # sampling needs no held-out data

  def __init__(self, config: ml_collections.ConfigDict, axis_name: str,
               data_info: dict[str, Any] | None = None):
    """`data_info` is unused: the config says all an image model needs of the data."""
    del data_info
    self.check_config(config)
    self.axis_name = axis_name
    self.image_shape = (config.data.image_size, config.data.image_size, config.data.channels)
    self.latents = config.model.latents
    self.loss = config.gan.loss
    self.generator, self.discriminator = build_models(config, axis_name)
    tx, self.lr_schedule = optim.create(config.optim, config.training.num_train_steps)
    self.tx = {G: tx, D: tx}  # the same settings; each network has its own optimizer state
    self.ema_rate = config.training.ema_rate

  @staticmethod
  def check_config(config: ml_collections.ConfigDict) -> None:
    """The networks' shapes, the loss and the EMA rate, checked before any data load or compile."""
    m, size = config.model, config.data.image_size
    if m.kind not in MODEL_KEYS:
      raise UserError(f"model.kind={m.kind!r} is unknown: use 'mlp' or 'dcgan'")
    missing = [k for k in MODEL_KEYS[m.kind] if k not in m]
    if missing:
      raise UserError(f'model.kind={m.kind!r} needs model.{", model.".join(missing)}: start from '
                      f'configs/{"gan_mnist" if m.kind == "mlp" else "dcgan_mnist"}.py')
    if m.kind == 'dcgan' and (size < 8 or size & (size - 1)):
      raise UserError(f'data.image_size={size}: the DCGAN needs a power of two >= 8 (e.g. 32; MNIST: '
                      'data.pad=2 makes its 28x28 digits 32x32)')
    if m.latents < 1:
      raise UserError(f'model.latents={m.latents} must be positive')
    if config.gan.loss not in LOSSES:
      raise UserError(f'gan.loss={config.gan.loss!r} is unknown: use one of {", ".join(LOSSES)}')
    if not 0.0 <= config.training.ema_rate < 1.0:
      raise UserError(f'training.ema_rate={config.training.ema_rate} must be in [0, 1) (0: no EMA)')

  def init(self, rng: jax.Array) -> state_lib.TrainState:
    """Both networks' parameters and statistics; the EMA covers the generator only."""
    rng_g, rng_d = jax.random.split(rng)
    params_g, stats_g = _split_variables(self.generator.init(
        {'params': rng_g}, jnp.zeros((1, self.latents)), train=False))
    params_d, stats_d = _split_variables(self.discriminator.init(
        {'params': rng_d}, jnp.zeros((1,) + self.image_shape), train=False))
    state = state_lib.create({G: params_g, D: params_d}, self.tx, jax.random.fold_in(rng, 1),
                             model_state={G: stats_g, D: stats_d})
    return state.replace(ema_params=params_g)

  def noise(self, rng: jax.Array, B: int) -> jax.Array:
    """z [B, Z] ~ N(0, I), each row from a key of its example's index in the global batch.

    So the draws, and with them the step, do not depend on how the batch is split over devices.
    """
    keys = randomness.example_keys(rng, B, self.axis_name)
    return jax.vmap(lambda k: jax.random.normal(k, (self.latents,)))(keys)

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

  def _update(self, net: str, state: state_lib.TrainState, grads: Any) -> tuple[Any, Any]:
    """One optimizer step of network `net`: its new (params, optimizer state)."""
    updates, opt_state = self.tx[net].update(grads, state.opt_state[net], state.params[net])
    return optax.apply_updates(state.params[net], updates), opt_state

  def discriminator_step(self, state: state_lib.TrainState, batch: dict[str, Any],
                         rng: jax.Array) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
    """One D update on the real batch and as many fakes from noise of `rng`; G is left as it is.

    Metrics are of D before the update: its loss, mean D(x) and D(G(z)), and its accuracy
    (real logits > 0, fake ones < 0).
    """
    x_real = batch['image']
    p, s = state.params, state.model_state
    x_fake, _ = self.generate(p[G], s[G], self.noise(rng, x_real.shape[0]), train=True)
    x_fake = jax.lax.stop_gradient(x_fake)

    def loss_fn(params_d):
      real_B, stats = self.discriminate(params_d, s[D], x_real, train=True)
      fake_B, stats = self.discriminate(params_d, stats, x_fake, train=True)
      return discriminator_loss(real_B, fake_B, self.loss), (stats, real_B, fake_B)

    (loss, (stats_d, real_B, fake_B)), grads = jax.value_and_grad(loss_fn, has_aux=True)(p[D])
    grads = jax.lax.pmean(grads, self.axis_name)
    params_d, opt_d = self._update(D, state, grads)
    state = state.replace(params={**p, D: params_d}, opt_state={**state.opt_state, D: opt_d},
                          model_state={**s, D: stats_d})
    metrics = {'d_loss': loss, 'd_real': jnp.mean(jax.nn.sigmoid(real_B)),
               'd_fake': jnp.mean(jax.nn.sigmoid(fake_B)),
               'd_accuracy': 0.5 * (jnp.mean(real_B > 0) + jnp.mean(fake_B < 0))}
    metrics = jax.lax.pmean(metrics, self.axis_name)
    return state, {**metrics, 'd_grad_norm': optax.global_norm(grads)}

  def generator_step(self, state: state_lib.TrainState, batch: dict[str, Any],
                     rng: jax.Array) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
    """One G update (and its EMA) on as many fakes as the batch has real images, from noise of `rng`.

    D judges them in training mode, but its parameters and statistics are left as they are.
    Metrics are of G before the update: its loss and mean D(G(z)).
    """
    p, s = state.params, state.model_state
    z_BZ = self.noise(rng, batch['image'].shape[0])

    def loss_fn(params_g):
      x_fake, stats = self.generate(params_g, s[G], z_BZ, train=True)
      fake_B, _ = self.discriminate(p[D], s[D], x_fake, train=True)
      return generator_loss(fake_B, self.loss), (stats, fake_B)

    (loss, (stats_g, fake_B)), grads = jax.value_and_grad(loss_fn, has_aux=True)(p[G])
    grads = jax.lax.pmean(grads, self.axis_name)
    params_g, opt_g = self._update(G, state, grads)
    state = state.replace(params={**p, G: params_g}, opt_state={**state.opt_state, G: opt_g},
                          model_state={**s, G: stats_g},
                          ema_params=state_lib.ema_update(state.ema_params, params_g, self.ema_rate))
    metrics = jax.lax.pmean({'g_loss': loss, 'd_fake_g_step': jnp.mean(jax.nn.sigmoid(fake_B))},
                            self.axis_name)
    return state, {**metrics, 'g_grad_norm': optax.global_norm(grads)}

  def train_step(self, state: state_lib.TrainState, batch: dict[str, Any],
                 rng: jax.Array) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
    """The D step, then the G step with fresh noise against the updated D.

    'loss' is L_D, for the (non-saturating) minimax losses minus the value of the game.
    """
    rng_d, rng_g = jax.random.split(rng)
    lr = self.lr_schedule(state.step)
    state, d_metrics = self.discriminator_step(state, batch, rng_d)
    state, g_metrics = self.generator_step(state, batch, rng_g)
    return state.replace(step=state.step + 1), {'loss': d_metrics['d_loss'], **d_metrics, **g_metrics, 'lr': lr}

  def eval_step(self, state: state_lib.TrainState, batch: dict[str, Any],
                rng: jax.Array) -> dict[str, jax.Array]:
    """D's losses, mean D(x), D(G(z)) and accuracy on held-out real images and as many samples of the EMA generator.

    Both networks in inference mode (BatchNorm's running statistics).
    """
    x_real = batch['image']
    p, s = state.params, state.model_state
    x_fake, _ = self.generate(state.ema_params, s[G], self.noise(rng, x_real.shape[0]), train=False)
    real_B, _ = self.discriminate(p[D], s[D], x_real, train=False)
    fake_B, _ = self.discriminate(p[D], s[D], x_fake, train=False)
    metrics = {'d_loss': discriminator_loss(real_B, fake_B, self.loss), 'g_loss': generator_loss(fake_B, self.loss),
               'd_real': jnp.mean(jax.nn.sigmoid(real_B)), 'd_fake': jnp.mean(jax.nn.sigmoid(fake_B)),
               'd_accuracy': 0.5 * (jnp.mean(real_B > 0) + jnp.mean(fake_B < 0))}
    return jax.lax.pmean(metrics, self.axis_name)

  def eval_summary(self, means: dict[str, float]) -> dict[str, float]:
    """Batches are equal in size: the batch means are the means over all held-out examples."""
    return means

  def sample(self, state: state_lib.TrainState, rng: jax.Array, num: int) -> dict[str, jax.Array]:
    """`num` images G(z), z ~ N(0, I), from the EMA generator with BatchNorm's running statistics."""
    z_BZ = jax.random.normal(rng, (num, self.latents))
    x, _ = self.generate(state.ema_params, state.model_state[G], z_BZ, train=False)
    return {'images': to_uint8(x)}

  def decode_samples(self, samples: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The uint8 images are written as they are."""
    return samples
