"""Optimizers from config: Adam(W) after a linear warmup, with global-norm clipping."""

from typing import Any

import jax
import ml_collections
import optax

from aigc_jax.errors import UserError


def learning_rate_schedule(cfg: ml_collections.ConfigDict, num_train_steps: int) -> optax.Schedule:
  """Linear warmup to `cfg.lr`, then constant or cosine decay to `cfg.min_lr` at `num_train_steps`.

  Step s < warmup_steps takes lr * (s + 1) / (warmup_steps + 1), as nanoGPT: no step is wasted at rate 0.
  """
  lr, warmup_steps = cfg.lr, cfg.warmup_steps
  if warmup_steps < 0:
    raise UserError(f'optim.warmup_steps={warmup_steps} must be >= 0 (0: no warmup)')
  warmup = lambda s: lr * (s + 1) / (warmup_steps + 1)
  if cfg.schedule == 'constant':
    after = optax.constant_schedule(lr)
  elif cfg.schedule == 'cosine':
    after = optax.cosine_decay_schedule(lr, max(num_train_steps - warmup_steps, 1), alpha=cfg.min_lr / lr)
  else:
    raise UserError(f"optim.schedule={cfg.schedule!r} is unknown: use 'constant' or 'cosine'")
  return optax.join_schedules([warmup, after], [warmup_steps])


def _decayed(params: Any) -> Any:
  """Weight decay applies to matrices and embeddings only, not to biases and norm scales (as in GPT-2)."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def create(cfg: ml_collections.ConfigDict,
           num_train_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer described by `cfg` (config.optim) and its learning-rate schedule."""
  schedule = learning_rate_schedule(cfg, num_train_steps)
  if cfg.optimizer == 'adam':
    opt = optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  elif cfg.optimizer == 'adamw':
    opt = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                      mask=_decayed)
  else:
    raise UserError(f"optim.optimizer={cfg.optimizer!r} is unknown: use 'adam' or 'adamw'")
  if cfg.grad_clip > 0:
    opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt)
  return opt, schedule
