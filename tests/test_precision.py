"""Mixed precision: bfloat16 compute keeps float32 params and follows the float32 loss curve."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aigc_jax import data
from aigc_jax.errors import UserError
from aigc_jax.methods import precision
from aigc_jax.train import parallel
from tests.conftest import build
from tests.conftest import tiny_ddpm_config
from tests.test_lm import SONNET
from tests.test_lm import tiny_lm_config


def test_auto_is_float32_on_cpus_bfloat16_elsewhere_and_names_are_checked():
  # bench/device_check.sh runs this file on a GPU too, where 'auto' is bfloat16
  assert precision.compute_dtype('auto') == (jnp.float32 if jax.default_backend() == 'cpu' else jnp.bfloat16)
  assert precision.compute_dtype('bfloat16') == jnp.bfloat16
  with pytest.raises(UserError, match="model.dtype='float16' is unknown: use one of auto, float32, bfloat16"):
    precision.compute_dtype('float16')


def _losses(config, dtype: str, steps: int):
  config.model.dtype = dtype
  ds = data.create(config.data, 'train', config.training.batch_size, seed=0, process_index=0, process_count=1,
                   local_devices=1, train=True)
  _, train_step, state = build(config, ds.info)
  step = parallel.train_step(train_step, parallel.devices(jax.devices()[:1]))
  losses = []
  for s in range(steps):
    state, metrics = step(state, [ds.batch(s)])
    losses.append(float(metrics['loss']))
  return np.array(losses), state


@pytest.mark.parametrize('name', ['ddpm', 'lm'])
def test_bfloat16_loss_curve_matches_float32(name, tmp_path):
  if name == 'ddpm':
    config = tiny_ddpm_config()
    config.model.ch = 16
  else:
    path = tmp_path / 'sonnet.txt'
    path.write_text(SONNET, encoding='utf-8')
    config = tiny_lm_config(str(path))
  config.training.batch_size = 32
  config.training.num_train_steps = 40
  config.optim.lr = 3e-3
  config.optim.warmup_steps = 5
  f32, _ = _losses(config, 'float32', 40)
  bf16, state = _losses(config, 'bfloat16', 40)
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
  assert {x.dtype for x in jax.tree.leaves(state.opt_state) if x.ndim} == {jnp.dtype(jnp.float32)}
  assert not np.array_equal(f32, bf16)  # bfloat16 really computed
  np.testing.assert_allclose(bf16, f32, rtol=0.05)
  assert bf16[-10:].mean() < 0.85 * bf16[:3].mean()  # and it learned
