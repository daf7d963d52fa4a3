"""Checkpoints move between device counts: written with 4 devices they restore with 1 and 2, and the other way round."""

import jax
import numpy as np
import pytest

from aigc_jax import data
from aigc_jax.train import checkpoint
from aigc_jax.train import loop
from aigc_jax.train import parallel
from tests.conftest import build
from tests.conftest import one_level_ddpm_config
from tests.conftest import restore_newest
from tests.test_cli import TINY
from tests.test_cli import _run


def _trained_on(config, n_devices):
  """The tiny DDPM state after one real step on the first `n_devices` devices, replicated over them."""
  devs = parallel.devices(jax.devices()[:n_devices])
  built = build(config)
  ds = data.create(config.data, 'train', 8, seed=0, process_index=0, process_count=1, local_devices=n_devices,
                   train=True)
  state = parallel.replicate(built.state, devs)
  state, _ = parallel.train_step(built.step, devs)(state, [ds.batch(0)])
  return built, state


@pytest.mark.parametrize('written, read', [(4, 1), (4, 2), (1, 4), (2, 4)])
def test_state_restores_bit_equal_on_another_device_count(tiny_config, tmp_path, written, read):
  built, state = _trained_on(tiny_config, written)
  assert len(jax.tree.leaves(state)[0].sharding.device_set) == written
  ckpts = checkpoint.Checkpoints(str(tmp_path), 3)
  ckpts.save(1, state, {})
  ckpts.close()
  devs = parallel.devices(jax.devices()[:read])
  target = build(tiny_config).state  # what the loop restores into
  ckpts = checkpoint.Checkpoints(str(tmp_path), 3)
  restored = parallel.replicate(ckpts.restore(target), devs)
  ckpts.close()
  assert len(jax.tree.leaves(restored)[0].sharding.device_set) == read
  for a, b in zip(jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(jax.device_get(restored))):
    np.testing.assert_array_equal(a, b)
  ds = data.create(tiny_config.data, 'train', 8, seed=0, process_index=0, process_count=1, local_devices=read,
                   train=True)
  after, metrics = parallel.train_step(built.step, devs)(restored, [ds.batch(1)])  # and it trains on
  assert int(after.step) == 2 and np.isfinite(float(metrics['loss']))


def test_a_run_resumed_in_processes_with_4_then_1_then_2_devices_ends_as_one_run(tmp_path):
  """Separate processes, as after a move to another machine; the end equals a 4-device run up to float order."""
  workdir = str(tmp_path / 'moved')
  config = one_level_ddpm_config()  # the least to compile: each device count compiles its own programs
  args = [*TINY, f'--workdir={workdir}', '--config.diffusion.num_timesteps=100', '--config.training.sample_every=0',
          '--config.optim.warmup_steps=2', f'--config.model.ch_mult={config.model.ch_mult}',
          f'--config.model.attn_resolutions={config.model.attn_resolutions}']
  for devices, steps in ((4, 2), (1, 4), (2, 6)):
    result = _run(*args, f'--config.training.num_train_steps={steps}', devices=devices)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f'on {devices} x cpu' in result.stdout
    assert (f'resuming from step {steps - 2} of {steps}' if steps > 2 else 'starting from step 0') in result.stdout
  config.training.num_train_steps = 6
  config.training.sample_every = 0
  straight = loop.train(config, str(tmp_path / 'straight'))
  _, moved = restore_newest(config, workdir)
  assert int(moved.step) == 6
  for a, b in zip(jax.tree.leaves(jax.device_get(straight)), jax.tree.leaves(jax.device_get(moved))):
    np.testing.assert_allclose(a, b, atol=1e-5)
