"""Preemption notices (SIGTERM, SIGINT): noted by a signal handler, acted on by the loop at a step boundary.

A handler may run between any two Python bytecodes, in the middle of a step or a checkpoint
write, so it only records the signal; the loop checks `Notice.received` after each device
call (a multi-process run: at log steps, where the processes agree whether any got one),
checkpoints that step and returns. A second signal is not caught (the handlers are
restored after the first), so pressing Ctrl-C twice still stops at once.
"""

import signal
import threading
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Notice:
  """Between `install()` and `uninstall()`, SIGTERM and SIGINT set `received` to the signal's name."""

  def __init__(self):
    self.received: str | None = None
    self._previous: dict[int, Any] = {}

  def _handle(self, signum: int, frame: FrameType | None) -> None:
    del frame
    self.received = signal.Signals(signum).name
    self.uninstall()

  def install(self) -> None:
    """Catches the signals from now on (only possible in the main thread, where Python delivers them)."""
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}

  def uninstall(self) -> None:
    """Gives the signals back to the handlers they had before `install`."""
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}
