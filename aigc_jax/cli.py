"""What every command-line entry point shares: absl flags whose every mistake is one `error:` line.

run.py, `python -m aigc_jax.bench` and the feature-network trainer parse `--config=FILE` and
`--config.a.b=value` overrides the same way; a bad flag, an unknown key, a wrong type or a
config file that does not load ends the program with one line saying what to change.
"""

import os
import sys
from typing import Any, Callable

import ml_collections
from absl import flags
from absl import logging

from aigc_jax import cache


def _explain_bad_override(argv: list[str], error: Exception) -> str:
  """Why absl could not apply the --config overrides: a config file that fails to load, or a key it lacks."""
  from ml_collections.config_flags import config_flags as cf
  paths = [a.split('=', 1)[1] if a.startswith('--config=') else b
           for a, b in zip(argv, argv[1:] + ['']) if a.startswith('--config=') or a == '--config']
  path = paths[-1] if paths else None  # absl keeps the last; `--config FILE` is the same as `--config=FILE`
  try:
    config = cf._LoadConfigModule('config', path).get_config()  # pylint: disable=protected-access
  except Exception as e:  # pylint: disable=broad-except
    return f'cannot load --config={path!r}: {" ".join(str(e).split())}'
  return unknown_key(config, argv) or f'bad --config override: {type(error).__name__}: {" ".join(str(error).split())}'


def unknown_key(config: ml_collections.ConfigDict, argv: list[str]) -> str | None:
  """A one-line error for the first --config.KEY override that names no key of `config`, else None."""
  for arg in argv:
    if not arg.startswith('--config.'):
      continue
    key = arg[len('--config.'):].split('=', 1)[0]
    node = config
    for i, part in enumerate(key.split('.')):
      if not hasattr(node, 'keys') or part not in node.keys():
        parent = '.'.join(key.split('.')[:i]) or '<top level>'
        known = ', '.join(sorted(node.keys())) if hasattr(node, 'keys') else '(not a section)'
        return f'unknown config key --config.{key}: {parent} has {known}'
      node = node[part]
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing (pass as `app.run(..., flags_parser=parse_flags)`), every failure one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f'error: {e}')
  except Exception as e:  # pylint: disable=broad-except
    sys.exit(f'error: {_explain_bad_override(argv, e)}')


def config(holder: flags.FlagHolder) -> ml_collections.ConfigDict:
  """The loaded --config, or exit with why it does not load; also quiets library INFO logs and caches compiles."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # progress goes to stdout; library INFO chatter stays off
  try:
    cfg = holder.value
    cfg.keys()  # a config file that failed to load raises its error here
  except Exception as e:  # pylint: disable=broad-except
    detail = ' '.join(str(e).split())
    sys.exit(f'error: cannot load --config={flags.FLAGS[holder.name].config_filename!r}: {detail}')
  cache.enable_compilation_cache()
  return cfg


def run(fn: Callable[..., Any], *args: Any) -> Any:
  """fn(*args), with a UserError turned into `error: <message>` and exit status 1."""
  from aigc_jax.errors import UserError
  try:
    return fn(*args)
  except UserError as e:
    sys.exit(f'error: {e}')
