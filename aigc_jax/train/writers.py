"""What a run writes into its workdir: metrics.jsonl, TensorBoard events, config.json, samples.

The file contracts (../shared/DESIGN.md) are kept here in one place:
  metrics.jsonl          one JSON object per logged step: {"step": int, "<name>": float, ...}
  samples/step_<N>.npz   key 'images': uint8 [N, H, W, C]; step_<N>.png, a grid of the same;
                         other image arrays a method adds (e.g. 'reconstructions') in the same
                         .npz, each also as a grid step_<N>_<name>.png; 'labels' int32 [N], the
                         classes a class-conditional model was asked for (its grid: one class per row);
                         'prompts' [N] strings, the prompt of each image of a text-to-image model, images in
                         prompt order (its grid: one row per prompt, the prompt written under it)
                         (--mode=sample never overwrites: later draws are step_<N>_<k>.*)
  samples/step_<N>.txt   generated text: the samples one after another, each ended by a line of dashes
  samples/step_<N>.jsonl the same, one JSON object per sample: {"prompt": str, "text": str (the continuation),
                         "tokens": [int] (its token ids), "logprobs": [float] (their log-probabilities)}
  eval_<N>.json          the metrics of --mode=eval at checkpoint step N
  config.json            the resolved config of the run
"""

import errno
import functools
import itertools
import json
import math
import os
import socket
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from aigc_jax.errors import UserError

TEXT_SEPARATOR = '-' * 40
_event_file_numbers = itertools.count()  # two event files of one process never share a name


def check_writable(workdir: str) -> None:
  """Creates `workdir` and proves a file can be written there, or raises a clear error."""
  probe = os.path.join(workdir, f'.write_test.{os.getpid()}')  # one per process: several may share the workdir
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    fix = 'free space there' if e.errno == errno.ENOSPC else 'choose a writable folder'
    raise UserError(f'cannot write to --workdir={workdir!r} ({e.strerror}): {fix}') from None


def _disk_errors_are_user_errors(what: str) -> Callable:
  """Decorates a writer so that an OSError (disk full, folder gone or read-only) is one clear UserError."""
  def decorate(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
      try:
        return fn(*args, **kwargs)
      except OSError as e:
        raise UserError(f'cannot write {what} ({e.strerror}: {e.filename}): free disk space or make the workdir '
                        'writable, then rerun the same command to resume from the last checkpoint') from None
    return wrapped
  return decorate


@_disk_errors_are_user_errors('a JSON file')
def write_json(path: str, obj: Any) -> None:
  """Writes JSON atomically (temporary file, then rename), so readers never see half a file."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def _row_step(line: str) -> float:
  """The step of a metrics.jsonl row; infinity for a torn last line of a killed run, so it is dropped."""
  try:
    return json.loads(line)['step']
  except (ValueError, KeyError, TypeError):
    return math.inf


class EventFile:
  """Scalars as a TensorBoard event file, written with TensorBoard's own protos and record format.

  Written directly rather than through tf.summary (clu) or TensorBoard's EventFileWriter, both of
  which import TensorFlow: that import alone cost every run ~4 s of start-up. Each writer starts
  its own file, as TensorFlow's do; TensorBoard reads all the files of a folder as one run.
  """

  @_disk_errors_are_user_errors('TensorBoard events')
  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    # TensorBoard reads a folder's files in name order: the time first, then this process's count.
    name = (f'events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}'
            f'.{next(_event_file_numbers):06d}')
    self._records = RecordWriter(open(os.path.join(logdir, name), 'ab'))
    self._write(event_pb2.Event(file_version='brain.Event:2'))

  def _write(self, event: event_pb2.Event) -> None:
    event.wall_time = time.time()
    self._records.write(event.SerializeToString())
    self._records.flush()  # a killed run keeps every row it logged, as metrics.jsonl does

  def write_start(self, step: int) -> None:
    """Marks a (re)start at `step`: TensorBoard then drops what earlier files logged from `step` on,
    the rows of a killed run that this one recomputes. Its Python reader (EventAccumulator, also
    `tensorboard --load_fast=false`) needs this mark; its Rust data server drops them either way."""
    self._write(event_pb2.Event(step=int(step), session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
    self._write(event_pb2.Event(step=int(step), summary=summary_pb2.Summary(value=values)))

  def close(self) -> None:
    self._records.close()


class MetricsWriter:
  """Appends scalars to metrics.jsonl and to TensorBoard; only the writing process calls it."""

  def __init__(self, workdir: str, resume_step: int):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._drop_rows_after(resume_step)
    self.tensorboard = EventFile(os.path.join(workdir, 'tensorboard'))
    self.tensorboard.write_start(resume_step + 1)

  @_disk_errors_are_user_errors('metrics.jsonl')
  def _drop_rows_after(self, step: int) -> None:
    """A resumed run recomputes the steps after its checkpoint: drop their old rows, not duplicate them."""
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      rows = [line for line in f if _row_step(line) <= step]
    with open(self.path + '.tmp', 'w') as f:
      f.writelines(rows)
    os.replace(self.path + '.tmp', self.path)

  def has_row(self, step: int, prefix: str) -> bool:
    """Whether metrics.jsonl holds a row of `step` with a scalar named `prefix`... (e.g. 'eval/')."""
    if not os.path.exists(self.path):
      return False
    with open(self.path) as f:
      rows = [json.loads(line) for line in f if _row_step(line) == step]
    return any(k.startswith(prefix) for row in rows for k in row)

  @_disk_errors_are_user_errors('metrics.jsonl')
  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    row = {'step': int(step), **{k: float(v) for k, v in scalars.items()}}
    with open(self.path, 'a') as f:
      f.write(json.dumps(row) + '\n')
    self.tensorboard.write_scalars(step, scalars)

  def close(self) -> None:
    self.tensorboard.close()


@_disk_errors_are_user_errors('TensorBoard events')
def write_tensorboard(workdir: str, step: int, scalars: Mapping[str, float]) -> None:
  """Scalars into the run's TensorBoard only (--mode=eval: metrics.jsonl belongs to training)."""
  writer = EventFile(os.path.join(workdir, 'tensorboard'))
  writer.write_scalars(step, scalars)
  writer.close()


def image_grid(images: np.ndarray, min_cell: int = 64) -> np.ndarray:
  """Tiles uint8 images into one grid, enlarged (nearest) so cells are >= `min_cell` px.

  [N, H, W, C] go on a near-square grid; [rows, cols, H, W, C] keep that layout.
  """
  if images.ndim == 5:
    rows, cols = images.shape[:2]
    images = images.reshape((-1,) + images.shape[2:])
  else:
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
  n, h, w, c = images.shape
  scale = max(1, -(-min_cell // h))
  x = images.repeat(scale, axis=1).repeat(scale, axis=2)
  pad = 2
  H, W = h * scale + pad, w * scale + pad
  grid = np.full((rows * H + pad, cols * W + pad, c), 255, np.uint8)
  for i in range(n):
    r, col = divmod(i, cols)
    grid[pad + r * H:pad + r * H + h * scale, pad + col * W:pad + col * W + w * scale] = x[i]
  return grid


def class_rows(images_NHWC: np.ndarray, labels_N: np.ndarray) -> np.ndarray:
  """Images laid out [classes, max per class, H, W, C], one requested class per row in label order.

  Rows with fewer images than the longest are filled with white cells.
  """
  classes = np.unique(labels_N)
  per_row = max(int(np.sum(labels_N == c)) for c in classes)
  rows = np.full((len(classes), per_row) + images_NHWC.shape[1:], 255, np.uint8)
  for r, c in enumerate(classes):
    members = images_NHWC[labels_N == c]
    rows[r, :len(members)] = members
  return rows


def prompt_grid(images_NHWC: np.ndarray, prompts_N: Sequence[str]) -> np.ndarray:
  """One grid row per run of images with the same prompt, the prompt written under its row (white cells fill)."""
  runs = [[0]]
  for i in range(1, len(prompts_N)):
    if prompts_N[i] == prompts_N[i - 1]:
      runs[-1].append(i)
    else:
      runs.append([i])
  cols = max(len(r) for r in runs)
  rows = np.full((len(runs), cols) + images_NHWC.shape[1:], 255, np.uint8)
  for r, members in enumerate(runs):
    rows[r, :len(members)] = images_NHWC[members]
  bands = []
  for r, members in enumerate(runs):
    cells = image_grid(rows[r:r + 1])
    label = Image.new('RGB' if cells.shape[-1] == 3 else 'L', (cells.shape[1], 14), 'white')
    ImageDraw.Draw(label).text((4, 1), str(prompts_N[members[0]]), fill='black')
    label_array = np.asarray(label).reshape(14, cells.shape[1], -1)
    bands += [cells, np.broadcast_to(label_array, (14, cells.shape[1], cells.shape[2]))]
  return np.concatenate(bands)


def text_document(texts: Sequence[str], scores: Mapping[str, Sequence[float]] | None = None) -> str:
  """Text samples as one document: each sample followed by a separator line.

  With `scores` (name -> one number per sample), each sample is followed by a line of its numbers first.
  """
  notes = ['(' + ', '.join(f'{k} {v[i]:.4f}' for k, v in scores.items()) + ')\n' if scores else ''
           for i in range(len(texts))]
  return ''.join(f'{t}\n{note}{TEXT_SEPARATOR}\n' for t, note in zip(texts, notes))


def samples_written(workdir: str, step: int) -> bool:
  """Whether samples/ holds the samples of `step` (step_<N>.npz or .txt)."""
  return any(os.path.exists(os.path.join(workdir, 'samples', f'step_{step}{ext}')) for ext in ('.npz', '.txt'))


@_disk_errors_are_user_errors('samples')
def write_samples(workdir: str, step: int, samples: Mapping[str, Any], overwrite: bool = True) -> list[str]:
  """Writes a method's decoded samples into samples/; returns the paths.

  {'images': uint8 [N, H, W, C]} becomes step_<N>.npz and .png; any other image array
  (uint8 [N, H, W, C] or [rows, cols, H, W, C]) goes into the same .npz and a grid
  step_<N>_<name>.png; 'labels' (int [N], the classes asked for) goes into the .npz and puts
  one class per row of the images' grid; 'prompts' (strings [N]) goes into the .npz and writes each prompt
  under its row of the grid; {'text': [N strings]} becomes step_<N>.txt, and 'records'
  (N JSON-able dicts) step_<N>.jsonl. With `overwrite=False`
  (--mode=sample) existing samples of the same step are kept and the new ones are named
  step_<N>_<k> with the first free k.
  """
  folder = os.path.join(workdir, 'samples')
  os.makedirs(folder, exist_ok=True)
  name, k = f'step_{step}', 0
  while not overwrite and any(os.path.exists(os.path.join(folder, name + ext)) for ext in ('.npz', '.png', '.txt')):
    k += 1
    name = f'step_{step}_{k}'
  base = os.path.join(folder, name)
  paths = []
  if 'images' in samples:
    arrays = {k: np.asarray(v) for k, v in samples.items() if k != 'text'}
    np.savez(base + '.tmp.npz', **arrays)
    os.replace(base + '.tmp.npz', base + '.npz')
    paths.append(base + '.npz')
    labels, prompts = arrays.pop('labels', None), arrays.pop('prompts', None)
    for key, images in arrays.items():
      png = base + ('.png' if key == 'images' else f'_{key}.png')
      if key == 'images' and prompts is not None:
        grid = prompt_grid(images, prompts)
      else:
        grid = image_grid(class_rows(images, labels) if key == 'images' and labels is not None else images)
      Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(png)
      paths.append(png)
  if 'text' in samples:
    with open(base + '.txt.tmp', 'w', encoding='utf-8') as f:
      f.write(text_document(samples['text']))
    os.replace(base + '.txt.tmp', base + '.txt')
    paths.append(base + '.txt')
  if 'records' in samples:
    with open(base + '.jsonl.tmp', 'w', encoding='utf-8') as f:
      f.write(''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in samples['records']))
    os.replace(base + '.jsonl.tmp', base + '.jsonl')
    paths.append(base + '.jsonl')
  return paths
