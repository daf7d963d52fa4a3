"""The VAE: KL and likelihood closed forms, the ELBO <= IWAE <= log p(x) ordering, device-split-free steps, the loop."""

import itertools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from aigc_jax import methods
from aigc_jax.data import images
from aigc_jax.errors import UserError
from aigc_jax.methods import pixels
from aigc_jax.methods import vae
from aigc_jax.train import loop
from aigc_jax.train import parallel
from aigc_jax.train import step as step_lib
from configs import vae_cifar
from configs import vae_mnist
from tests.conftest import build
from tests.conftest import restore_newest
from tests.conftest import shrink_training


def tiny_vae_config():
  """vae_mnist shrunk to run in seconds: an MLP of width 16 with 2 latents on binarized 8x8 digits."""
  config = shrink_training(vae_mnist.get_config())
  config.data.name = 'digits'
  config.data.image_size = 8
  config.data.binarize = 0.5
  config.model.hidden = 16
  config.model.latents = 2
  config.eval.iwae_k = 5
  config.eval.iwae_chunk = 2
  config.eval.num_batches = 2
  config.sample.num = 6
  config.sample.num_examples = 5
  config.sample.interp_steps = 3
  return config


def tiny_conv_config():
  """vae_cifar shrunk: widths 4 and 8, 3 latents, 8x8 RGB with the discretized logistic."""
  config = shrink_training(vae_cifar.get_config())
  config.data.image_size = 8
  config.model.ch = 4
  config.model.ch_mult = (1, 2)
  config.model.latents = 3
  return config


def _real_digits(n: int) -> np.ndarray:
  """n binarized scikit-learn digits in {-1, 1}, [n, 8, 8, 1]."""
  return images.load(tiny_vae_config().data, 'train')[0][:n].astype(np.float32) / 127.5 - 1.0


def test_analytic_kl_equals_monte_carlo():
  rng = np.random.default_rng(0)
  mean_BZ = jnp.asarray(rng.normal(0, 1.5, (3, 4)), jnp.float32)
  logvar_BZ = jnp.asarray(rng.normal(0, 1, (3, 4)), jnp.float32)
  eps_BKZ = jax.random.normal(jax.random.PRNGKey(0), (3, 200_000, 4))
  z_BKZ = mean_BZ[:, None] + jnp.exp(0.5 * logvar_BZ)[:, None] * eps_BKZ
  log_ratio_BK = vae.posterior_log_prob(eps_BKZ, logvar_BZ[:, None]) - vae.standard_normal_log_prob(z_BKZ)
  np.testing.assert_allclose(log_ratio_BK.mean(axis=1), vae.gaussian_kl(mean_BZ, logvar_BZ), atol=0.03)


@pytest.mark.parametrize('mean', [-1.3, -1.0, -0.2, 0.0, 0.6, 1.0, 1.4])
def test_discretized_logistic_sums_to_one_over_the_256_values(mean):
  x_V = jnp.arange(256, dtype=jnp.float32) / 127.5 - 1.0
  for log_scale in (vae.MIN_LOG_SCALE, -4.0, -2.0, 0.0, 1.0):
    p_V = jnp.exp(vae.discretized_logistic_log_prob(x_V, mean, jnp.float32(log_scale)))
    np.testing.assert_allclose(p_V.sum(), 1.0, atol=1e-5)
  # an inner bin is the logistic's mass between its edges (computed in float64)
  s, x = math.exp(-2.0), float(x_V[100])
  cdf = lambda v: 1.0 / (1.0 + math.exp(-(v - mean) / s))
  want = math.log(cdf(x + 1 / 255) - cdf(x - 1 / 255))
  np.testing.assert_allclose(vae.discretized_logistic_log_prob(x_V[100], mean, jnp.float32(-2.0)), want,
                             rtol=1e-4)


def test_elbo_below_iwae_below_exact_log_likelihood():
  """On a 1-latent model of 2x2 binary images, log p(x) by quadrature over z bounds IWAE-k, rising with k."""
  config = tiny_vae_config()
  config.data.image_size, config.model.hidden, config.model.latents = 2, 8, 1
  method = vae.VAE(config, parallel.AXIS)
  params, _ = method.init(jax.random.PRNGKey(0))
  x_XHWC = jnp.asarray(list(itertools.product([-1.0, 1.0], repeat=4)), jnp.float32).reshape(16, 2, 2, 1)

  z_G1 = jnp.linspace(-10.0, 10.0, 4001)[:, None]
  out = method.model.apply({'params': params}, z_G1, method=method.model.decode)
  log_px_XG = jax.vmap(lambda x: method.log_likelihood(out, jnp.broadcast_to(x, (4001,) + x.shape)))(x_XHWC)
  log_p_X = jax.nn.logsumexp(log_px_XG + vae.standard_normal_log_prob(z_G1), axis=1) + jnp.log(20.0 / 4000)
  np.testing.assert_allclose(jnp.exp(log_p_X).sum(), 1.0, atol=1e-4)  # the 16 images are all there is

  mean_XZ, logvar_XZ = method.model.apply({'params': params}, x_XHWC, method=method.model.encode)
  eps_XKZ = jax.random.normal(jax.random.PRNGKey(1), (16, 20_000, 1))
  log_w_XK = method.log_weights(params, x_XHWC, mean_XZ, logvar_XZ, eps_XKZ)

  def iwae(k):  # the mean of 20,000 / k independent IWAE-k estimates, averaged over the images
    return float(jnp.mean(jax.nn.logsumexp(log_w_XK.reshape(16, -1, k), axis=2) - math.log(k)))
  elbo, log_p = float(jnp.mean(log_w_XK)), float(jnp.mean(log_p_X))
  x_NHWC = jnp.tile(x_XHWC, (1000, 1, 1, 1))  # the training objective, its KL in closed form: the same bound
  rec_N, kl_N = method.elbo_terms(params, x_NHWC, jax.random.split(jax.random.PRNGKey(2), len(x_NHWC)))
  np.testing.assert_allclose(-jnp.mean(rec_N + kl_N), elbo, atol=0.03)
  assert elbo < iwae(10) < iwae(100) < log_p + 0.005, (elbo, iwae(10), iwae(100), log_p)
  assert log_p - elbo > 0.5  # the bounds differ by more than the noise

  keys_X = jax.random.split(jax.random.PRNGKey(3), 16)
  iwae_1000 = method.iwae_log_likelihood(params, x_XHWC, keys_X, 1000)
  np.testing.assert_allclose(jnp.mean(iwae_1000), log_p, atol=0.01)
  method.iwae_chunk = 7  # chunking changes the memory, not the draws
  np.testing.assert_allclose(method.iwae_log_likelihood(params, x_XHWC, keys_X, 1000), iwae_1000, atol=1e-5)


@pytest.mark.parametrize('make_config', [tiny_vae_config, tiny_conv_config])
def test_4_device_step_equals_1_device_step(make_config):
  config = make_config()
  config.training.ema_rate = 0.5
  method, train_step, state = build(config)
  if config.vae.likelihood == 'bernoulli':
    x = _real_digits(8)
  else:
    x = np.round(np.random.default_rng(0).uniform(0, 255, (8, 8, 8, 3))).astype(np.float32) / 127.5 - 1.0
  results = []
  for devs in (parallel.devices(jax.devices()[:1]), parallel.devices()):
    step = parallel.train_step(train_step, devs, donate=False)
    evaluate = parallel.eval_step(step_lib.eval_step(method, parallel.AXIS), devs)
    batch = {'images': x.reshape((len(devs.local), -1) + x.shape[1:])}
    new_state, metrics = step(state, [batch])
    results.append((new_state, metrics, evaluate(new_state, batch, jax.random.PRNGKey(5))))
  assert len(parallel.devices().local) == 4
  for one, four in zip(jax.tree.leaves(jax.device_get(results[0])), jax.tree.leaves(jax.device_get(results[1]))):
    np.testing.assert_allclose(one, four, atol=1e-5, rtol=1e-5)


def test_jitted_step_lowers_the_loss_on_real_digits():
  config = tiny_vae_config()
  config.model.hidden, config.model.latents = 64, 8
  method, train_step, state = build(config)
  devs = parallel.devices(jax.devices()[:1])
  step = parallel.train_step(train_step, devs)
  evaluate = parallel.eval_step(step_lib.eval_step(method, parallel.AXIS), devs)
  batch = {'images': _real_digits(64)[None]}

  def neg_elbo(state):  # of the current (not EMA) params, at fixed draws
    m = evaluate(state.replace(ema_params=state.params), batch, jax.random.PRNGKey(7))
    return m['recon'] + m['kl']

  before = neg_elbo(state)
  for _ in range(60):
    state, metrics = step(state, [batch])
  after = neg_elbo(state)
  assert np.isfinite(metrics['loss'])
  assert after < 0.7 * before, (before, after)


def test_kl_warmup_ramps_beta():
  config = tiny_vae_config()
  config.vae.beta, config.vae.kl_warmup_steps = 0.5, 4
  method = vae.VAE(config, parallel.AXIS)
  np.testing.assert_allclose([method._kl_weight(jnp.int32(s)) for s in (0, 1, 3, 10)],
                             [0.125, 0.25, 0.5, 0.5])


def test_mnist_config_is_the_flax_example_size():
  method = vae.VAE(vae_mnist.get_config(), parallel.AXIS)
  params, _ = jax.eval_shape(method.init, jax.random.PRNGKey(0))
  # 784 -> 500 -> (20, 20); 20 -> 500 -> 784
  assert sum(x.size for x in jax.tree.leaves(params)) == (784 * 500 + 500) + 2 * (500 * 20 + 20) + (
      20 * 500 + 500) + (500 * 784 + 784)
  cifar = vae.VAE(vae_cifar.get_config(), parallel.AXIS)
  out = jax.eval_shape(lambda: cifar.model.apply({'params': cifar.init(jax.random.PRNGKey(0))[0]},
                                                  jnp.zeros((2, 128)), method=cifar.model.decode))
  assert out.shape == (2, 32, 32, 6)  # a logistic's mean and log-scale per subpixel


def test_settings_are_checked_before_compiling():
  config = tiny_vae_config()
  config.data.binarize = 0.0
  with pytest.raises(UserError, match="'bernoulli' needs binary pixels: set data.binarize"):
    methods.check_config(config)
  config = tiny_conv_config()
  config.data.image_size = 6
  with pytest.raises(UserError, match='data.image_size=6 must be divisible by 4'):
    methods.check_config(config)
  config = tiny_vae_config()
  config.sample.num_examples = 1
  with pytest.raises(UserError, match='sample.num_examples=1 must be 0'):
    methods.check_config(config)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('vae'))
  loop.train(tiny_vae_config(), workdir)
  return workdir


def test_loop_writes_samples_reconstructions_and_interpolations(trained):
  """The step-4 samples hold the held-out originals, the EMA params' decodes (pixel probabilities as bytes) of
  their posterior means, and of evenly spaced points between the means of pairs (0, 1) and (2, 3)."""
  with np.load(os.path.join(trained, 'samples', 'step_4.npz')) as z:
    assert z['images'].shape == (6, 8, 8, 1) and z['images'].dtype == np.uint8
    recon, interp = z['reconstructions'], z['interpolations']
  held_out = images.load(tiny_vae_config().data, 'test')[0][:5]
  assert recon.shape == (2, 5, 8, 8, 1)  # a row of the 5 originals over a row of their reconstructions
  np.testing.assert_array_equal(recon[0], held_out)
  assert interp.shape == (2, 5, 8, 8, 1)  # pairs (0, 1) and (2, 3): original, 3 decodes, original
  np.testing.assert_array_equal(interp[:, 0], held_out[[0, 2]])
  np.testing.assert_array_equal(interp[:, -1], held_out[[1, 3]])
  method, state = restore_newest(tiny_vae_config(), trained)  # the step-4 checkpoint the samples were drawn from
  params = {'params': state.ema_params}

  def decode_uint8(z_NZ):  # the Bernoulli mean 2 sigmoid(logits) - 1 in [-1, 1], as bytes
    return np.asarray(pixels.to_uint8(2.0 * jax.nn.sigmoid(method.model.apply(params, z_NZ,
                                                                              method=method.model.decode)) - 1.0))
  mean_EZ, _ = method.model.apply(params, held_out.astype(np.float32) / 127.5 - 1.0, method=method.model.encode)
  np.testing.assert_array_equal(recon[1], decode_uint8(mean_EZ))
  t_T1 = jnp.linspace(0.0, 1.0, 3)[:, None]  # sample.interp_steps = 3 points, the pair's two means at the ends
  for p, (a, b) in enumerate([(0, 1), (2, 3)]):
    z_TZ = (1.0 - t_T1) * mean_EZ[a] + t_T1 * mean_EZ[b]
    np.testing.assert_array_equal(interp[p, 1:-1], decode_uint8(z_TZ), err_msg=f'pair {p}')
  grid = np.asarray(Image.open(os.path.join(trained, 'samples', 'step_4_reconstructions.png')))
  assert grid.shape[0] < grid.shape[1] and grid.shape[0] >= 2 * 64  # 2 rows of 5 cells of >= 64 px
  assert os.path.exists(os.path.join(trained, 'samples', 'step_4_interpolations.png'))
  with open(os.path.join(trained, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  assert {'loss', 'neg_elbo', 'recon', 'kl', 'bits_per_dim'} <= set(rows[-1])


def test_eval_reports_elbo_iwae_and_bits_per_dim(trained):
  result = loop.evaluate(tiny_vae_config(), trained)
  assert result['num_examples'] == 16 and result['eval/iwae_k'] == 5
  assert result['eval/iwae_nll'] < result['eval/neg_elbo']
  np.testing.assert_allclose(result['eval/bits_per_dim'], result['eval/neg_elbo'] / (64 * math.log(2)))
  np.testing.assert_allclose(result['eval/neg_elbo'], result['eval/recon'] + result['eval/kl'], rtol=1e-5)


def test_sample_mode_keeps_the_training_samples(trained):
  outputs = loop.sample(tiny_vae_config(), trained)
  assert set(outputs) == {'images', 'reconstructions', 'interpolations'}
  assert os.path.exists(os.path.join(trained, 'samples', 'step_4_1_reconstructions.png'))
  config = tiny_vae_config()
  config.sample.num_examples = 0  # prior samples only: no held-out data needed
  config.data.name = 'no_such_data_set'
  assert set(loop.sample(config, trained)) == {'images'}
