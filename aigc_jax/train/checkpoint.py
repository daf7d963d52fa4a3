"""Save and restore the whole train state, and the data's info, with Orbax's CheckpointManager.

Each step holds three items: the train state (in the item Orbax calls 'default', where
single-item checkpoints keep it, so those still restore), `data_info`, the JSON the data
pipeline describes itself with (the LM's tokenizer and vocabulary), so `--mode=sample` can
rebuild the model without reading any data, and `run`, the JSON of the train state's layout
(`state.LAYOUT`) and of the parts the run took from other runs (train/parts.py), so that a
resumed or sampled run rebuilds exactly those. Checkpoints written before `run` existed have
layout 1 and no parts; a checkpoint of another layout is refused with one line, never read
into the wrong fields or passed over for a fresh start.

Saves are asynchronous (the device-to-host copy happens before `save` returns; the
writing goes on in the background) and atomic (Orbax writes a temporary folder and
renames it), so a killed run leaves at worst an unfinished temporary folder, which is
cleaned up on the next start. Restoring walks back from the newest step past any that
fail to read, with a warning, so one damaged checkpoint never ends a run; training then
moves the damaged steps aside (`set_aside_after`) to write those steps anew. A write that
fails (disk full, folder gone or read-only) is one clear error once it surfaces (at the
next save, `wait` or `close`), and leaves the earlier checkpoints as they were.
"""

import contextlib
import logging
import os
import re
import shutil
import sys
import time
import warnings
from typing import Any, Iterator

import orbax.checkpoint as ocp

from aigc_jax.errors import UserError
from aigc_jax.train import state as state_lib

_STATE = 'default'
_DATA_INFO = 'data_info'
_RUN = 'run'
_SETTLE_S = 2.0  # after a failed write: time for the other writes under way to fail before the error is told


class Checkpoints:
  """The checkpoints of one run in `directory`, keeping the newest `keep`.

  `read_only` opens another run's checkpoints (a part's, train/parts.py) without touching
  them: nothing is created, cleaned up or deleted there.
  """

  def __init__(self, directory: str, keep: int, read_only: bool = False):
    absl_logger = logging.getLogger('absl')
    level = absl_logger.level
    try:
      if read_only:  # Orbax warns that a read-only manager saves nothing and that the folder is read-only: we know
        absl_logger.setLevel(logging.ERROR)
        options = ocp.CheckpointManagerOptions(read_only=True, create=False, cleanup_tmp_directories=False)
      else:
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(keep),
            create=True, cleanup_tmp_directories=True, enable_async_checkpointing=True)
      self.directory = os.path.abspath(directory)
      _OrbaxTracebacks.install()
      self.manager = ocp.CheckpointManager(self.directory, item_names=(_STATE, _DATA_INFO, _RUN), options=options)
    finally:
      absl_logger.setLevel(level)
    self._writing: int | None = None  # the step whose asynchronous write may still be under way
    # Orbax removes the unfinished folders of killed runs in a thread of its own; a program that stops
    # on bad input right after this would end under it and print its traceback. Let it finish first.
    cleanup = getattr(self.manager, '_cleanup_tmp_directory_future', None)
    if cleanup is not None:
      cleanup.result()

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any, data_info: dict[str, Any], parts: dict[str, Any] | None = None) -> None:
    """Starts writing `step` (the previous write is waited for first); returns once the state is on the host.

    `parts` are the records of the parts the state holds (train/parts.py), saved with the layout.
    """
    self.wait()
    self._writing = step
    run = {'layout': state_lib.LAYOUT, 'parts': parts or {}}
    with self._failed_write_is_an_error():
      self.manager.save(step, args=ocp.args.Composite(
          **{_STATE: ocp.args.StandardSave(state), _DATA_INFO: ocp.args.JsonSave(data_info),
             _RUN: ocp.args.JsonSave(run)}), force=True)

  def wait(self) -> None:
    """Waits until the last save is on disk; a UserError if it could not be written."""
    with self._failed_write_is_an_error():
      self.manager.wait_until_finished()
    self._writing = None

  @contextlib.contextmanager
  def _failed_write_is_an_error(self) -> Iterator[None]:
    """Turns a failed write of the step being written into one clear UserError naming the intact ones."""
    try:
      yield
    except Exception as e:  # Orbax and TensorStore report I/O failures as many exception types
      failed, self._writing = self._writing, None
      _quiet_abandoned_io()
      try:
        self.manager.close()  # lets Orbax's other writers fail now rather than after the message
      except Exception:  # they fail for the same reason
        pass
      time.sleep(_SETTLE_S)  # and TensorStore's writes still in flight, which print their own tracebacks
      try:
        self.manager.reload()
        good = self.steps()
      except Exception:  # the folder itself is gone or unreadable
        good = []
      kept = f'the checkpoints of steps {good} are intact' if good else 'no earlier checkpoint exists'
      raise UserError(f'cannot write the checkpoint of step {failed} to {self.directory}: {_io_reason(e)}; '
                      f'{kept}: free disk space or make the folder writable, then rerun the same command to '
                      'resume') from None

  def _json(self, item: str, step: int) -> dict[str, Any] | None:
    """The JSON item `item` of `step`; None where the step was written before it existed."""
    if not os.path.isdir(os.path.join(self.directory, str(step), item)):
      return None
    return dict(self.manager.restore(step, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()}))[item])

  def data_info(self) -> dict[str, Any] | None:
    """The data info of the newest step that has a readable one; {} if none has; None without checkpoints."""
    steps = self.steps()
    if not steps:
      return None
    for s in reversed(steps):
      try:
        info = self._json(_DATA_INFO, s)
        return {} if info is None else info  # None: a single-item checkpoint, written before steps carried data info
      except Exception as e:  # an unreadable or older checkpoint: try the one before it
        logging.warning('data_info of checkpoint %s is unreadable (%s); trying an earlier one', s,
                        type(e).__name__)
    return {}

  def run_info(self, step: int | None = None) -> dict[str, Any]:
    """The layout and part records of `step` (default: the newest step whose record reads); {} without checkpoints.

    Steps written before the record existed read as layout 1 with no parts.
    """
    for s in ([step] if step is not None else list(reversed(self.steps()))):
      try:
        info = self._json(_RUN, s)
        return {'layout': 1, 'parts': {}} if info is None else info
      except Exception as e:  # an unreadable checkpoint: try the one before it
        logging.warning('the run record of checkpoint %s is unreadable (%s); trying an earlier one', s,
                        type(e).__name__)
    return {}

  def _check_layout(self, step: int) -> None:
    layout = self.run_info(step).get('layout', state_lib.LAYOUT)
    if layout != state_lib.LAYOUT:
      raise UserError(f'the checkpoint of step {step} in {self.directory} holds a train state of layout {layout}, '
                      f'and this aigc_jax reads layout {state_lib.LAYOUT}: use the aigc_jax version that wrote it, '
                      'or a new workdir')

  def restore(self, target: Any, step: int | None = None) -> Any | None:
    """The state at `step` (default: the newest readable step) shaped like `target`; None if there are none.

    Raises a UserError when checkpoints exist but none can be read into `target` (a config
    whose model or optimizer differs from the one that wrote them): starting over would
    silently discard the run.
    """
    steps = [step] if step is not None else list(reversed(self.steps()))
    errors = []
    _quiet_abandoned_io()  # before the first read: the echoes of a failing one start while it fails
    for s in steps:
      self._check_layout(s)
      try:
        return self.manager.restore(s, args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(target)}))[
            _STATE]
      except Exception as e:  # an unreadable checkpoint: try the one before it
        errors.append(f'step {s}: {type(e).__name__}: {" ".join(str(e).split())[:300]}')
        logging.warning('the checkpoint of step %s in %s is unreadable (%s); falling back to the one before it',
                        s, self.directory, errors[-1])
    if errors:
      raise UserError(f'no checkpoint in {self.directory} could be restored ({errors[0]}): use the config '
                      'that wrote them (same model and optimizer), or a new workdir')
    return None

  def set_aside_after(self, step: int) -> None:
    """Moves the steps after `step` (unreadable ones that restoring passed over) to checkpoints.unreadable/.

    Training goes on from `step` and will write those steps again; they are moved rather
    than deleted, so nothing a person may want to inspect is lost.
    """
    newer = [s for s in self.steps() if s > step]
    if not newer:
      return
    aside = self.directory.rstrip('/') + '.unreadable'
    os.makedirs(aside, exist_ok=True)
    for s in newer:
      target = os.path.join(aside, str(s))
      shutil.rmtree(target, ignore_errors=True)
      shutil.move(os.path.join(self.directory, str(s)), target)
      logging.warning('moved the unreadable checkpoint of step %s to %s; training resumes from step %s', s,
                      target, step)
    self.reload()

  def reload(self) -> None:
    """Reads the folder's steps anew: another process has moved some (`set_aside_after`)."""
    self.manager.reload()

  def close(self) -> None:
    """Waits for pending writes (a UserError if one failed), then releases the manager."""
    try:
      self.wait()
    finally:
      self.manager.close()


class _OrbaxTracebacks(logging.Filter):
  """Keeps Orbax's error logs to their one line, without the traceback each carries.

  When a write fails (disk full, folder gone or read-only) its background threads log the
  failure several times with tracebacks (~300 lines) before the save reports it, and
  `Checkpoints` then says it in one UserError naming the reason and the intact steps.
  """

  @classmethod
  def install(cls) -> None:
    absl_logger = logging.getLogger('absl')  # where absl.logging, which Orbax logs with, writes
    if not any(isinstance(f, cls) for f in absl_logger.filters):
      absl_logger.addFilter(cls())

  def filter(self, record: logging.LogRecord) -> bool:
    if f'{os.sep}orbax{os.sep}' in record.pathname:
      record.exc_info, record.exc_text = None, None
    return True


def _io_reason(error: Exception) -> str:
  """The operating system's reason in an Orbax/TensorStore write error, else the error's first words."""
  if isinstance(error, OSError) and error.strerror:
    return error.strerror
  code = re.search(r"os_error_code='?(\d+)", str(error))
  if code:
    return os.strerror(int(code.group(1)))
  return f'{type(error).__name__}: {" ".join(str(error).split())[:200]}'


def _quiet_abandoned_io() -> None:
  """From now on, drops the echoes of the reads or writes that a failing restore or save abandons.

  When one array read (or write) fails, Orbax abandons the others: their coroutines are
  collected unawaited ('Exception ignored in <coroutine ...>', or a warning that one was never
  awaited), asyncio logs 'Task exception was never retrieved' for each, and TensorStore's
  reads still under way call back into the closed event loop from its own threads, each
  an unraisable 'Event loop is closed'. They go on for seconds after the restore or save has
  returned: hundreds of tracebacks that buried the one line saying what happened and what to
  do, which the caller reports. Only these echoes are dropped, and only asyncio is quieted
  (Orbax alone uses it here).
  """
  logging.getLogger('asyncio').setLevel(logging.CRITICAL)
  warnings.filterwarnings('ignore', message='coroutine .* was never awaited', category=RuntimeWarning)
  if getattr(sys.unraisablehook, 'quiets_abandoned_io', False):
    return
  previous = sys.unraisablehook

  def hook(unraisable: Any) -> None:
    closed_loop = isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == 'Event loop is closed'
    if not (closed_loop or type(unraisable.object).__name__ == 'coroutine'):
      previous(unraisable)
  hook.quiets_abandoned_io = True
  sys.unraisablehook = hook
