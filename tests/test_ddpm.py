"""DDPM and the diffusion package: the schedule and its closed forms, the paper's UNet size, a step that learns,
the samplers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from aigc_jax import methods
from aigc_jax.data import images
from aigc_jax.diffusion import bound
from aigc_jax.diffusion import process
from aigc_jax.diffusion import samplers
from aigc_jax.diffusion import schedules
from aigc_jax.errors import UserError
from aigc_jax.methods import ddpm
from aigc_jax.train import parallel
from aigc_jax.train import step as step_lib
from configs import ddpm_cifar
from tests.conftest import build
from tests.conftest import tiny_ddpm_config

T = 1000


@pytest.fixture(scope='module')
def schedule():
  return schedules.linear(T, 1e-4, 0.02)


def denoise(config, eps_fn, rng, num):
  """`num` samples of config.sample.method with the noise predictions eps_fn(x_t, t_B), as DDPM.sample draws them."""
  method = ddpm.DDPM(config, parallel.AXIS)
  return samplers.get(config.sample.method)(eps_fn, method.schedule, (num,) + method.image_shape, rng, config.sample)


def evaluator(method, devs):
  return parallel.eval_step(step_lib.eval_step(method, parallel.AXIS), devs)


def _abar(t: int) -> float:
  """abar_t computed independently, in float64."""
  return float(np.prod(1.0 - np.linspace(1e-4, 0.02, T)[:t + 1]))


def test_schedule_matches_paper_endpoints(schedule):
  np.testing.assert_allclose(schedule.betas[0], 1e-4, rtol=1e-6)
  np.testing.assert_allclose(schedule.betas[-1], 0.02, rtol=1e-6)
  np.testing.assert_allclose(schedule.alphas_cumprod[-1], _abar(T - 1), rtol=1e-4)
  assert schedule.alphas_cumprod[-1] < 5e-5  # x_T is almost pure noise
  assert np.all(np.diff(np.asarray(schedule.alphas_cumprod)) < 0)


def test_q_sample_matches_closed_form(schedule):
  rng = np.random.default_rng(0)
  x0 = rng.uniform(-1, 1, (3, 4, 4, 1)).astype(np.float32)
  noise = rng.standard_normal((3, 4, 4, 1)).astype(np.float32)
  t = np.array([0, 10, 999])
  got = process.q_sample(schedule, x0, jnp.asarray(t), noise)
  abar = np.array([_abar(i) for i in t])[:, None, None, None]
  np.testing.assert_allclose(got, np.sqrt(abar) * x0 + np.sqrt(1 - abar) * noise, atol=1e-5)


def test_posterior_matches_gaussian_conditioning(schedule):
  """q(x_{t-1} | x_t, x_0) from the product of q(x_t | x_{t-1}) and q(x_{t-1} | x_0)."""
  rng = np.random.default_rng(1)
  x0 = rng.uniform(-1, 1, (3, 2, 2, 1))
  xt = rng.standard_normal((3, 2, 2, 1))
  t = np.array([1, 500, 999])
  mean, var = process.q_posterior(schedule, jnp.asarray(x0, jnp.float32), jnp.asarray(xt, jnp.float32),
                               jnp.asarray(t))
  betas = np.linspace(1e-4, 0.02, T)
  beta = betas[t][:, None, None, None]
  abar_prev = np.array([_abar(i - 1) for i in t])[:, None, None, None]
  precision = (1 - beta) / beta + 1 / (1 - abar_prev)
  want_mean = (np.sqrt(1 - beta) / beta * xt + np.sqrt(abar_prev) / (1 - abar_prev) * x0) / precision
  np.testing.assert_allclose(var, np.broadcast_to(1 / precision, var.shape), rtol=1e-4)
  np.testing.assert_allclose(mean, want_mean, atol=1e-5)
  mean0, var0 = process.q_posterior(schedule, jnp.asarray(x0, jnp.float32), jnp.asarray(xt, jnp.float32),
                                 jnp.zeros(3, jnp.int32))
  np.testing.assert_allclose(mean0, x0, atol=1e-6)  # at t=0 the posterior is x_0 itself
  np.testing.assert_allclose(var0, 0.0, atol=1e-12)


def test_predict_x0_inverts_q_sample(schedule):
  rng = np.random.default_rng(2)
  x0 = rng.uniform(-1, 1, (2, 4, 4, 3)).astype(np.float32)
  noise = rng.standard_normal(x0.shape).astype(np.float32)
  t = jnp.array([5, 700])
  xt = process.q_sample(schedule, x0, t, noise)
  np.testing.assert_allclose(process.predict_x0(schedule, xt, t, noise), x0, atol=2e-4)


def test_ddim_timesteps():
  ts = samplers.ddim_timesteps(1000, 50)
  assert len(ts) == 50 and ts[0] == 999 and ts[-1] == 0 and np.all(np.diff(ts) < 0)
  config = tiny_ddpm_config()
  config.sample.steps = 101
  with pytest.raises(UserError, match=r'sample.steps=101 must be in 1..100 \(diffusion.num_timesteps\)'):
    methods.check_config(config)
  config.sample.method = 'ancestral'  # a sampler's rules hold only when it is chosen
  methods.check_config(config)


def test_settings_that_would_give_nan_images_are_clear_errors():
  config = tiny_ddpm_config()
  config.sample.eta = 1.5  # the DDIM step would take the square root of a negative number
  with pytest.raises(UserError, match=r'sample.eta=1.5 must be in \[0, 1\]'):
    methods.check_config(config)
  config = tiny_ddpm_config()
  config.model.ch, config.model.num_groups = 2, 1  # a time embedding of one frequency divides by zero
  with pytest.raises(UserError, match='model.ch=2 must be >= 4'):
    methods.check_config(config)


def test_cifar_unet_has_35_7m_parameters():
  method = ddpm.DDPM(ddpm_cifar.get_config(), parallel.AXIS)
  params, _ = jax.eval_shape(method.init, jax.random.PRNGKey(0))
  count = sum(x.size for x in jax.tree.leaves(params))
  assert count == 35_746_307, count  # the DDPM paper's CIFAR-10 model, to the parameter


def _real_digits(n: int) -> np.ndarray:
  return images.load(_digits_cfg(), 'train')[0][:n].astype(np.float32) / 127.5 - 1.0


def _digits_cfg():
  from configs import ddpm_digits
  return ddpm_digits.get_config().data


def test_step_lowers_loss_on_real_digits(tiny_config):
  tiny_config.optim.lr = 2e-3
  method, train_step, state = build(tiny_config)
  devs = parallel.devices(jax.devices()[:1])
  step = parallel.train_step(train_step, devs)
  evaluate = evaluator(method, devs)
  batch = {'images': _real_digits(64)[None]}

  def loss(state):  # the fixed-noise loss of the current (not EMA) params
    return evaluate(state.replace(ema_params=state.params), batch, jax.random.PRNGKey(7))['loss']

  before = loss(state)
  for _ in range(40):
    state, metrics = step(state, [batch])
  after = loss(state)
  assert np.isfinite(metrics['loss'])
  assert after < 0.6 * before, (before, after)


def test_bits_per_dim_is_finite_positive_and_drops_with_training_on_real_digits(tiny_config):
  tiny_config.optim.lr = 2e-3
  method, train_step, state = build(tiny_config)
  devs = parallel.devices(jax.devices()[:1])
  step = parallel.train_step(train_step, devs)
  evaluate = evaluator(method, devs)
  batch = {'images': _real_digits(64)[None]}

  def bpd(state):
    m = evaluate(state.replace(ema_params=state.params), batch, jax.random.PRNGKey(7))
    assert 0 < m['bpd_prior'] < m['bits_per_dim'] and 0 < m['bpd_decoder'] < m['bits_per_dim']
    return m['bits_per_dim']

  before = bpd(state)
  for _ in range(60):
    state, _ = step(state, [batch])
  after = bpd(state)
  assert np.isfinite(before) and 0 < after < before, (before, after)


def test_bits_per_dim_does_not_depend_on_the_device_split(tiny_config):
  method, _, state = build(tiny_config)
  x = _real_digits(8)
  one = evaluator(method, parallel.devices(jax.devices()[:1]))(state, {'images': x[None]}, jax.random.PRNGKey(3))
  four = evaluator(method, parallel.devices())(state, {'images': x.reshape(4, 2, 8, 8, 1)}, jax.random.PRNGKey(3))
  np.testing.assert_allclose(four['bits_per_dim'], one['bits_per_dim'], rtol=1e-5)


def test_eval_step_judges_the_ema_params_not_the_trained_ones(tiny_config):
  """eval_step's loss is that of state.ema_params: swapping in other params leaves it, other EMA params change it."""
  method, _, state_a = build(tiny_config)
  evaluate = evaluator(method, parallel.devices(jax.devices()[:1]))
  # Other params by perturbing: the zero-initialised output conv makes every fresh init predict eps = 0.
  rng = np.random.default_rng(1)
  params_b = jax.tree.map(lambda p: np.asarray(p) + 0.05 * rng.standard_normal(p.shape, np.float32), state_a.params)
  batch = {'images': _real_digits(8)[None]}

  def loss(params, ema_params):
    return float(evaluate(state_a.replace(params=params, ema_params=ema_params), batch, jax.random.PRNGKey(7))['loss'])

  with_ema_b = loss(state_a.params, params_b)
  np.testing.assert_allclose(with_ema_b, loss(params_b, params_b), rtol=1e-6)
  assert abs(with_ema_b - loss(state_a.params, state_a.params)) > 1e-3 * with_ema_b


def test_discretized_gaussian_puts_mass_one_on_the_256_levels():
  levels = jnp.linspace(-1.0, 1.0, 256)[:, None]
  for mean, log_scale in ((0.0, -3.0), (0.93, -1.0), (-1.2, -5.0), (0.3, 1.0)):
    logp = bound.discretized_gaussian_log_likelihood(levels, jnp.full_like(levels, mean),
                                                    jnp.full_like(levels, log_scale))
    np.testing.assert_allclose(jnp.sum(jnp.exp(logp)), 1.0, atol=1e-4)


@pytest.mark.parametrize('mean, log_scale', [(0.0, -3.0), (0.93, -1.0), (-0.95, -2.0), (0.3, 1.0)])
def test_discretized_gaussian_bins_match_float64_normal_cdf(mean, log_scale):
  """Each level's mass is Phi((x+1/255-mu)/sigma) - Phi((x-1/255-mu)/sigma) in float64, the two edge bins
  open-ended: Phi((-1+1/255-mu)/sigma) and 1 - Phi((1-1/255-mu)/sigma)."""
  levels_L = np.linspace(-1.0, 1.0, 256, dtype=np.float32)
  logp_L = bound.discretized_gaussian_log_likelihood(jnp.asarray(levels_L), jnp.full(256, mean, jnp.float32),
                                                     jnp.full(256, log_scale, jnp.float32))
  x_L, sigma = levels_L.astype(np.float64), np.exp(log_scale)
  cdf_plus_L = stats.norm.cdf((x_L + 1 / 255 - mean) / sigma)
  cdf_minus_L = stats.norm.cdf((x_L - 1 / 255 - mean) / sigma)
  want_L = cdf_plus_L - cdf_minus_L
  want_L[0], want_L[-1] = cdf_plus_L[0], 1.0 - cdf_minus_L[-1]
  near_mean = int(np.argmin(np.abs(x_L - mean)))
  idx = np.unique([0, 1, 100, near_mean - 1, near_mean, near_mean + 2, 254, 255])
  np.testing.assert_allclose(np.exp(np.asarray(logp_L))[idx], want_L[idx], rtol=1e-3, atol=1e-6)


def test_normal_kl_matches_closed_forms():
  np.testing.assert_allclose(bound.normal_kl(0.0, 0.0, 0.0, 0.0), 0.0)
  np.testing.assert_allclose(bound.normal_kl(1.0, 0.0, 0.0, 0.0), 0.5)
  np.testing.assert_allclose(bound.normal_kl(0.0, jnp.log(4.0), 0.0, 0.0), 0.5 * (4.0 - 1.0 - jnp.log(4.0)),
                             rtol=1e-6)


@pytest.mark.parametrize('method_name', ['ancestral', 'ddim'])
def test_samplers_give_uint8_images_on_4_devices(tiny_config, method_name):
  tiny_config.sample.method = method_name
  method, _, state = build(tiny_config)
  devs = parallel.devices()
  assert len(devs.local) == 4
  out = parallel.sampler(method.sample, devs, 6)(state, jax.random.PRNGKey(1))
  assert out['images'].shape == (6, 8, 8, 1) and out['images'].dtype == np.uint8
  assert len({out['images'][i].tobytes() for i in range(6)}) == 6  # every device drew its own noise


@pytest.mark.parametrize('method_name', ['ancestral', 'ddim'])
@pytest.mark.parametrize('eta', [0.0, 1.0])
def test_clipping_x0_acts_as_a_model_that_predicts_the_clipped_x0(tiny_config, method_name, eta):
  """A noise prediction whose x_0 leaves [-1, 1] (as strong guidance gives) is sampled as the prediction
  of the clipped x_0: always by the ancestral sampler, by DDIM with sample.ddim_eps='clipped'."""
  tiny_config.sample.update(method=method_name, eta=eta, ddim_eps='clipped')
  s = ddpm.DDPM(tiny_config, parallel.AXIS).schedule

  def wild_eps(x, t_B):
    return 4.0 * jnp.sin(3.0 * x) + 0.5

  def clipped_eps(x, t_B):
    x0 = jnp.clip(process.predict_x0(s, x, t_B, wild_eps(x, t_B)), -1.0, 1.0)
    abar = s.alphas_cumprod[t_B].reshape(-1, 1, 1, 1)
    return (x - jnp.sqrt(abar) * x0) / jnp.sqrt(1.0 - abar)

  rng = jax.random.PRNGKey(3)
  wild = jax.jit(lambda k: denoise(tiny_config, wild_eps, k, 6))(rng)
  clipped = jax.jit(lambda k: denoise(tiny_config, clipped_eps, k, 6))(rng)
  np.testing.assert_allclose(wild, clipped, atol=1e-4)
  assert np.abs(np.asarray(wild)).max() <= 1.0


def test_ddim_steps_with_the_models_noise_unless_told_to_take_the_one_the_clipped_x0_implies(tiny_config):
  """Two DDIM steps (eta 0) by hand: x <- sqrt(abar') x_0 + sqrt(1 - abar') eps, x_0 = clip(x_0(eps_fn)), eps the
  model's ('model'; 'auto' without guidance) or (x - sqrt(abar) x_0) / sqrt(1 - abar) ('clipped'; 'auto', w > 1)."""
  tiny_config.sample.update(method='ddim', steps=2, eta=0.0)

  def wild_eps(x, t_B):
    return 4.0 * jnp.sin(3.0 * x) + 0.5

  rng = jax.random.PRNGKey(3)
  for mode, clipped in (('model', False), ('clipped', True), ('auto', False)):
    tiny_config.sample.ddim_eps = mode
    method = ddpm.DDPM(tiny_config, parallel.AXIS)
    s = method.schedule
    x = jax.random.normal(rng, (2,) + method.image_shape)
    ts = samplers.ddim_timesteps(tiny_config.diffusion.num_timesteps, 2)
    for t, t_prev in zip(ts, list(ts[1:]) + [None]):
      abar, abar_prev = s.alphas_cumprod[t], (1.0 if t_prev is None else s.alphas_cumprod[t_prev])
      eps = wild_eps(x, None)
      x0 = jnp.clip((x - jnp.sqrt(1.0 - abar) * eps) / jnp.sqrt(abar), -1.0, 1.0)
      if clipped:
        eps = (x - jnp.sqrt(abar) * x0) / jnp.sqrt(1.0 - abar)
      x = jnp.sqrt(abar_prev) * x0 + jnp.sqrt(1.0 - abar_prev) * eps
    np.testing.assert_allclose(denoise(tiny_config, wild_eps, rng, 2), x, atol=1e-5, err_msg=mode)
  tiny_config.sample.update(ddim_eps='auto', guidance_scale=3.0)
  assert samplers.ddim_clipped_eps(tiny_config.sample)
  tiny_config.sample.update(ddim_eps='wild', guidance_scale=0.0)
  with pytest.raises(UserError, match="sample.ddim_eps='wild' is unknown"):
    methods.check_config(tiny_config)


@pytest.mark.parametrize('method_name, eta', [('ancestral', 0.0), ('ddim', 0.0), ('ddim', 1.0)])
def test_samplers_with_the_exact_noise_predictor_draw_the_data_distribution(tiny_config, method_name, eta):
  """For data x_0 ~ N(0, s^2) per pixel the exact noise predictor is
  eps(x_t, t) = sqrt(1 - abar_t) x_t / (abar_t s^2 + 1 - abar_t); with it, T=1000 steps of either
  sampler must give samples of std s and mean 0 (a wrong noise scale in an update shrinks or inflates them).
  With s = 0.3 the samplers' clipping of x_0 to [-1, 1] cuts only tails past 3.3 s."""
  data_std = 0.3
  tiny_config.diffusion.num_timesteps = T
  # DDIM at every timestep: at 100 steps its discretisation alone gives std 0.29 (eta 0) and 0.27 (eta 1).
  tiny_config.sample.update(method=method_name, eta=eta, steps=T)
  method = ddpm.DDPM(tiny_config, parallel.AXIS)
  abar_T = method.schedule.alphas_cumprod

  def exact_eps(x_NHWC, t_N):
    abar_N111 = abar_T[t_N].reshape(-1, 1, 1, 1)
    return jnp.sqrt(1.0 - abar_N111) * x_NHWC / (abar_N111 * data_std**2 + 1.0 - abar_N111)

  x_NHWC = np.asarray(jax.jit(lambda k: denoise(tiny_config, exact_eps, k, 500))(jax.random.PRNGKey(0)))
  assert x_NHWC.shape == (500, 8, 8, 1)
  assert abs(x_NHWC.std() - data_std) <= 0.015, x_NHWC.std()
  assert abs(x_NHWC.mean()) <= 0.01, x_NHWC.mean()
