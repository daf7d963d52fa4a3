"""Checkpoints keep the data's info beside the state; single-item checkpoints still restore; damaged or unwritable
checkpoints are clear messages that never cost the earlier ones."""

import glob
import logging
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from aigc_jax.errors import UserError
from aigc_jax.train import checkpoint
from aigc_jax.train import state as state_lib
from tests.conftest import process_env
from tests.conftest import ROOT


def test_data_info_is_saved_with_each_step(tmp_path):
  ckpts = checkpoint.Checkpoints(str(tmp_path), keep=2)
  assert ckpts.data_info() is None
  state = {'w': jnp.arange(3.0)}
  ckpts.save(1, state, {'tokenizer': 'char', 'vocab': '\n !abc'})
  ckpts.close()
  reopened = checkpoint.Checkpoints(str(tmp_path), keep=2)
  assert reopened.data_info() == {'tokenizer': 'char', 'vocab': '\n !abc'}
  np.testing.assert_array_equal(reopened.restore(jax.tree.map(jnp.zeros_like, state))['w'], state['w'])
  reopened.close()


def test_checkpoints_written_before_the_run_record_read_as_layout_1_without_parts(tmp_path):
  state = {'w': jnp.arange(3.0)}
  with ocp.CheckpointManager(str(tmp_path), item_names=('default', 'data_info')) as old:  # as aigc_jax wrote them
    old.save(3, args=ocp.args.Composite(default=ocp.args.StandardSave(state),
                                        data_info=ocp.args.JsonSave({'tokenizer': 'byte'})))
  ckpts = checkpoint.Checkpoints(str(tmp_path), keep=2)
  assert ckpts.run_info() == {'layout': 1, 'parts': {}} and ckpts.data_info() == {'tokenizer': 'byte'}
  np.testing.assert_array_equal(ckpts.restore(jax.tree.map(jnp.zeros_like, state))['w'], state['w'])
  ckpts.close()


def test_a_checkpoint_of_another_train_state_layout_is_one_clear_line(tmp_path, monkeypatch):
  state = {'w': jnp.arange(3.0)}
  monkeypatch.setattr(state_lib, 'LAYOUT', 2)  # written by an aigc_jax whose train state is laid out otherwise
  ckpts = checkpoint.Checkpoints(str(tmp_path), keep=2)
  ckpts.save(7, state, {}, {'encoder': {'workdir': '/runs/vae', 'step': 4}})
  ckpts.close()
  monkeypatch.setattr(state_lib, 'LAYOUT', 1)
  ckpts = checkpoint.Checkpoints(str(tmp_path), keep=2)
  assert ckpts.run_info()['parts'] == {'encoder': {'workdir': '/runs/vae', 'step': 4}}
  with pytest.raises(UserError, match=r'the checkpoint of step 7 in .* holds a train state of layout 2, and this '
                                      r'aigc_jax reads layout 1: use the aigc_jax version that wrote it, or a new '
                                      r'workdir'):
    ckpts.restore(jax.tree.map(jnp.zeros_like, state))
  ckpts.close()


def test_single_item_checkpoints_still_restore(tmp_path, caplog):
  state = {'w': jnp.arange(3.0)}
  with ocp.CheckpointManager(str(tmp_path)) as old:
    old.save(5, args=ocp.args.StandardSave(state))
  ckpts = checkpoint.Checkpoints(str(tmp_path), keep=2)
  np.testing.assert_array_equal(ckpts.restore(jax.tree.map(jnp.zeros_like, state))['w'], state['w'])
  assert ckpts.data_info() == {}
  assert 'unreadable' not in caplog.text  # an older layout is not a damaged checkpoint
  ckpts.close()


def _two_steps(directory):
  """Checkpoints of steps 1 and 2 of a state big enough to span several files; the states."""
  states = {s: {'w': jax.random.normal(jax.random.PRNGKey(s), (5000,)), 'b': jnp.full((3, 3), float(s))}
            for s in (1, 2)}
  ckpts = checkpoint.Checkpoints(directory, keep=3)
  for s, state in states.items():
    ckpts.save(s, state, {'step': s})
  ckpts.close()
  return states


@pytest.mark.parametrize('damage', ['delete', 'truncate'])
@pytest.mark.parametrize('which', ['default/manifest.ocdbt', 'default/d/*'])
def test_a_damaged_file_in_the_newest_step_falls_back_to_the_previous_one(tmp_path, caplog, capfd, damage, which):
  states = _two_steps(str(tmp_path))
  (path,) = glob.glob(str(tmp_path / '2' / which))
  if damage == 'delete':
    os.remove(path)
  else:
    os.truncate(path, os.path.getsize(path) // 2)
  ckpts = checkpoint.Checkpoints(str(tmp_path), keep=3)
  with caplog.at_level(logging.WARNING):
    restored = ckpts.restore(jax.tree.map(jnp.zeros_like, states[1]))
  np.testing.assert_array_equal(restored['w'], states[1]['w'])
  assert re.search(r'the checkpoint of step 2 in .* is unreadable \(.*\); falling back to the one before it',
                   caplog.text)
  err = capfd.readouterr().err
  assert 'Exception ignored' not in err and 'Event loop is closed' not in err  # not a traceback per abandoned read
  ckpts.set_aside_after(1)  # what training does next: step 2 is written anew
  assert ckpts.steps() == [1] and os.path.isdir(str(tmp_path) + '.unreadable/2')
  ckpts.save(2, states[2], {})
  ckpts.close()
  np.testing.assert_array_equal(checkpoint.Checkpoints(str(tmp_path), keep=3).restore(states[1])['w'], states[2]['w'])


def _limited(kilobytes, command):
  """`command` in a shell whose writes past `kilobytes` in any file fail (EFBIG), as on a full disk.

  SIGXFSZ is ignored so that such a write fails instead of killing the process.
  """
  return ['bash', '-c', f'ulimit -f {kilobytes}; trap "" XFSZ; exec "$@"', 'bash', *command]


def test_a_checkpoint_that_cannot_be_written_is_one_error_and_the_previous_one_stays(tmp_path):
  from tests.test_cli import TINY
  from tests.test_cli import _run
  workdir = str(tmp_path / 'w')
  args = [*TINY, f'--workdir={workdir}', '--config.training.sample_every=0']
  first = _run(*args, '--config.training.num_train_steps=2')
  assert first.returncode == 0, first.stderr[-2000:]
  full = subprocess.run(_limited(50, [sys.executable, 'run.py', *args]), cwd=ROOT, env=process_env(2),
                        capture_output=True, text=True, timeout=300)
  assert full.returncode == 1
  assert 'Traceback' not in full.stderr  # Orbax's logs of the failure keep to a line each
  assert full.stderr.strip().splitlines()[-1].startswith(
      f'error: cannot write the checkpoint of step 4 to {workdir}/checkpoints: File too large; the checkpoints of '
      'steps [2] are intact: free disk space or make the folder writable, then rerun the same command to resume')
  again = _run(*args)
  assert again.returncode == 0, again.stderr[-2000:]
  assert 'resuming from step 2 of 4' in again.stdout and 'done: step 4' in again.stdout
