"""Class-conditional DDPM with classifier-free guidance: label dropout, the guided samplers, the
device split, the unconditional model's unchanged parameters, and conditional samples in a run."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from aigc_jax import methods
from aigc_jax.data import images
from aigc_jax.diffusion import guidance
from aigc_jax.diffusion import samplers
from aigc_jax.errors import UserError
from aigc_jax.methods import ddpm
from aigc_jax.methods import labels
from aigc_jax.methods import pixels
from aigc_jax.randomness import example_keys
from aigc_jax.train import loop
from aigc_jax.train import parallel
from aigc_jax.train import writers
from tests.conftest import build
from tests.conftest import tiny_ddpm_config


def tiny_cond_config():
  """tiny_ddpm_config made class-conditional over the ten digits."""
  config = tiny_ddpm_config()
  config.model.num_classes = 10
  config.sample.guidance_scale = 1.0
  return config


def _perturbed_state(config, seed=0):
  """A fresh state whose params (and EMA) are moved off init, so the zero-initialised output
  layers and the label embedding all shape the prediction."""
  state = build(config).state
  leaves, tree = jax.tree.flatten(state.params)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  params = tree.unflatten([p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
  return state.replace(params=params, ema_params=jax.tree.map(jnp.copy, params))  # no aliasing: steps donate


def _drop(labels_DB, rate, null=10):
  """drop_labels over a leading device axis, as pmap would map it."""
  return jax.vmap(lambda lab, rng: labels.drop(lab, example_keys(rng, lab.shape[0], 'batch'), rate, null),
                  in_axes=(0, None), axis_name='batch')(labels_DB, jax.random.PRNGKey(3))


def test_label_dropout_mask_has_the_configured_rate_and_ignores_the_device_split():
  labels_N = np.arange(40_000, dtype=np.int32) % 10
  for rate in (0.1, 0.5):
    one = np.asarray(_drop(labels_N[None], rate)).reshape(-1)
    four = np.asarray(_drop(labels_N.reshape(4, -1), rate)).reshape(-1)
    np.testing.assert_array_equal(four, one)
    dropped = one == 10
    assert abs(dropped.mean() - rate) < 0.006, (rate, dropped.mean())  # 4 standard deviations at 40k
    np.testing.assert_array_equal(one[~dropped], labels_N[~dropped])  # the rest keep their label
  assert not np.any(np.asarray(_drop(labels_N[None], 0.0)) == 10)


def test_guided_eps_mixes_conditional_and_null_predictions_from_one_batched_call():
  calls = []

  def eps_fn(x, t_B, label_B):
    calls.append(x.shape[0])
    return x * (1.0 + label_B[:, None]) + t_B[:, None]

  x = jnp.arange(6.0).reshape(3, 2)
  t = jnp.array([1, 2, 3])
  c = jnp.array([0, 4, 7])
  got = guidance.guided(eps_fn, c, 2.5, 10)(x, t)
  cond, null = eps_fn(x, t, c), eps_fn(x, t, jnp.full(3, 10))
  np.testing.assert_allclose(got, 3.5 * cond - 2.5 * null, rtol=1e-6)
  assert calls[0] == 6  # conditional and unconditional halves in one call


def test_sample_labels_spread_evenly_over_the_classes_on_any_device_split():
  per_device = jax.vmap(lambda _: labels.cycled(5, (2, 7, 9), 'batch'), axis_name='batch')(jnp.zeros(4))
  np.testing.assert_array_equal(np.asarray(per_device).reshape(-1), np.array([2, 7, 9] * 7)[:20])


@pytest.mark.parametrize('sampler', ['ancestral', 'ddim'])
def test_guided_sampler_at_w0_equals_the_conditional_sampler(sampler):
  config = tiny_cond_config()
  config.sample.method = sampler
  config.sample.guidance_scale = 0.0
  method = ddpm.DDPM(config, parallel.AXIS)
  state = _perturbed_state(config)
  devs = parallel.devices(jax.devices()[:1])
  rng = jax.random.PRNGKey(4)
  guided = parallel.sampler(method.sample, devs, 10)(state, rng)
  np.testing.assert_array_equal(guided['labels'], np.arange(10))

  def conditional(params, key):
    labels_B = jnp.arange(10, dtype=jnp.int32)
    return samplers.get(sampler)(
        lambda x, t: method.model.apply({'params': params}, x, t, train=False, labels_B=labels_B),
        method.schedule, (10,) + method.image_shape, key, config.sample)
  reference = pixels.to_uint8(jax.jit(conditional)(state.ema_params, jax.random.split(rng, 1)[0]))
  np.testing.assert_array_equal(guided['images'], reference)

  config.sample.guidance_scale = 3.0  # the unconditional half then moves the samples
  strong = parallel.sampler(ddpm.DDPM(config, parallel.AXIS).sample, devs, 10)(state, rng)
  assert np.abs(strong['images'].astype(int) - guided['images']).mean() > 1.0


def _real_digits(n):
  from configs import ddpm_digits
  x, y = images.load(ddpm_digits.get_config().data, 'train')
  return x[:n].astype(np.float32) / 127.5 - 1.0, y[:n]


def _run_steps(config, devices, x, y, steps=3):
  state = _perturbed_state(config)
  step = parallel.train_step(build(config).step, parallel.devices(devices))
  n = len(devices)
  losses = []
  for _ in range(steps):
    state, metrics = step(state, [{'images': x.reshape((n, -1) + x.shape[1:]), 'labels': y.reshape(n, -1)}])
    losses.append(float(metrics['loss']))
  return jax.device_get(state), losses


def test_conditional_4_device_step_equals_1_device_step():
  config = tiny_cond_config()
  config.model.label_dropout = 0.5  # many dropped labels, so a mask that depended on the split would show
  # Adam with eps 1 takes steps proportional to the gradients (plain Adam moves every weight by
  # about lr, which would blow summation-order differences of near-zero gradients up to lr).
  config.optim.update({'warmup_steps': 0, 'eps': 1.0, 'lr': 0.05})
  x, y = _real_digits(16)
  state4, losses4 = _run_steps(config, jax.devices()[:4], x, y)
  state1, losses1 = _run_steps(config, jax.devices()[:1], x, y)
  np.testing.assert_allclose(losses4, losses1, rtol=1e-5)  # the same noise, timesteps and dropped labels
  for a, b in zip(jax.tree.leaves(state4.params), jax.tree.leaves(state1.params)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  start = jax.device_get(_perturbed_state(config).params['label_embed']['embedding'])
  moved = np.abs(state1.params['label_embed']['embedding'] - start).max(axis=1)
  assert moved[10] > 0 and np.sum(moved[:10] > 0) >= 5  # the null class and the classes kept are trained


def test_unconditional_model_keeps_its_parameter_tree():
  shapes = {}
  for num_classes in (0, 10):
    config = tiny_ddpm_config()
    config.model.num_classes = num_classes
    shapes[num_classes] = jax.eval_shape(ddpm.DDPM(config, parallel.AXIS).init, jax.random.PRNGKey(0))[0]
  uncond, cond = shapes[0], dict(shapes[10])
  assert cond.pop('label_embed')['embedding'].shape == (11, 4 * 8)  # ten classes and the null class, 4 * ch wide
  assert jax.tree.structure(cond) == jax.tree.structure(uncond) and 'label_embed' not in uncond
  assert jax.tree.map(lambda a: a.shape, cond) == jax.tree.map(lambda a: a.shape, uncond)


def test_conditioning_settings_are_clear_errors():
  config = tiny_ddpm_config()
  config.sample.guidance_scale = 2.0
  with pytest.raises(UserError, match='sample.guidance_scale and sample.labels need a class-conditional model'):
    methods.check_config(config)
  config = tiny_cond_config()
  config.sample.labels = (3, 10)
  with pytest.raises(UserError, match=r'sample.labels has \[10\], outside the classes 0..9'):
    methods.check_config(config)
  config = tiny_cond_config()
  config.model.label_dropout = 0.0  # the null class would never be trained, yet guidance would use it
  with pytest.raises(UserError, match='sample.guidance_scale=1.0 needs the unconditional model'):
    methods.check_config(config)
  config = tiny_cond_config()
  config.model.label_dropout = 1.0
  with pytest.raises(UserError, match=r'model.label_dropout=1.0 must be in \[0, 1\)'):
    methods.check_config(config)
  _, train_step, state = build(tiny_cond_config())
  with pytest.raises(UserError, match='model.num_classes=10 needs labelled images'):
    parallel.train_step(train_step, parallel.devices(jax.devices()[:1]))(
        state, [{'images': np.zeros((1, 2, 8, 8, 1), np.float32)}])


def test_class_rows_put_one_requested_class_per_row():
  imgs = np.arange(5, dtype=np.uint8)[:, None, None, None] * np.ones((5, 2, 2, 1), np.uint8)
  rows = writers.class_rows(imgs, np.array([3, 1, 3, 1, 3]))
  assert rows.shape == (2, 3, 2, 2, 1)
  np.testing.assert_array_equal(rows[:, :, 0, 0, 0], [[1, 3, 255], [0, 2, 4]])


def test_conditional_run_samples_the_requested_classes_one_per_row(tmp_path):
  config = tiny_cond_config()
  config.sample.labels = (2, 5)
  config.sample.num = 6
  loop.train(config, str(tmp_path))
  with np.load(os.path.join(tmp_path, 'samples', 'step_4.npz')) as z:
    np.testing.assert_array_equal(z['labels'], [2, 5, 2, 5, 2, 5])
    assert z['images'].shape == (6, 8, 8, 1)
  grid = np.asarray(Image.open(os.path.join(tmp_path, 'samples', 'step_4.png')))
  assert grid.shape == (2 + 2 * 66, 2 + 3 * 66)  # two classes in rows of three 64 px cells


def test_cifar_conditional_config_adds_only_the_label_embedding_to_the_papers_unet():
  from configs import ddpm_cifar
  from configs import ddpm_cifar_cond

  def count(config):
    shapes, _ = jax.eval_shape(ddpm.DDPM(config, parallel.AXIS).init, jax.random.PRNGKey(0))
    return sum(x.size for x in jax.tree.leaves(shapes))
  assert count(ddpm_cifar_cond.get_config()) - count(ddpm_cifar.get_config()) == 11 * 512  # 10 classes + null, 4*128
