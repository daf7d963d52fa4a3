"""Where aigc_jax keeps what it computes once and reuses across runs.

Feature networks, real-image reference statistics, the FID Inception weights and compiled
XLA programs live under one root: $AIGC_JAX_CACHE, else ~/.cache/aigc_jax.
"""

import contextlib
import os
import uuid
from typing import Iterator

import jax

ENV = 'AIGC_JAX_CACHE'
DEFAULT_DIR = '~/.cache/aigc_jax'


def root(cache_dir: str | None = None) -> str:
  """`cache_dir` if given, else $AIGC_JAX_CACHE, else ~/.cache/aigc_jax."""
  return os.path.expanduser(cache_dir or os.environ.get(ENV) or DEFAULT_DIR)


@contextlib.contextmanager
def replacing(path: str) -> Iterator[str]:
  """A temporary path beside `path` to write the new file to; on success it replaces `path` at once.

  The temporary name is this writer's own, so runs that fill the same cache at the same time
  (the processes of one run, the trials of a sweep) never write into each other's file: each
  replaces `path` with a whole file of its own. On an error the temporary file is removed and
  `path` is left as it was.
  """
  tmp = f'{path}.{uuid.uuid4().hex[:12]}.tmp'
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


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
