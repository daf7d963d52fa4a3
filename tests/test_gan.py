"""GANs: the losses on hand-computed logits, what each half-step changes, the device split, checkpoints, the loop."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aigc_jax import methods
from aigc_jax.data import images
from aigc_jax.errors import UserError
from aigc_jax.methods import gan
from aigc_jax.models import gan as gan_models
from aigc_jax.train import checkpoint
from aigc_jax.train import loop
from aigc_jax.train import parallel
from aigc_jax.train import step as step_lib
from configs import dcgan_cifar
from configs import dcgan_mnist
from configs import gan_mnist
from tests.conftest import build
from tests.conftest import shrink_training


def tiny_mlp_config():
  """gan_mnist shrunk to run in seconds: widths 32 and 16, 8 latents, on scikit-learn's 8x8 digits."""
  config = shrink_training(gan_mnist.get_config())
  config.data.name = 'digits'
  config.data.image_size = 8
  config.model.latents = 8
  config.model.g_hidden = (16, 32)
  config.model.d_hidden = (32, 16)
  config.sample.num = 6
  return config


def tiny_dcgan_config():
  """dcgan_mnist shrunk: width 4, the 8x8 digits padded to 16x16, so both networks have BatchNorm layers."""
  config = shrink_training(dcgan_mnist.get_config())
  config.data.name = 'digits'
  config.data.pad = 4
  config.data.image_size = 16
  config.model.latents = 8
  config.model.width = 4
  config.sample.num = 6
  return config


CONFIGS = {'mlp': tiny_mlp_config, 'dcgan': tiny_dcgan_config}


def _real_digits(config, n: int) -> np.ndarray:
  return images.load(config.data, 'train')[0][:n].astype(np.float32) / 127.5 - 1.0


def _noise(rng, B: int, latents: int) -> jax.Array:
  """z [B, Z] as GAN.noise draws a global batch of B: row j from the key fold_in(rng, j)."""
  return jax.vmap(lambda j: jax.random.normal(jax.random.fold_in(rng, j), (latents,)))(jnp.arange(B))


def _plain_dcgan(config):
  """The config's DCGAN generator and discriminator with no device axis: BatchNorm over the batch they are given."""
  shape = (config.data.image_size, config.data.image_size, config.data.channels)
  return gan_models.DCGANGenerator(shape, config.model.width), gan_models.DCGANDiscriminator(config.model.width)


def _apply(net, params, stats, x, train: bool) -> jax.Array:
  """net's output with the batch's own statistics (train) or the running ones in `stats`."""
  if train:
    return net.apply({'params': params, **stats}, x, train=True, mutable=list(stats))[0]
  return net.apply({'params': params, **stats}, x, train=False)


def test_losses_equal_their_formulas():
  real = np.array([-20.0, -2.0, 0.0, 1.5, 20.0])
  fake = np.array([20.0, 0.5, 0.0, -3.0, -20.0])
  d_real, d_fake = 1.0 / (1.0 + np.exp(-real)), 1.0 / (1.0 + np.exp(-fake))  # D = sigmoid(logit), float64
  want_d = -np.mean(np.log(d_real)) - np.mean(np.log(1.0 - d_fake))
  r32, f32 = jnp.asarray(real, jnp.float32), jnp.asarray(fake, jnp.float32)
  for kind in ('non_saturating', 'minimax'):
    np.testing.assert_allclose(gan.discriminator_loss(r32, f32, kind), want_d, rtol=1e-6)
  np.testing.assert_allclose(gan.generator_loss(f32, 'non_saturating'), -np.mean(np.log(d_fake)), rtol=1e-6)
  np.testing.assert_allclose(gan.generator_loss(f32, 'minimax'), np.mean(np.log(1.0 - d_fake)), rtol=1e-6)
  np.testing.assert_allclose(gan.discriminator_loss(r32, f32, 'hinge'),
                             np.mean(np.maximum(0, 1 - real)) + np.mean(np.maximum(0, 1 + fake)), rtol=1e-6)
  np.testing.assert_allclose(gan.generator_loss(f32, 'hinge'), -np.mean(fake), rtol=1e-6)
  np.testing.assert_allclose(gan.discriminator_loss(jnp.zeros(3), jnp.zeros(3), 'minimax'), 2 * np.log(2.0))


@pytest.mark.parametrize('kind', gan.LOSSES)
def test_losses_stay_finite_at_extreme_logits(kind):
  """Logits of +-1e4 (D(x) = 0 or 1 in float32): finite losses and gradients, and their limits."""
  right, wrong = jnp.array([1e4, 3e4]), jnp.array([-1e4, -3e4])  # D sure and right / sure and wrong on reals
  for real, fake in ((right, wrong), (wrong, right)):
    for loss, logits in ((lambda r, f: gan.discriminator_loss(r, f, kind), (real, fake)),
                         (lambda r, f: gan.generator_loss(f, kind), (real, fake))):
      value, grads = jax.value_and_grad(loss, argnums=(0, 1))(*logits)
      assert np.isfinite(value) and all(np.isfinite(g).all() for g in grads), (kind, value, grads)
  if kind != 'hinge':
    assert float(gan.discriminator_loss(right, wrong, kind)) == 0.0
    np.testing.assert_allclose(gan.discriminator_loss(wrong, right, kind), 2 * 2e4, rtol=1e-6)
    np.testing.assert_allclose(gan.generator_loss(wrong, kind), 2e4 if kind == 'non_saturating' else 0.0)


def _half_step(train_step, name, state, x, steps):
  """`steps` calls of the shared step with only the GAN's phase `name` ('d' or 'g', or 'dg' for both), on one
  device, with the same batch each time."""
  kept = [i for i, p in enumerate(train_step.phases) if p.name in name]
  half = dataclasses.replace(train_step, phases=[train_step.phases[i] for i in kept],
                             optimizers=[train_step.optimizers[i] for i in kept])
  step = parallel.train_step(half, parallel.devices(jax.devices()[:1]), donate=False)
  metrics = []
  for _ in range(steps):
    state, m = step(state, [{'images': x[None]}])
    metrics.append({k: float(v) for k, v in m.items()})
  return jax.device_get(state), metrics


def _assert_same(a, b):
  leaves_a, leaves_b = jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize('kind', CONFIGS)
def test_discriminator_step_learns_and_leaves_the_generator_alone(kind):
  config = CONFIGS[kind]()
  config.optim.lr = 2e-3
  _, train_step, init = build(config)
  state, metrics = _half_step(train_step, 'd', init, _real_digits(config, 32), 15)
  assert metrics[-1]['d_accuracy'] > max(0.9, metrics[0]['d_accuracy']), [m['d_accuracy'] for m in metrics]
  assert metrics[-1]['d_loss'] < metrics[0]['d_loss']
  for part in ('params', 'opt_state', 'model_state'):
    _assert_same(getattr(state, part)['generator'], getattr(init, part)['generator'])
  _assert_same(state.ema_params, init.ema_params)
  assert not np.allclose(state.params['discriminator']['Dense_0']['kernel'],
                         init.params['discriminator']['Dense_0']['kernel'])


@pytest.mark.parametrize('kind', CONFIGS)
def test_generator_step_lowers_its_loss_and_leaves_the_discriminator_alone(kind):
  config = CONFIGS[kind]()
  config.optim.lr = 2e-3
  config.training.ema_rate = 0.5
  _, train_step, init = build(config)
  x = _real_digits(config, 32)
  trained_d, _ = _half_step(train_step, 'd', init, x, 10)  # a D worth fooling
  state, metrics = _half_step(train_step, 'g', trained_d, x, 15)
  assert metrics[-1]['g_loss'] < metrics[0]['g_loss'] - 0.1, [m['g_loss'] for m in metrics]
  for part in ('params', 'opt_state', 'model_state'):
    _assert_same(getattr(state, part)['discriminator'], getattr(trained_d, part)['discriminator'])
  ema, g = jax.tree.leaves(state.ema_params), jax.tree.leaves(state.params['generator'])
  assert any(not np.allclose(e, p) for e, p in zip(ema, g))  # the EMA trails the generator


def test_the_d_and_g_steps_use_the_batch_statistics_and_update_the_running_ones():
  """D's outputs in both half-steps are those of D normalized by each batch itself (G's fakes too), not
  by the running statistics; and both networks' running means move."""
  config = tiny_dcgan_config()
  _, train_step, init = build(config)
  init = jax.device_get(init)
  assert set(init.model_state['generator']) == set(init.model_state['discriminator']) == {'batch_stats'}
  x_real_BHWC = _real_digits(config, 8)
  state, metrics = _half_step(train_step, 'dg', init, x_real_BHWC, 1)
  for net in ('generator', 'discriminator'):
    means = [s['mean'] for s in jax.tree.leaves(state.model_state[net]['batch_stats'],
                                                is_leaf=lambda t: isinstance(t, dict) and 'mean' in t)]
    assert means and all(np.abs(m).max() > 0 for m in means), net  # moved away from their zero start

  g_net, d_net = _plain_dcgan(config)
  p, s = init.params, init.model_state
  rng_d, rng_g = jax.random.split(jax.random.fold_in(init.rng, 0))  # step 0's keys of the D and G halves

  def fakes(rng):  # G(z) of the initial G, in training mode
    return _apply(g_net, p['generator'], s['generator'], _noise(rng, 8, config.model.latents), train=True)
  # the D step judges with the initial D; the G step with D as the D step left it (the G step does not change it)
  d_after = (state.params['discriminator'], state.model_state['discriminator'])
  cases = {'d_real': (p['discriminator'], s['discriminator'], x_real_BHWC),
           'd_fake': (p['discriminator'], s['discriminator'], fakes(rng_d)),
           'd_fake_g_step': (*d_after, fakes(rng_g))}
  for name, (params_d, stats_d, x_BHWC) in cases.items():
    batch_stats, running = (float(jnp.mean(jax.nn.sigmoid(_apply(d_net, params_d, stats_d, x_BHWC, train))))
                            for train in (True, False))
    np.testing.assert_allclose(metrics[0][name], batch_stats, rtol=0, atol=1e-6, err_msg=name)
    assert abs(metrics[0][name] - running) > 1e-4, (name, batch_stats, running)  # the modes are told apart


@pytest.mark.parametrize('kind', CONFIGS)
def test_4_device_step_equals_1_device_step(kind):
  config = CONFIGS[kind]()
  method, train_step, init = build(config)
  x = _real_digits(config, 8)
  results = []
  for devs in (parallel.devices(jax.devices()[:1]), parallel.devices()):
    step = parallel.train_step(train_step, devs, donate=False)
    evaluate = parallel.eval_step(step_lib.eval_step(method, parallel.AXIS), devs)
    batch = {'images': x.reshape((len(devs.local), -1) + x.shape[1:])}
    state, metrics = step(init, [batch])
    state, metrics = step(state, [batch])
    results.append((state, metrics, evaluate(state, batch, jax.random.PRNGKey(5))))
  assert len(parallel.devices().local) == 4
  one, four = jax.device_get(results[0]), jax.device_get(results[1])
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  assert int(one[0].step) == 2


def test_conv_transpose_2x_is_a_transposed_convolution():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 5, 4))
  layer = gan_models.ConvTranspose2x(6)
  params = layer.init(jax.random.PRNGKey(1), x)
  params = jax.tree.map(lambda p: p + 0.1, params)  # a nonzero bias too
  want = jax.lax.conv_transpose(x, params['params']['kernel'][::-1, ::-1], (2, 2), 'SAME',
                                dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + params['params']['bias']
  got = layer.apply(params, x)
  assert got.shape == (2, 6, 10, 6)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_configs_have_the_papers_sizes():
  mlp = gan.GAN(gan_mnist.get_config(), parallel.AXIS)
  params, _ = jax.eval_shape(mlp.init, jax.random.PRNGKey(0))

  def dense(widths):
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))

  assert sum(x.size for x in jax.tree.leaves(params['generator'])) == dense([100, 256, 512, 1024, 784])
  assert sum(x.size for x in jax.tree.leaves(params['discriminator'])) == dense([784, 1024, 512, 256, 1])
  dcgan = gan.GAN(dcgan_cifar.get_config(), parallel.AXIS)
  params, _ = jax.eval_shape(dcgan.init, jax.random.PRNGKey(0))
  g_convs = [p['kernel'].shape for k, p in sorted(params['generator'].items()) if k.startswith('ConvTranspose')]
  d_convs = [p['kernel'].shape for k, p in sorted(params['discriminator'].items()) if k.startswith('Conv_')]
  assert params['generator']['Dense_0']['kernel'].shape == (100, 4 * 4 * 256)
  assert g_convs == [(4, 4, 256, 128), (4, 4, 128, 64), (4, 4, 64, 3)]
  assert d_convs == [(4, 4, 3, 64), (4, 4, 64, 128), (4, 4, 128, 256)]
  assert params['discriminator']['Dense_0']['kernel'].shape == (4 * 4 * 256, 1)


def test_settings_are_checked_before_compiling():
  config = tiny_dcgan_config()
  config.data.image_size = 28
  with pytest.raises(UserError, match=r'data.image_size=28: the DCGAN needs a power of two .* data.pad=2'):
    methods.check_config(config)
  config = tiny_mlp_config()
  config.gan.loss = 'wasserstein'
  with pytest.raises(UserError, match="gan.loss='wasserstein' is unknown"):
    methods.check_config(config)
  config.gan.loss, config.model.kind = 'hinge', 'resnet'
  with pytest.raises(UserError, match="model.kind='resnet' is unknown"):
    methods.check_config(config)
  config.model.kind = 'dcgan'
  with pytest.raises(UserError, match="model.kind='dcgan' needs model.width: start from configs/dcgan_mnist.py"):
    methods.check_config(config)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A 4-step DCGAN run on 4 devices through the one loop."""
  workdir = str(tmp_path_factory.mktemp('dcgan'))
  return workdir, loop.train(tiny_dcgan_config(), workdir)


def test_checkpoint_restores_both_networks_optimizers_and_batch_statistics(trained):
  workdir, state = trained
  fresh = build(tiny_dcgan_config()).state
  ckpts = checkpoint.Checkpoints(os.path.join(workdir, 'checkpoints'), 3)
  restored = ckpts.restore(fresh)
  ckpts.close()
  assert int(restored.step) == 4
  for part in ('params', 'opt_state', 'model_state'):
    assert set(getattr(restored, part)) == {'generator', 'discriminator'}
  assert 'batch_stats' in restored.model_state['generator'] and 'batch_stats' in restored.model_state['discriminator']
  _assert_same(restored, state)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(restored.model_state),
                                                       jax.tree.leaves(jax.device_get(fresh.model_state))))


def test_loop_writes_gan_metrics_and_samples(trained):
  workdir, _ = trained
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  assert {'loss', 'd_loss', 'g_loss', 'd_real', 'd_fake', 'd_accuracy', 'd_lr', 'g_lr', 'd_grad_norm',
          'g_grad_norm', 'd_fake_g_step'} <= set(rows[-1])
  assert rows[-1]['loss'] == rows[-1]['d_loss']
  with np.load(os.path.join(workdir, 'samples', 'step_4.npz')) as z:
    assert z['images'].shape == (6, 16, 16, 1) and z['images'].dtype == np.uint8
  assert os.path.exists(os.path.join(workdir, 'samples', 'step_4.png'))


def test_eval_reports_discriminator_metrics_on_held_out_digits(trained):
  """The metrics are D's, with the running statistics, on the first 16 test digits (real) and on as many
  samples of the EMA generator (fake), batch i's noise from fold_in(PRNGKey(seed + 3), i)."""
  workdir, state = trained
  config = tiny_dcgan_config()
  config.eval.num_batches = 2
  result = loop.evaluate(config, workdir)
  assert result['num_examples'] == 16
  state = jax.device_get(state)
  assert config.gan.loss == 'non_saturating'
  g_net, d_net = _plain_dcgan(config)
  x_real_NHWC = images.load(config.data, config.data.eval_split)[0][:16].astype(np.float32) / 127.5 - 1.0
  rng = jax.random.PRNGKey(config.seed + 3)
  z_NZ = jnp.concatenate([_noise(jax.random.fold_in(rng, i), 8, config.model.latents) for i in range(2)])
  x_fake_NHWC = _apply(g_net, state.ema_params, state.model_state['generator'], z_NZ, train=False)
  real_N, fake_N = (np.asarray(_apply(d_net, state.params['discriminator'], state.model_state['discriminator'],
                                      x, train=False), np.float64) for x in (x_real_NHWC, x_fake_NHWC))
  want = {'d_real': np.mean(1 / (1 + np.exp(-real_N))), 'd_fake': np.mean(1 / (1 + np.exp(-fake_N))),
          'd_accuracy': 0.5 * (np.mean(real_N > 0) + np.mean(fake_N < 0)),
          'd_loss': np.mean(np.logaddexp(0, -real_N)) + np.mean(np.logaddexp(0, fake_N)),
          'g_loss': np.mean(np.logaddexp(0, -fake_N))}  # the non-saturating losses
  for name, value in want.items():
    np.testing.assert_allclose(result[f'eval/{name}'], value, rtol=1e-5, atol=1e-6, err_msg=name)
  assert abs(want['d_real'] - want['d_fake']) > 1e-4  # real and fake are told apart
