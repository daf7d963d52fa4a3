"""Test setup: 4 simulated CPU devices (set before JAX starts) and a tiny DDPM config."""

import contextlib
import os
import pathlib
from typing import Any, Iterator

# LLVM optimization level 0: the tests' tiny programs compile about a fifth faster and run
# fast enough either way (a suite with a cold cache spends most of its time compiling).
COMPILE_FLAGS = '--xla_backend_optimization_level=0'
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           f' --xla_force_host_platform_device_count=4 {COMPILE_FLAGS}').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # noqa: E402
import ml_collections  # noqa: E402
import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Tests build the same tiny programs many times (each run makes fresh closures): let XLA's
# persistent cache, keyed by the program itself, compile each one once.
JAX_CACHE = ROOT / '.pytest_cache' / 'jax_compilation_cache'
jax.config.update('jax_compilation_cache_dir', str(JAX_CACHE))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
# The runs that tests start as processes share that cache (and leave ~/.cache alone).
os.environ['JAX_COMPILATION_CACHE_DIR'] = str(JAX_CACHE)
os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
SHARED_DATA = ROOT.parent / 'shared' / 'data'


def process_env(devices: int, **extra: str) -> dict[str, str]:
  """The environment of a run that a test starts as a process: `devices` simulated CPU devices
  and the tests' compile settings and cache (set above in os.environ)."""
  return dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices} {COMPILE_FLAGS}', **extra)


def shrink_training(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A 4-step run at global batch 8 that logs, checkpoints every 2 steps and samples at the end."""
  config.optim.warmup_steps = 2
  config.training.batch_size = 8
  config.training.num_train_steps = 4
  config.training.log_every = 2
  config.training.checkpoint_every = 2
  config.training.sample_every = 4
  config.eval.batch_size = 8
  return config


def tiny_ddpm_config() -> ml_collections.ConfigDict:
  """ddpm_digits shrunk to compile and run in seconds: an 8-wide UNet, T=100, batch 8."""
  from configs import ddpm_digits
  config = shrink_training(ddpm_digits.get_config())
  config.model.ch = 8
  config.model.num_groups = 4
  config.diffusion.num_timesteps = 100
  config.sample.method = 'ddim'
  config.sample.steps = 5
  config.sample.num = 6
  config.eval.num_batches = 2
  return config


def one_level_ddpm_config() -> ml_collections.ConfigDict:
  """tiny_ddpm_config with a one-level UNet and no attention: the least to compile, for tests that
  compile its step many times (scanned steps, several device counts, processes)."""
  config = tiny_ddpm_config()
  config.model.ch_mult = (1,)
  config.model.attn_resolutions = ()
  return config


def train_digits_feature_net(cache_dir: str) -> str:
  """A tiny digits classifier feature network in `cache_dir`, trained with the one loop (seconds)."""
  from configs import classifier_digits
  from aigc_jax.evaluation import feature_net
  config = shrink_training(classifier_digits.get_config())
  config.model.update({'widths': (16, 32), 'features': 32, 'num_groups': 4, 'dropout': 0.0})
  config.training.update({'num_train_steps': 60, 'checkpoint_every': 60, 'log_every': 60, 'batch_size': 64,
                          'sample_every': 0, 'ema_rate': 0.5})
  config.optim.update({'lr': 3e-3, 'warmup_steps': 10, 'schedule': 'constant'})
  feature_net.train('digits', config, cache_dir)
  return cache_dir


def build(config: ml_collections.ConfigDict, data_info: dict[str, Any] | None = None) -> Any:
  """(method, train step, fresh state) of `config`, built as the loop builds them (with no parts)."""
  from aigc_jax.train import loop
  return loop.build(config, data_info or {}, {})


def restore_newest(config: ml_collections.ConfigDict, workdir: str) -> tuple[Any, Any]:
  """The method of `config`, and the newest readable checkpoint of `workdir` restored in this process."""
  from aigc_jax.train import checkpoint
  method, _, fresh = build(config)
  ckpts = checkpoint.Checkpoints(os.path.join(workdir, 'checkpoints'), 3)
  state = jax.device_get(ckpts.restore(fresh))
  ckpts.close()
  return method, state


# Where another process's prepare of the same TFDS data set can overtake this one's: before this
# one starts writing, or while it writes (then TFDS cannot rename this one's copy into place).
TFDS_PREPARE_STAGES = ('download_and_prepare', '_download_and_prepare')


@contextlib.contextmanager
def tfds_prepared_by_another_process_first(stage: str, name: str, data_dir: str,
                                           **prepare_kwargs: Any) -> Iterator[list]:
  """Inside: this process's first TFDS prepare is overtaken at `stage` (TFDS_PREPARE_STAGES) by a
  prepare of `name` into `data_dir` that finishes first, as another process's would. Yields a list
  that holds that other builder once it has run."""
  import tensorflow_datasets as tfds
  builder_cls = tfds.core.GeneratorBasedBuilder
  original = getattr(builder_cls, stage)
  other = []

  def raced(self, *args, **kwargs):
    if not other:
      other.append(tfds.builder(name, data_dir=data_dir))
      other[0].download_and_prepare(**prepare_kwargs)
    return original(self, *args, **kwargs)
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(builder_cls, stage, raced)
    yield other


@pytest.fixture
def tiny_config() -> ml_collections.ConfigDict:
  return tiny_ddpm_config()


def needs_shared_data(name: str) -> pathlib.Path:
  """The path of a file in ../shared/data, or a skip saying why it is absent."""
  path = SHARED_DATA / name
  if not path.exists():
    pytest.skip(f'{path} is absent: the real data sets live in ../shared/data beside the project '
                '(present on the project machines and in CI, not in a user clone)')
  return path


@pytest.fixture(autouse=True, scope='module')
def _fresh_jax_caches():
  """Drops each test module's compiled programs afterwards.

  XLA:CPU maps memory regions for every executable it keeps: a module leaves up to ~13k
  mappings, so the whole suite in one process reached Linux's limit of 65,530
  (vm.max_map_count) and the next compile died with a segfault.
  """
  yield
  jax.clear_caches()
