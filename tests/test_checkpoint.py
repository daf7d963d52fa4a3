"""Checkpoints keep the data's info beside the state; single-item checkpoints still restore."""

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from aigc_jax.train import checkpoint


def test_data_info_is_saved_with_each_step(tmp_path):
  ckpts = checkpoint.Checkpoints(str(tmp_path), keep=2)
  assert ckpts.data_info() is None
  state = {'w': jnp.arange(3.0)}
  ckpts.save(1, state, {'tokenizer': 'char', 'vocab': '\n !abc'})
  ckpts.close()
  reopened = checkpoint.Checkpoints(str(tmp_path), keep=2)
  assert reopened.data_info() == {'tokenizer': 'char', 'vocab': '\n !abc'}
  np.testing.assert_array_equal(reopened.restore(state)['w'], state['w'])
  reopened.close()


def test_single_item_checkpoints_still_restore(tmp_path, caplog):
  state = {'w': jnp.arange(3.0)}
  with ocp.CheckpointManager(str(tmp_path)) as old:
    old.save(5, args=ocp.args.StandardSave(state))
  ckpts = checkpoint.Checkpoints(str(tmp_path), keep=2)
  np.testing.assert_array_equal(ckpts.restore(state)['w'], state['w'])
  assert ckpts.data_info() == {}
  assert 'unreadable' not in caplog.text  # an older layout is not a damaged checkpoint
  ckpts.close()
