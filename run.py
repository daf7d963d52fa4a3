"""Train, sample or evaluate any aigc_jax method from one command.

  python run.py --config=configs/ddpm_digits.py --workdir=/tmp/digits [--mode=train|sample|eval]
                [--config.training.batch_size=64 ...]

Re-running the same train command on the same workdir resumes from its newest checkpoint.
"""

import os
import sys

from absl import app
from absl import logging
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a get_config() file in configs/.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder for checkpoints, metrics, samples and config.json.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'sample', 'eval'], 'What to do with the workdir.')
flags.mark_flags_as_required(['config', 'workdir'])


def _explain_bad_override(argv: list[str], error: Exception) -> str:
  """Why absl could not apply the --config overrides: a config file that fails to load, or a key it lacks."""
  from ml_collections.config_flags import config_flags as cf
  paths = [a.split('=', 1)[1] for a in argv if a.startswith('--config=')]
  path = paths[-1] if paths else None  # absl keeps the last
  try:
    config = cf._LoadConfigModule('config', path).get_config()  # pylint: disable=protected-access
  except Exception as e:  # pylint: disable=broad-except
    return f'cannot load --config={path!r}: {" ".join(str(e).split())}'
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
  return f'bad --config override: {type(error).__name__}: {" ".join(str(error).split())}'


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every bad flag or config key reported as one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f'error: {e}')
  except Exception as e:  # pylint: disable=broad-except
    sys.exit(f'error: {_explain_bad_override(argv, e)}')


def main(argv: list[str]) -> None:
  del argv
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # progress goes to stdout; library INFO chatter stays off
  from aigc_jax.errors import UserError
  from aigc_jax.train import loop
  try:
    config = _CONFIG.value
    config.keys()  # a config file that failed to load raises its error here
  except Exception as e:  # pylint: disable=broad-except
    detail = ' '.join(str(e).split())
    sys.exit(f'error: cannot load --config={flags.FLAGS["config"].config_filename!r}: {detail}')
  run = {'train': loop.train, 'sample': loop.sample, 'eval': loop.evaluate}[_MODE.value]
  try:
    run(config, _WORKDIR.value)
  except UserError as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
