"""Non-finite steps: flagged on the device at the step they happen, never checkpointed, or skipped when configured."""

import json
import os

import jax
import numpy as np
import pytest

from aigc_jax import data
from aigc_jax.data.pipeline import ImageBatches
from aigc_jax.errors import UserError
from aigc_jax.train import checkpoint
from aigc_jax.train import loop
from aigc_jax.train import nonfinite
from aigc_jax.train import parallel
from tests.conftest import build
from tests.conftest import one_level_ddpm_config
from tests.test_gan import tiny_dcgan_config


@pytest.fixture
def tiny_config():
  """A one-level UNet: the scanned test compiles three unrolled steps."""
  return one_level_ddpm_config()


def _batches(config, n, poisoned=()):
  """The first n training batches for 4 devices, with NaN pixels in the steps (0-based) listed in `poisoned`."""
  ds = data.create(config.data, 'train', config.training.batch_size, seed=0, process_index=0, process_count=1,
                   local_devices=4, train=True)
  batches = [ds.batch(s) for s in range(n)]
  for s in poisoned:
    batches[s] = {**batches[s], 'images': np.full_like(batches[s]['images'], np.nan)}
  return batches


def _mapped(config, steps_per_call=1, skip=False):
  """The config's shared train step mapped over the 4 devices, k steps a call, and a fresh state."""
  config.training.skip_nonfinite = skip
  _, train_step, state = build(config)
  return parallel.train_step(train_step, parallel.devices(), steps_per_call, donate=False), state


def _equal(a, b) -> bool:
  leaves_a, leaves_b = jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))
  return len(leaves_a) == len(leaves_b) and all(np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b))


def _poison_step(monkeypatch, step: int) -> None:
  """Training batches of `step` (1-based, as the loop counts) get NaN pixels: a corrupt batch mid-run."""
  clean = ImageBatches.batch

  def batch(self, s):
    out = clean(self, s)
    return {**out, 'images': np.full_like(out['images'], np.nan)} if self.shuffle and s == step - 1 else out
  monkeypatch.setattr(ImageBatches, 'batch', batch)


@pytest.mark.parametrize('skip', [False, True])
def test_a_nan_batch_is_flagged_at_its_step_and_skipping_keeps_the_old_state(tiny_config, skip):
  step, state = _mapped(tiny_config, skip=skip)
  clean, poisoned = _batches(tiny_config, 2, poisoned=[1])
  state, metrics = step(state, [clean])
  assert int(metrics[nonfinite.COUNT]) == 0 and int(metrics[nonfinite.FIRST]) == -1
  after, metrics = step(state, [poisoned])
  assert int(metrics[nonfinite.COUNT]) == 1 and int(metrics[nonfinite.FIRST]) == 2
  assert not np.isfinite(float(metrics['loss']))
  assert int(after.step) == 2  # the step advances either way: the next batch is the next one
  if skip:
    assert _equal(after.replace(step=state.step), state)  # params, EMA, optimizer state, RNG: all as before
  else:
    assert not all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(after.params)))


def test_scanned_steps_report_the_first_bad_step_and_average_the_good_ones(tiny_config):
  batches = _batches(tiny_config, 3, poisoned=[1])
  three, init = _mapped(tiny_config, 3, skip=True)
  scanned, metrics = three(init, batches)
  one, _ = _mapped(tiny_config, 1, skip=True)
  state, losses = init, []
  for b in batches:
    state, m = one(state, [b])
    losses.append(float(m['loss']))
  assert int(metrics[nonfinite.COUNT]) == 1 and int(metrics[nonfinite.FIRST]) == 2
  np.testing.assert_allclose(float(metrics['loss']), (losses[0] + losses[2]) / 2, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(jax.device_get(scanned)), jax.tree.leaves(jax.device_get(state))):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_a_nan_loss_after_a_good_step_in_one_scanned_call_is_named(tiny_config):
  """Without skipping, the stop message names the loss of the flagged step, not only the step."""
  step, state = _mapped(tiny_config, 2)
  _, metrics = step(state, _batches(tiny_config, 2, poisoned=[1]))
  watch = nonfinite.Watch(skip=False)
  watch.add(metrics)
  with pytest.raises(UserError, match=r'non-finite .*loss=nan at step 2: training stopped'):
    watch.read(last_checkpoint=None)


def test_a_short_call_reports_every_step_it_ran(tiny_config):
  """The last call of 5 steps at 3 per call runs 2 single steps: a NaN in its first is counted and named."""
  step, state = _mapped(tiny_config, 3, skip=True)
  poisoned, clean = _batches(tiny_config, 2, poisoned=[0])
  _, metrics = step(state, [poisoned, clean])
  assert int(metrics[nonfinite.COUNT]) == 1 and int(metrics[nonfinite.FIRST]) == 1
  assert np.isfinite(float(metrics['loss']))  # the mean of the good step


def test_gan_steps_go_through_the_same_guard():
  """A GAN's two networks, two optimizers and BatchNorm statistics are all kept on a skipped step."""
  config = tiny_dcgan_config()
  step, state = _mapped(config, skip=True)
  (poisoned,) = _batches(config, 1, poisoned=[0])
  after, metrics = step(state, [poisoned])
  assert int(metrics[nonfinite.COUNT]) == 1 and int(after.step) == 1
  assert _equal(after.replace(step=state.step), state)


def test_a_nan_between_logs_stops_the_run_naming_its_step_and_keeps_the_good_checkpoint(
    tiny_config, tmp_path, monkeypatch):
  """Step 3 of 4 is NaN; metrics are read only at steps 2 and 4, yet step 3 is named and never checkpointed."""
  tiny_config.training.sample_every = 0
  _poison_step(monkeypatch, 3)
  with pytest.raises(UserError, match=r'non-finite grad_norm=nan, loss=nan at step 3: training stopped and the '
                                      r'last good checkpoint \(step 2\) is kept; .*training.skip_nonfinite=True'):
    loop.train(tiny_config, str(tmp_path))
  ckpts = checkpoint.Checkpoints(os.path.join(tmp_path, 'checkpoints'), 3)
  assert ckpts.steps() == [2]
  ckpts.close()


def test_skip_nonfinite_skips_and_counts_the_steps(tiny_config, tmp_path, monkeypatch):
  tiny_config.training.sample_every = 0
  tiny_config.training.skip_nonfinite = True
  _poison_step(monkeypatch, 3)
  state = loop.train(tiny_config, str(tmp_path))
  assert int(state.step) == 4
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state)))
  with open(os.path.join(tmp_path, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  assert [(r['step'], r[nonfinite.SKIPPED]) for r in rows] == [(2, 0), (4, 1)]
  assert np.isfinite(rows[-1]['loss'])
