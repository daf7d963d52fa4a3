"""The pmapped step over 4 devices equals the 1-device step on the same global batch."""

import jax
import numpy as np
import pytest

from aigc_jax import data
from aigc_jax.errors import UserError
from aigc_jax.train import parallel
from tests.conftest import build


def _run(config, devices, batches, steps):
  devs = parallel.devices(devices)
  _, train_step, state = build(config)
  step = parallel.train_step(train_step, devs)
  losses = []
  for b in batches[:steps]:
    state, metrics = step(state, [{'images': b.reshape((len(devices), -1) + b.shape[2:])}])
    losses.append(float(metrics['loss']))
  return jax.device_get(state), losses


def test_4_device_step_equals_1_device_step(tiny_config):
  assert jax.device_count() == 4
  ds = data.create(tiny_config.data, 'train', 8, seed=0, process_index=0, process_count=1,
                   local_devices=1, train=True)
  batches = [ds.batch(s)['images'] for s in range(3)]
  state4, losses4 = _run(tiny_config, jax.devices()[:4], batches, 3)
  state1, losses1 = _run(tiny_config, jax.devices()[:1], batches, 3)
  assert int(state4.step) == int(state1.step) == 3
  np.testing.assert_allclose(losses4, losses1, atol=1e-6)
  for a, b in zip(jax.tree.leaves(state4.params), jax.tree.leaves(state1.params)):
    np.testing.assert_allclose(a, b, atol=1e-5)
  changed = [not np.allclose(a, b) for a, b in
             zip(jax.tree.leaves(state4.params), jax.tree.leaves(build(tiny_config).state.params))]
  assert any(changed)  # the steps did train


def test_steps_per_call_scan_equals_single_steps(tiny_config):
  """k steps in one lax.scan call equal k separate calls."""
  _, train_step, init = build(tiny_config)
  devs = parallel.devices()
  ds = data.create(tiny_config.data, 'train', 8, seed=0, process_index=0, process_count=1,
                   local_devices=4, train=True)
  batches = [ds.batch(s) for s in range(2)]
  single, _ = parallel.train_step(train_step, devs, 1, donate=False)(init, batches)
  multi, _ = parallel.train_step(train_step, devs, 2, donate=False)(init, batches)
  for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(multi)):
    np.testing.assert_allclose(a, b, atol=1e-5)
  assert int(multi.step) == 2


def test_batch_not_divisible_by_devices_is_clear():
  with pytest.raises(UserError, match='training.batch_size=6 must be a positive multiple of the number of devices'):
    parallel.check_batch(6, parallel.devices())
  assert parallel.check_batch(8, parallel.devices()) == 2


def test_prefetched_calls_equal_host_batches(tiny_config):
  """The loop's prefetch (calls of k steps on the devices ahead of time) trains exactly as host batches do."""
  _, train_step, init = build(tiny_config)
  devs = parallel.devices()
  ds = data.create(tiny_config.data, 'train', 8, seed=0, process_index=0, process_count=1,
                   local_devices=4, train=True)
  calls = [[ds.batch(s) for s in range(a, min(a + 2, 5))] for a in range(0, 5, 2)]
  inputs = list(parallel.prefetch(iter(calls), devs, steps_per_call=2))
  assert [(i.steps, i.stacked) for i in inputs] == [(2, True), (2, True), (1, False)]
  assert inputs[0].batches['images'].shape == (4, 2, 2, 8, 8, 1)
  assert len(inputs[0].batches['images'].sharding.device_set) == 4
  step = parallel.train_step(train_step, devs, 2, donate=False)
  fetched, host = init, init
  for i, c in zip(inputs, calls):
    fetched, _ = step(fetched, i)
    host, _ = step(host, c)
  assert int(fetched.step) == 5
  for a, b in zip(jax.tree.leaves(fetched), jax.tree.leaves(host)):
    np.testing.assert_array_equal(a, b)
