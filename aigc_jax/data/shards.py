"""Which examples each process of a multi-process run reads: contiguous, equal shards.

Process p of P reads the n // P examples starting at p * (n // P); the last n % P examples
are read by none. That is how `tfds.split_for_jax_process(split, drop_remainder=True)` cuts
a TFDS split, and the other sources are cut the same way. Equal shards give every process
the same number of batches per pass, so the collective steps of evaluation line up across
processes. A single process reads everything.
"""


def bounds(n: int, process_index: int, process_count: int) -> tuple[int, int]:
  """[lo, hi) of the examples process `process_index` of `process_count` reads out of `n`."""
  size = n // process_count
  return process_index * size, (process_index + 1) * size


def describe(process_index: int, process_count: int) -> str:
  """' (process p's shard of P)' for messages about a shard; '' for a single process."""
  return f" (process {process_index}'s shard of {process_count})" if process_count > 1 else ''
