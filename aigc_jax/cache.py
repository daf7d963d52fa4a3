"""Where aigc_jax keeps what it computes once and reuses across runs.

Feature networks, real-image reference statistics, the FID Inception weights and compiled
XLA programs live under one root: $AIGC_JAX_CACHE, else ~/.cache/aigc_jax.
"""

import os

import jax

ENV = 'AIGC_JAX_CACHE'
DEFAULT_DIR = '~/.cache/aigc_jax'


def root(cache_dir: str | None = None) -> str:
  """`cache_dir` if given, else $AIGC_JAX_CACHE, else ~/.cache/aigc_jax."""
  return os.path.expanduser(cache_dir or os.environ.get(ENV) or DEFAULT_DIR)


def enable_compilation_cache() -> None:
  """Keeps compiled programs in <cache>/xla, so a rerun or resume of the same config skips compiling.

  JAX's persistent compilation cache is keyed by the program, the devices and the versions,
  so a stale entry is never used. A cache directory already set (JAX_COMPILATION_CACHE_DIR,
  or the tests' own) is left alone; programs that compile in under a second are not kept.
  """
  if jax.config.jax_compilation_cache_dir:
    return
  jax.config.update('jax_compilation_cache_dir', os.path.join(root(), 'xla'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
