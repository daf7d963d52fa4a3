"""The one shared train step: Adam then the EMA by hand, phases in order, frozen parts, per-example randomness."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aigc_jax.methods.base import Method
from aigc_jax.methods.base import Phase
from aigc_jax.train import parallel
from aigc_jax.train import state as state_lib
from aigc_jax.train import step as step_lib
from configs import default

LR = 0.01


def _config(ema_rate=0.9):
  config = default.get_config()
  config.optim.lr = LR
  config.training.update({'batch_size': 4, 'num_train_steps': 10, 'ema_rate': ema_rate})
  return config


class Linear(Method):
  """loss(w) = mean over the batch of <w, x>: its gradient is the batch mean of x."""

  def init(self, rng):
    return {'w': jnp.array([1.0, -2.0, 4.0])}, {}

  def loss(self, params, batch, rng, model_state):
    return jnp.mean(batch['x'] @ params['w']), ({'x_mean': jnp.mean(batch['x'])}, model_state)


def _run(method, config, batch, devices=1, steps=1):
  train_step = step_lib.build(method, config, parallel.AXIS)
  state = jax.jit(train_step.init)(jax.random.PRNGKey(0))
  step = parallel.train_step(train_step, parallel.devices(jax.devices()[:devices]), donate=False)
  init = jax.device_get(state)
  for _ in range(steps):
    state, metrics = step(state, [jax.tree.map(lambda a: a.reshape((devices, -1) + a.shape[1:]), batch)])
  return init, jax.device_get(state), jax.device_get(metrics)


def test_one_step_is_the_optimizers_update_then_the_ema_then_the_counter():
  """Adam's first step moves each weight by lr * g / (|g| + eps); the EMA (rate 0.9) moves a tenth of the way
  there; the metrics are the loss before the step, the gradient norm and the learning rate of step 0."""
  x = np.array([[1.0, 2.0, -3.0], [3.0, -2.0, -1.0], [0.5, 0.0, 0.5], [-0.5, 4.0, 1.5]], np.float32)
  init, state, metrics = _run(Linear(_config(), parallel.AXIS), _config(), {'x': x})
  g = x.mean(axis=0)
  w0 = init.params['w']
  w1 = w0 - LR * g / (np.abs(g) + 1e-8)
  np.testing.assert_allclose(state.params['w'], w1, rtol=1e-6)
  np.testing.assert_allclose(state.ema_params['w'], 0.9 * w0 + 0.1 * w1, rtol=1e-6)
  assert int(state.step) == 1
  np.testing.assert_allclose(metrics['loss'], np.mean(x @ w0), rtol=1e-6)
  np.testing.assert_allclose(metrics['grad_norm'], np.linalg.norm(g), rtol=1e-6)
  np.testing.assert_allclose(metrics['lr'], LR, rtol=1e-6)
  np.testing.assert_allclose(metrics['x_mean'], x.mean(), rtol=1e-6)


def test_the_step_on_4_devices_averages_the_gradients_as_one_device_does():
  x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
  config = _config()
  config.training.batch_size = 8
  _, one, m1 = _run(Linear(config, parallel.AXIS), config, {'x': x}, devices=1, steps=2)
  _, four, m4 = _run(Linear(config, parallel.AXIS), config, {'x': x}, devices=4, steps=2)
  np.testing.assert_allclose(four.params['w'], one.params['w'], rtol=1e-6)
  np.testing.assert_allclose(m4['loss'], m1['loss'], rtol=1e-6)


class TwoNetworks(Method):
  """Phase 'a' pulls network a to 1; phase 'b' has loss <b, a>, so its gradient is the a it sees."""

  def init(self, rng):
    return {'a': jnp.zeros(2), 'b': jnp.zeros(2)}, {'stat': jnp.zeros(())}

  @property
  def phases(self):
    return (Phase(self.loss_a, network='a', name='a', ema=False), Phase(self.loss_b, network='b', name='b'))

  def loss_a(self, params, batch, rng, model_state):
    return jnp.sum(jnp.square(params['a'] - 1.0)), ({}, {'stat': model_state['stat'] + 1.0})

  def loss_b(self, params, batch, rng, model_state):
    return jnp.sum(params['b'] * params['a']), ({'stat_seen_by_b': model_state['stat']}, model_state)


def test_phases_run_in_order_each_on_its_network_and_the_ema_follows_one():
  config = _config(ema_rate=0.5)
  _, state, metrics = _run(TwoNetworks(config, parallel.AXIS), config, {'x': np.zeros((4, 1), np.float32)})
  np.testing.assert_allclose(state.params['a'], [LR, LR], rtol=1e-5)      # Adam's first step toward 1
  np.testing.assert_allclose(state.params['b'], [-LR, -LR], rtol=1e-5)    # from the gradient a = lr: b saw the new a
  np.testing.assert_allclose(state.ema_params, 0.5 * state.params['b'], rtol=1e-5)  # the EMA of b only
  assert set(state.opt_state) == {'a', 'b'} and int(state.step) == 1
  assert float(metrics['stat_seen_by_b']) == 1.0 and float(state.model_state['stat']) == 1.0
  assert metrics['loss'] == metrics['a_loss'] == 2.0
  assert {'a_grad_norm', 'a_lr', 'b_loss', 'b_grad_norm', 'b_lr'} <= set(metrics)


class TamperingWithParts(Linear):
  """A loss that tries to change the frozen parts it is given."""

  def loss(self, params, batch, rng, model_state):
    loss, (metrics, _) = super().loss(params, batch, rng, model_state)
    changed = jax.tree.map(lambda p: p + 1.0, model_state[state_lib.PARTS])
    return loss, (metrics, {**model_state, state_lib.PARTS: changed})


def test_frozen_parts_come_back_as_they_went_in_and_nan_parts_do_not_flag_the_step():
  config = _config()
  train_step = step_lib.build(TamperingWithParts(config, parallel.AXIS), config, parallel.AXIS)
  part = {'kernel': np.array([1.0, np.nan], np.float32)}  # never judged: the guard leaves the parts out
  state = jax.jit(train_step.init)(jax.random.PRNGKey(0))
  state = state.replace(model_state={state_lib.PARTS: {'encoder': part}})
  step = parallel.train_step(train_step, parallel.devices(jax.devices()[:1]), donate=False)
  state, metrics = step(state, [{'x': np.ones((1, 4, 3), np.float32)}])
  np.testing.assert_array_equal(jax.device_get(state.model_state[state_lib.PARTS]['encoder']['kernel']), part['kernel'])
  assert int(metrics['nonfinite_steps']) == 0


class Noisy(Linear):
  """The loss of w on x plus noise drawn per example (`examples`) or per device (`device`)."""
  draw = 'examples'

  def loss(self, params, batch, rng, model_state):
    x = batch['x']
    if self.draw == 'examples':
      noise = jax.vmap(lambda k: jax.random.normal(k, x.shape[1:]))(rng.examples(x.shape[0]))
    else:
      noise = jax.random.normal(rng.device(), x.shape)
    return jnp.mean((x + noise) @ params['w']), ({}, model_state)


@pytest.mark.parametrize('draw', ['examples', 'device'])
def test_per_example_keys_make_the_loss_independent_of_the_device_split(draw):
  config = _config()
  config.training.batch_size = 8
  x = np.zeros((8, 3), np.float32)
  method = Noisy(config, parallel.AXIS)
  method.draw = draw
  _, _, one = _run(method, config, {'x': x}, devices=1)
  _, _, four = _run(method, config, {'x': x}, devices=4)
  if draw == 'examples':
    np.testing.assert_allclose(four['loss'], one['loss'], rtol=1e-6)
  else:  # a key per device draws other noise for other splits: what `examples` is there to prevent
    assert abs(float(four['loss']) - float(one['loss'])) > 1e-3
