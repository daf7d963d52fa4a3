"""What a sweep is: a base config, one set of --config overrides per trial, and the metric to compare.

A sweep file (experiments/<name>.py) defines `get_sweep() -> Sweep`, building its trials with
`grid` (every combination), `zipped` (values that go together) and `product` (every
combination of such lists), e.g.

  Sweep(config='configs/ddpm_digits.py', metric='eval/loss',
        trials=grid({'optim.lr': [3e-4, 1e-3], 'training.ema_rate': [0.99, 0.999]}),
        fixed={'training.eval_every': 100})
"""

import dataclasses
import importlib.util
import itertools
import os
import re
from typing import Any, Sequence

import ml_collections

from aigc_jax import cli
from aigc_jax.errors import UserError

Overrides = dict[str, Any]
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where run.py and configs/ live


@dataclasses.dataclass(frozen=True)
class Sweep:
  """A base config file, the overrides of each trial, and which metrics.jsonl value decides."""
  config: str                  # the base config file, relative to the repository root
  trials: Sequence[Overrides]  # one {config key: value} per trial
  metric: str = 'loss'         # a key of metrics.jsonl (e.g. 'eval/loss'), tabulated and plotted
  mode: str = 'min'            # 'min' or 'max': which value of the metric is best
  fixed: Overrides = dataclasses.field(default_factory=dict)  # overrides every trial gets


def grid(axes: dict[str, Sequence[Any]]) -> list[Overrides]:
  """Every combination of the values of each key, the last key varying fastest."""
  keys = list(axes)
  return [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]


def zipped(axes: dict[str, Sequence[Any]]) -> list[Overrides]:
  """The i-th values of all keys together, for values that must change together (width and heads)."""
  lengths = {k: len(v) for k, v in axes.items()}
  if len(set(lengths.values())) > 1:
    raise ValueError(f'zipped() needs lists of one length, got {lengths}')
  keys = list(axes)
  return [dict(zip(keys, values)) for values in zip(*(axes[k] for k in keys))]


def product(*trial_lists: Sequence[Overrides]) -> list[Overrides]:
  """Every combination of one trial from each list, merged: product(zipped(...), grid(...))."""
  return [{k: v for part in parts for k, v in part.items()} for parts in itertools.product(*trial_lists)]


def swept_keys(sweep: Sweep) -> list[str]:
  """The keys whose value differs between trials, in the order they first appear."""
  keys = list(dict.fromkeys(k for trial in sweep.trials for k in trial))
  return [k for k in keys if len({repr(t.get(k)) for t in sweep.trials}) > 1]


def flag_value(value: Any) -> str:
  """A value as run.py's --config.KEY=VALUE reads it; tuples as '(1,2)'."""
  if isinstance(value, (tuple, list)):
    return '(' + ','.join(flag_value(v) for v in value) + (',)' if len(value) == 1 else ')')
  return str(value)


def trial_names(sweep: Sweep) -> list[str]:
  """A folder name per trial from its swept values ('lr=0.001_ema_rate=0.99'), unique and stable."""
  keys = swept_keys(sweep)
  leaves = [k.split('.')[-1] for k in keys]
  short = {k: (leaf if leaves.count(leaf) == 1 else k) for k, leaf in zip(keys, leaves)}
  names = []
  for i, trial in enumerate(sweep.trials):
    name = '_'.join(f'{short[k]}={flag_value(trial[k])}' for k in keys if k in trial) or f'trial{i}'
    name = re.sub(r'[^A-Za-z0-9._=+-]', '-', name)
    names.append(name if name not in names else f'{name}_{i}')
  return names


def _module(path: str, what: str) -> Any:
  if not os.path.isfile(path):
    raise UserError(f'{what}={path!r} does not exist: give the path of a Python file')
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f'cannot load {what}={path!r}: {type(e).__name__}: {" ".join(str(e).split())}') from None
  return module


def load(path: str) -> Sweep:
  """The Sweep of a sweep file, with its overrides checked against its base config."""
  module = _module(path, '--sweep')
  if not hasattr(module, 'get_sweep'):
    raise UserError(f'--sweep={path!r} has no get_sweep(): define one returning an experiments.sweep.Sweep')
  sweep = module.get_sweep()
  if not isinstance(sweep, Sweep) or not sweep.trials:
    raise UserError(f'get_sweep() of --sweep={path!r} must return a Sweep with at least one trial')
  if sweep.mode not in ('min', 'max'):
    raise UserError(f"--sweep={path!r}: mode={sweep.mode!r} must be 'min' or 'max'")
  return sweep


def check_keys(sweep: Sweep, extra: Sequence[str], path: str) -> None:
  """A one-line error for the first override naming no key of the base config."""
  config: ml_collections.ConfigDict = _module(os.path.join(REPO_ROOT, sweep.config), 'the sweep config').get_config()
  flags = [f'--config.{k}=' for trial in [sweep.fixed, *sweep.trials] for k in trial] + list(extra)
  bad = cli.unknown_key(config, flags)
  if bad:
    raise UserError(f'--sweep={path!r}: {bad}')
