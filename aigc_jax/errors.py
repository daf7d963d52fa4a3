"""The one exception type for bad input a user can fix."""


class UserError(Exception):
  """Bad input (config, data, workdir): `run.py` prints the message as one line and exits 1."""
