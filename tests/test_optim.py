"""The learning-rate schedule: nanoGPT's warmup and cosine decay, step for step."""

import math

import numpy as np
import pytest

from aigc_jax.errors import UserError
from aigc_jax.train import optim
from configs import default, gpt_shakespeare_cpu


def nanogpt_lr(it: int, lr: float, min_lr: float, warmup: int, decay_iters: int) -> float:
  """nanoGPT's get_lr (train.py), as its README documents it."""
  if it < warmup:
    return lr * (it + 1) / (warmup + 1)
  ratio = (it - warmup) / (decay_iters - warmup)
  return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def test_cosine_schedule_is_nanogpts_at_every_step():
  config = gpt_shakespeare_cpu.get_config()
  n = config.training.num_train_steps
  schedule = optim.learning_rate_schedule(config.optim, n)
  o = config.optim
  ours = np.array([float(schedule(s)) for s in range(n + 1)])
  theirs = np.array([nanogpt_lr(s, o.lr, o.min_lr, o.warmup_steps, n) for s in range(n + 1)])
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=0)
  assert ours[0] > 0 and ours[o.warmup_steps] == pytest.approx(o.lr) and ours[n] == pytest.approx(o.min_lr)


def test_constant_schedule_and_no_warmup():
  cfg = default.get_config().optim
  cfg.update({'lr': 2e-4, 'warmup_steps': 4})
  schedule = optim.learning_rate_schedule(cfg, 100)
  np.testing.assert_allclose([float(schedule(s)) for s in (0, 3, 4, 99)], [4e-5, 1.6e-4, 2e-4, 2e-4], rtol=1e-6)
  cfg.warmup_steps = 0
  assert float(optim.learning_rate_schedule(cfg, 100)(0)) == pytest.approx(2e-4)


@pytest.mark.parametrize('key, value, message', [('warmup_steps', -1, 'optim.warmup_steps=-1 must be >= 0'),
                                                  ('schedule', 'linear', "optim.schedule='linear' is unknown")])
def test_bad_schedule_settings_are_one_line_errors(key, value, message):
  cfg = default.get_config().optim
  cfg[key] = value
  with pytest.raises(UserError, match=message):
    optim.learning_rate_schedule(cfg, 100)
