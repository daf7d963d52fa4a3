"""The one training loop: workdir contracts, exact resume, sample/eval modes, failure handling."""

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from aigc_jax.errors import UserError
from aigc_jax.methods import ddpm
from aigc_jax.train import checkpoint
from aigc_jax.train import loop
from aigc_jax.train import parallel
from aigc_jax.train import writers
from tests.conftest import restore_newest


def _rows(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _tensorboard(workdir):
  """{tag: [(step, value)]} as TensorBoard's event reader sees the run's tensorboard/ folder."""
  from tensorboard.backend.event_processing import event_accumulator
  events = event_accumulator.EventAccumulator(os.path.join(workdir, 'tensorboard'), size_guidance={'scalars': 0})
  events.Reload()
  return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()['scalars']}


def _assert_trees_equal(a, b, atol=0.0):
  leaves_a, leaves_b = jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(x, y, atol=atol, rtol=0)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """One tiny 4-step run on 4 devices, shared by the tests that only read its workdir."""
  from tests.conftest import tiny_ddpm_config
  workdir = str(tmp_path_factory.mktemp('run'))
  state = loop.train(tiny_ddpm_config(), workdir)
  return workdir, state


def test_workdir_follows_the_contracts(trained):
  workdir, state = trained
  assert int(state.step) == 4
  rows = _rows(workdir)
  assert [r['step'] for r in rows] == [2, 4]
  assert {'loss', 'lr', 'grad_norm', 'steps_per_sec', 'examples_per_sec'} <= set(rows[0])
  assert all(isinstance(v, float) for r in rows for k, v in r.items() if k != 'step')
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['training']['num_train_steps'] == 4
  with np.load(os.path.join(workdir, 'samples', 'step_4.npz')) as z:
    assert z['images'].shape == (6, 8, 8, 1) and z['images'].dtype == np.uint8
  grid = np.asarray(Image.open(os.path.join(workdir, 'samples', 'step_4.png')))
  assert grid.ndim == 2 and grid.shape[0] >= 2 * 64  # 6 digits on a 3x2 grid of >= 64 px cells
  scalars = _tensorboard(workdir)
  assert set(scalars) == set(rows[0]) - {'step'}
  for tag, points in scalars.items():
    np.testing.assert_allclose(points, [(r['step'], r[tag]) for r in rows], rtol=1e-6)
  assert checkpoint.Checkpoints(os.path.join(workdir, 'checkpoints'), 3).steps() == [2, 4]


def test_sample_mode_draws_from_the_ema_params(trained, tiny_config):
  workdir, state = trained
  with np.load(os.path.join(workdir, 'samples', 'step_4.npz')) as z:
    from_training = z['images']
  samples = loop.sample(tiny_config, workdir)
  method = ddpm.DDPM(tiny_config, parallel.AXIS)
  draw = parallel.sampler(method.sample, parallel.devices(), tiny_config.sample.num)
  key = jax.random.PRNGKey(tiny_config.seed + 2)
  np.testing.assert_array_equal(samples['images'], draw(state, key)['images'])
  assert not np.array_equal(samples['images'], draw(state.replace(ema_params=state.params), key)['images'])
  with np.load(os.path.join(workdir, 'samples', 'step_4_1.npz')) as z:
    np.testing.assert_array_equal(z['images'], samples['images'])
  with np.load(os.path.join(workdir, 'samples', 'step_4.npz')) as z:
    np.testing.assert_array_equal(z['images'], from_training)  # the training-time samples are kept
  assert os.path.exists(os.path.join(workdir, 'samples', 'step_4_1.png'))


def test_eval_mode_writes_eval_json(trained, tiny_config):
  workdir, _ = trained
  result = loop.evaluate(tiny_config, workdir)
  with open(os.path.join(workdir, 'eval_4.json')) as f:
    assert json.load(f) == result
  assert result['num_examples'] == 16 and 0.0 < result['eval/loss'] < 10.0
  scalars = _tensorboard(workdir)
  for tag, value in result.items():
    if tag.startswith('eval/'):
      np.testing.assert_allclose(scalars[tag], [(4, value)], rtol=1e-6)


def test_resume_equals_uninterrupted_run(tiny_config, tmp_path):
  tiny_config.training.sample_every = 0
  resumed, straight = str(tmp_path / 'resumed'), str(tmp_path / 'straight')
  loop.train(tiny_config, resumed)
  tiny_config.training.num_train_steps = 8
  state_resumed = loop.train(tiny_config, resumed)
  state_straight = loop.train(tiny_config, straight)
  _assert_trees_equal(state_resumed, state_straight)
  assert [r['step'] for r in _rows(resumed)] == [2, 4, 6, 8]


def test_rows_after_the_checkpoint_are_replaced_on_resume(tiny_config, tmp_path):
  """A run killed after logging past its last checkpoint leaves no duplicate rows behind,
  in metrics.jsonl or in TensorBoard."""
  tiny_config.training.sample_every = 0
  tiny_config.training.checkpoint_every = 4
  workdir = str(tmp_path)
  loop.train(tiny_config, workdir)
  with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
    f.write(json.dumps({'step': 6, 'loss': 1.0}) + '\n')  # logged by a run killed before step 8
    f.write('{"step": 8, "lo')  # and a row torn by the kill
  tensorboard = os.path.join(workdir, 'tensorboard')
  killed = writers.EventFile(tensorboard)
  killed.write_scalars(6, {'loss': 1.0})
  killed.write_scalars(8, {'loss': 1.0})
  killed.close()
  torn = os.path.join(tensorboard, sorted(os.listdir(tensorboard))[-1])
  os.truncate(torn, os.path.getsize(torn) - 7)  # the kill tore the record of step 8
  tiny_config.training.num_train_steps = 8
  loop.train(tiny_config, workdir)
  rows = _rows(workdir)
  assert [r['step'] for r in rows] == [2, 4, 6, 8] and rows[2]['loss'] != 1.0
  np.testing.assert_allclose(_tensorboard(workdir)['loss'], [(r['step'], r['loss']) for r in rows], rtol=1e-6)


def test_a_run_killed_before_its_checkpoints_eval_and_samples_makes_them_on_resume(tiny_config, tmp_path):
  """Killed (or stopped by a signal) after writing the checkpoint of an eval and sample step but
  before its eval and samples: the resumed run makes them first, so none is lost."""
  tiny_config.training.eval_every = 4
  workdir = str(tmp_path)
  loop.train(tiny_config, workdir)
  rows = _rows(workdir)
  assert [r['step'] for r in rows if 'eval/loss' in r] == [4]
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:  # as the killed run left it
    f.writelines(json.dumps(r) + '\n' for r in rows if 'eval/loss' not in r)
  for name in os.listdir(os.path.join(workdir, 'samples')):
    os.remove(os.path.join(workdir, 'samples', name))
  tiny_config.training.num_train_steps = 6
  loop.train(tiny_config, workdir)
  assert [r['step'] for r in _rows(workdir) if 'eval/loss' in r] == [4, 6]
  assert os.path.exists(os.path.join(workdir, 'samples', 'step_4.npz'))
  loop.train(tiny_config, workdir)  # a finished run with its eval and samples: nothing is done again
  assert [r['step'] for r in _rows(workdir) if 'eval/loss' in r] == [4, 6]


def test_a_resume_between_call_boundaries_still_logs_and_checkpoints_on_schedule(tiny_config, tmp_path):
  t = tiny_config.training
  t.sample_every, t.steps_per_call, t.log_every, t.checkpoint_every = 0, 2, 4, 4
  t.num_train_steps = 5  # the last call is one step short: the run ends between two call boundaries
  workdir = str(tmp_path)
  loop.train(tiny_config, workdir)
  t.num_train_steps = 13
  loop.train(tiny_config, workdir)
  assert [r['step'] for r in _rows(workdir)] == [4, 5, 8, 12, 13]
  assert checkpoint.Checkpoints(os.path.join(workdir, 'checkpoints'), 3).steps() == [8, 12, 13]


def test_unreadable_latest_checkpoint_falls_back_to_previous(trained, tiny_config, tmp_path):
  workdir, _ = trained
  import shutil
  copy = str(tmp_path / 'copy')
  shutil.copytree(workdir, copy)
  latest = os.path.join(copy, 'checkpoints', '4')
  for root, _, files in os.walk(latest):
    for name in files:
      with open(os.path.join(root, name), 'wb'):
        pass  # truncate every file of step 4
  _, restored = restore_newest(tiny_config, copy)
  assert int(restored.step) == 2


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_checkpoints(tiny_config, tmp_path):
  tiny_config.training.sample_every = 0
  workdir = str(tmp_path)
  loop.train(tiny_config, workdir)
  tiny_config.training.num_train_steps = 8
  tiny_config.optim.lr = 1e30
  with pytest.raises(UserError, match=r'non-finite .* at step [56]: .*last good checkpoint \(step 4\)'):
    loop.train(tiny_config, workdir)
  assert checkpoint.Checkpoints(os.path.join(workdir, 'checkpoints'), 3).steps() == [2, 4]


def test_checkpoints_of_another_config_are_an_error_not_a_fresh_start(trained, tiny_config):
  workdir, _ = trained
  tiny_config.model.ch = 16  # a different model: the saved params do not fit
  with pytest.raises(UserError, match='no checkpoint in .* could be restored .*use the config that wrote them'):
    loop.sample(tiny_config, workdir)


def test_sample_and_eval_without_checkpoints_are_an_error_that_makes_no_folders(tiny_config, tmp_path):
  mistyped = str(tmp_path / 'typo')
  for mode in (loop.sample, loop.evaluate):
    with pytest.raises(UserError, match=r'no checkpoint in .*typo/checkpoints: train first \(--mode=train\)'):
      mode(tiny_config, mistyped)
  assert not os.path.exists(mistyped)


def test_loop_settings_are_validated_before_compiling(tiny_config, tmp_path):
  tiny_config.training.steps_per_call = 3
  with pytest.raises(UserError, match='training.log_every=2 must be a multiple of training.steps_per_call=3'):
    loop.train(tiny_config, str(tmp_path))
  tiny_config.training.steps_per_call = 1
  tiny_config.training.batch_size = 6
  with pytest.raises(UserError, match='training.batch_size=6 must be a positive multiple'):
    loop.train(tiny_config, str(tmp_path))
  tiny_config.training.batch_size = 8
  tiny_config.training.eval_every = 2
  tiny_config.eval.batch_size = 6
  with pytest.raises(UserError, match='eval.batch_size=6 must be a positive multiple'):
    loop.train(tiny_config, str(tmp_path))
  tiny_config.eval.batch_size = 8
  tiny_config.training.steps_per_call, tiny_config.training.sample_every = 2, -1
  with pytest.raises(UserError, match=r'training.sample_every=-1 must be >= 0 \(0: never during training\)'):
    loop.train(tiny_config, str(tmp_path))


def test_training_resumes_past_a_damaged_newest_checkpoint_and_rewrites_it(trained, tiny_config, tmp_path, caplog):
  workdir, _ = trained
  import glob
  import logging
  import shutil
  copy = str(tmp_path / 'copy')
  shutil.copytree(workdir, copy)
  os.remove(os.path.join(copy, 'checkpoints', '4', 'default', 'manifest.ocdbt'))  # one file of step 4 lost
  tiny_config.training.num_train_steps = 6
  tiny_config.training.sample_every = 0
  with caplog.at_level(logging.WARNING):
    state = loop.train(tiny_config, copy)
  assert 'the checkpoint of step 4 in' in caplog.text and 'falling back to the one before it' in caplog.text
  assert int(state.step) == 6
  assert checkpoint.Checkpoints(os.path.join(copy, 'checkpoints'), 3).steps() == [2, 4, 6]
  assert glob.glob(os.path.join(copy, 'checkpoints.unreadable', '4', 'default'))
  assert [r['step'] for r in _rows(copy)] == [2, 4, 6]


def test_a_workdir_that_stops_taking_writes_is_one_clear_error(tmp_path):
  writer = writers.MetricsWriter(str(tmp_path), resume_step=0)
  writer.write(1, {'loss': 1.0})
  os.remove(tmp_path / 'metrics.jsonl')
  os.mkdir(tmp_path / 'metrics.jsonl')  # stands for a disk that fills up or turns read-only mid-run
  with pytest.raises(UserError, match=r'cannot write metrics.jsonl \(Is a directory: .*metrics.jsonl\): free disk '
                                      r'space or make the workdir writable, then rerun the same command'):
    writer.write(2, {'loss': 1.0})
  writer.close()
  os.rmdir(tmp_path / 'metrics.jsonl')
  (tmp_path / 'tensorboard').rename(tmp_path / 'old')
  (tmp_path / 'tensorboard').write_text('')  # the events folder cannot be made
  with pytest.raises(UserError, match=r'cannot write TensorBoard events \(File exists: .*tensorboard\): free disk '
                                      r'space or make the workdir writable'):
    writers.MetricsWriter(str(tmp_path), resume_step=0)
  (tmp_path / 'samples').write_text('')  # the samples folder cannot be made
  with pytest.raises(UserError, match=r'cannot write samples \(File exists: .*samples\): free disk '
                                      r'space or make the workdir writable'):
    writers.write_samples(str(tmp_path), 3, {'images': np.zeros((1, 8, 8, 1), np.uint8)})
