"""DDPM on the 8x8 digits: learning rate x EMA rate, judged by the held-out denoising loss of the EMA weights.

  python -m experiments.launch --sweep=experiments/ddpm_lr.py --root=workdirs/sweeps/ddpm_lr --parallel=2

Every 100 steps each trial evaluates its EMA parameters on the 200 held-out digits (the loss
the sampler's network is trained on; the bits/dim bound is left out, it costs 1000 network
calls per image) and keeps a checkpoint, so an interrupted trial loses at most 100 steps.
"""

from experiments.sweep import Sweep
from experiments.sweep import grid


def get_sweep() -> Sweep:
  return Sweep(
      config='configs/ddpm_digits.py',
      trials=grid({'optim.lr': [3e-4, 2e-3], 'training.ema_rate': [0.99, 0.999]}),
      fixed={'training.eval_every': 100, 'training.checkpoint_every': 100, 'eval.bits_per_dim': False,
             'eval.batch_size': 200, 'eval.num_batches': 1},
      metric='eval/loss', mode='min')
