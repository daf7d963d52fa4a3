"""A sweep's results: one row per trial from its status.json and metrics.jsonl, as CSV, Markdown and a plot.

Columns: the trial, its swept values, status, the sweep metric's final and best values (and
the step of the best), the last logged step, the median steps/s over its logs and the wall
time of its attempts; failed trials carry their error. The plot shows the final metric
against the first swept key, one line per combination of the others.
"""

import csv
import json
import math
import os
import statistics
from typing import Any, Sequence

from experiments import sweep as sweep_lib
from experiments import trial as trial_lib


def _metric_rows(workdir: str) -> list[dict[str, Any]]:
  rows = []
  try:
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      for line in f:
        try:
          rows.append(json.loads(line))
        except ValueError:
          continue  # a torn last line of a killed run
  except OSError:
    pass
  return rows


def row(trial: trial_lib.Trial, sweep: sweep_lib.Sweep, keys: Sequence[str]) -> dict[str, Any]:
  """The results row of one trial."""
  status = trial_lib.read_status(trial.workdir)
  metrics = _metric_rows(trial.workdir)
  values = [(r['step'], r[sweep.metric]) for r in metrics if isinstance(r.get(sweep.metric), (int, float))]
  best = (min if sweep.mode == 'min' else max)(values, key=lambda sv: sv[1]) if values else (None, None)
  rates = [r['steps_per_sec'] for r in metrics if 'steps_per_sec' in r]
  return {
      'trial': trial.name,
      **{k: sweep_lib.flag_value(trial.overrides.get(k, '')) for k in keys},
      'status': status.get('status', 'not run'),
      f'final {sweep.metric}': values[-1][1] if values else None,
      f'best {sweep.metric}': best[1],
      'best step': best[0],
      'steps': max((r['step'] for r in metrics), default=None),
      'steps/s': statistics.median(rates) if rates else None,
      'wall s': status.get('wall_s'),
      'error': status.get('error', ''),
  }


def _cell(value: Any) -> str:
  if value is None:
    return ''
  if isinstance(value, float):
    return f'{value:.4g}' if math.isfinite(value) else str(value)
  return str(value).replace('|', '\\|').replace('\n', ' ')


def _write_csv(path: str, rows: list[dict[str, Any]]) -> None:
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows({k: '' if v is None else v for k, v in r.items()} for r in rows)


def _write_markdown(path: str, rows: list[dict[str, Any]], sweep: sweep_lib.Sweep) -> None:
  columns = list(rows[0])
  lines = [f'# Sweep of {sweep.config}: {sweep.metric} ({sweep.mode} is best)', '',
           '| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  lines += ['| ' + ' | '.join(_cell(r[c]) for c in columns) + ' |' for r in rows]
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')


def _numeric(values: Sequence[str]) -> list[float] | None:
  try:
    return [float(v) for v in values]
  except ValueError:
    return None


def _plot(path: str, rows: list[dict[str, Any]], sweep: sweep_lib.Sweep, keys: Sequence[str]) -> None:
  """The final metric against the first swept key, a line per combination of the other swept keys."""
  import matplotlib
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt
  x_key, others = (keys[0], keys[1:]) if keys else ('trial', [])
  final = f'final {sweep.metric}'
  done = [r for r in rows if r[final] is not None]
  x_all = sorted({r[x_key] for r in done}, key=lambda v: (_numeric([v]) or [0.0])[0])
  numeric = _numeric(x_all)
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  for series in sorted({tuple(r[k] for k in others) for r in done}):
    points = sorted(((x_all.index(r[x_key]), r[final]) for r in done if tuple(r[k] for k in others) == series))
    xs = [numeric[i] if numeric else i for i, _ in points]
    label = ', '.join(f'{k}={v}' for k, v in zip(others, series)) or sweep.metric
    ax.plot(xs, [y for _, y in points], marker='o', label=label)
  if numeric and min(numeric) > 0 and max(numeric) / min(numeric) >= 10:
    ax.set_xscale('log')
  if not numeric:
    ax.set_xticks(range(len(x_all)), x_all)
  ax.set_xlabel(x_key)
  ax.set_ylabel(f'{sweep.metric} (final)')
  ax.set_title(f'{os.path.basename(sweep.config)}: {len(done)} of {len(rows)} trials')
  ax.grid(alpha=0.3)
  if done:
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write(root: str, sweep: sweep_lib.Sweep, trials: Sequence[trial_lib.Trial]) -> list[str]:
  """Writes results.csv, results.md and results.png under `root`; returns their paths."""
  keys = sweep_lib.swept_keys(sweep)
  rows = [row(t, sweep, keys) for t in trials]
  paths = [os.path.join(root, f'results.{ext}') for ext in ('csv', 'md', 'png')]
  _write_csv(paths[0], rows)
  _write_markdown(paths[1], rows, sweep)
  _plot(paths[2], rows, sweep, keys)
  return paths
