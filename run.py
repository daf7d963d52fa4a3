"""Train, sample or evaluate any aigc_jax method from one command.

  python run.py --config=configs/ddpm_digits.py --workdir=/tmp/digits [--mode=train|sample|eval]
                [--config.training.batch_size=64 ...]

Re-running the same train command on the same workdir resumes from its newest checkpoint.
One run over several processes (hosts) starts the same command in each, with
--coordinator_address=HOST:PORT --num_processes=N --process_id=I, or with none of them under
SLURM, Open MPI or on a TPU pod, where JAX finds them itself.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from aigc_jax import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a get_config() file in configs/.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder for checkpoints, metrics, samples and config.json.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'sample', 'eval'], 'What to do with the workdir.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'Multi-process runs: HOST:PORT of process 0, the same in every process.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Multi-process runs: how many processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Multi-process runs: this process, 0..num_processes-1.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv: list[str]) -> None:
  del argv
  config = cli.config(_CONFIG)
  from aigc_jax.train import loop
  from aigc_jax.train import parallel
  started = cli.run(parallel.initialize, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if started:
    print(f'multi-process run: {started}', flush=True)
  cli.run({'train': loop.train, 'sample': loop.sample, 'eval': loop.evaluate}[_MODE.value], config, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
