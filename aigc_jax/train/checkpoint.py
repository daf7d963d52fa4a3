"""Save and restore the whole train state, and the data's info, with Orbax's CheckpointManager.

Each step holds two items: the train state (in the item Orbax calls 'default', where
single-item checkpoints keep it, so those still restore) and `data_info`, the JSON the data
pipeline describes itself with (the LM's tokenizer and vocabulary), so `--mode=sample` can
rebuild the model without reading any data.

Saves are asynchronous (the device-to-host copy happens before `save` returns; the
writing goes on in the background) and atomic (Orbax writes a temporary folder and
renames it), so a killed run leaves at worst an unfinished temporary folder, which is
cleaned up on the next start. Restoring walks back from the newest step past any that
fail to read, with a warning, so one damaged checkpoint never ends a run.
"""

import logging
import os
from typing import Any

import orbax.checkpoint as ocp

from aigc_jax.errors import UserError

_STATE = 'default'
_DATA_INFO = 'data_info'


class Checkpoints:
  """The checkpoints of one run in `directory`, keeping the newest `keep`."""

  def __init__(self, directory: str, keep: int):
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.LatestN(keep),
        create=True, cleanup_tmp_directories=True, enable_async_checkpointing=True)
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(self.directory, item_names=(_STATE, _DATA_INFO), options=options)

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any, data_info: dict[str, Any]) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        **{_STATE: ocp.args.StandardSave(state), _DATA_INFO: ocp.args.JsonSave(data_info)}), force=True)

  def data_info(self) -> dict[str, Any] | None:
    """The data info of the newest step that has a readable one; {} if none has; None without checkpoints."""
    steps = self.steps()
    if not steps:
      return None
    for s in reversed(steps):
      if not os.path.isdir(os.path.join(self.directory, str(s), _DATA_INFO)):
        return {}  # a single-item checkpoint, written before steps carried data info
      try:
        return dict(self.manager.restore(s, args=ocp.args.Composite(**{_DATA_INFO: ocp.args.JsonRestore()}))[
            _DATA_INFO])
      except Exception as e:  # an unreadable or older checkpoint: try the one before it
        logging.warning('data_info of checkpoint %s is unreadable (%s); trying an earlier one', s,
                        type(e).__name__)
    return {}

  def restore(self, target: Any, step: int | None = None) -> Any | None:
    """The state at `step` (default: the newest readable step) shaped like `target`; None if there are none.

    Raises a UserError when checkpoints exist but none can be read into `target` (a config
    whose model or optimizer differs from the one that wrote them): starting over would
    silently discard the run.
    """
    steps = [step] if step is not None else list(reversed(self.steps()))
    errors = []
    for s in steps:
      try:
        return self.manager.restore(s, args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(target)}))[
            _STATE]
      except Exception as e:  # an unreadable checkpoint: try the one before it
        errors.append(f'step {s}: {type(e).__name__}: {" ".join(str(e).split())[:300]}')
        logging.warning('checkpoint %s is unreadable; trying an earlier one', errors[-1])
    if errors:
      raise UserError(f'no checkpoint in {self.directory} could be restored ({errors[0]}): use the config '
                      'that wrote them (same model and optimizer), or a new workdir')
    return None

  def close(self) -> None:
    """Waits for pending writes, then releases the manager."""
    self.manager.wait_until_finished()
    self.manager.close()
