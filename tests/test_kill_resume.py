"""kill -9 during a checkpoint write and during sampling: each re-run resumes, and the end equals an uninterrupted run.

The short version of `tests/kill_resume.py` (run it with --kills=10 or more for the long one).
"""

from tests import kill_resume
from tests.conftest import JAX_CACHE


def test_killed_runs_resume_from_complete_checkpoints_and_end_bit_equal(tmp_path):
  said = []
  ok = kill_resume.run(kills=2, seed=0, workdir=str(tmp_path / 'kills'), say=said.append,
                       moments=('checkpoint write', 'sampling'), cache_dir=str(JAX_CACHE))
  assert ok, '\n'.join(said)
  assert 'final train state bit-equal to the uninterrupted run: True' in said[-1]
