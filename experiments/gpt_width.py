"""The character GPT on Tiny Shakespeare (CPU setting): width x depth, judged by the validation loss.

  python -m experiments.launch --sweep=experiments/gpt_width.py --root=workdirs/sweeps/gpt_width --parallel=2

The text is ../shared/data/tinyshakespeare.txt (override with --config.data.text_file=FILE).
Every 500 steps each trial scores the whole validation split and keeps a checkpoint.
"""

from experiments.sweep import Sweep
from experiments.sweep import grid


def get_sweep() -> Sweep:
  return Sweep(
      config='configs/gpt_shakespeare_cpu.py',
      trials=grid({'model.width': [64, 128, 192], 'model.num_layers': [2, 4]}),
      fixed={'data.text_file': '../shared/data/tinyshakespeare.txt', 'training.eval_every': 500,
             'training.checkpoint_every': 500, 'training.sample_every': 0},
      metric='eval/loss', mode='min')
