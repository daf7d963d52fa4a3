"""bench/device_check.py: its JSON files and summary table, its loss-curve test, and the TF-free path it runs.

The check itself runs on a GPU (or here with `bench/device_check.sh --cpu-smoke`, minutes on
two cores); these tests keep what it writes and the path it takes working in seconds.
"""

import json
import pathlib
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from bench import device_check
from tests.conftest import ROOT
from tests.conftest import process_env

ENV = {'figure': 'env', 'status': 'ok', 'wall_s': 2.0, 'date_utc': '2026-12-03 18:00', 'commit': 'abc1234',
       'nvidia_smi': 'NVIDIA H200, 580.159.04, 143771 MiB',
       'results': [{'backend': 'gpu', 'device_kind': 'NVIDIA H200', 'devices': 1, 'python': '3.12.3',
                    'versions': {'jax': '0.11.2', 'jaxlib': '0.11.2', 'flax': '0.12.8', 'torch': '2.11.0'}}]}
TRAIN = {'figure': 'train_ddpm_cifar_bfloat16', 'status': 'ok', 'wall_s': 61.0, 'results': [{
    'what': 'train', 'images_per_s': 11000.0, 'global_batch': 128, 'dtype': 'bfloat16', 'mfu_vs_vendor_peak': 0.4,
    'mfu_vs_matmul_peak': 0.5, 'peak_memory_bytes': 12 * 2**30, 'compile_s': 41.0}]}
OURS = {'figure': 'sample_ours', 'status': 'ok', 'wall_s': 30.0, 'results': [
    {'what': 'sample', 'num': 256, 'sample_method': 'ancestral', 'sample_steps': 1000, 'images_per_s': 30.0},
    {'what': 'sample', 'num': 256, 'sample_method': 'ddim', 'sample_steps': 50, 'images_per_s': 600.0},
    {'what': 'sample', 'sample_method': 'dpmpp_2m', 'skipped': 'not registered'}]}
TORCH = {'figure': 'sample_torch', 'status': 'ok', 'wall_s': 50.0, 'results': [
    {'what': 'sample', 'num': 256, 'sampler': 'ddim', 'sample_steps': 50, 'images_per_s': 300.0},
    {'what': 'sample', 'num': 256, 'sampler': 'ancestral', 'sample_steps': 1000, 'images_per_s': 20.0}]}


def test_curves_agree_by_their_windowed_means():
  a = {s: 1.0 / (1 + s) for s in range(1, 101)}
  close = device_check.compare_curves(a, {s: 1.03 * v for s, v in a.items()}, window=25, rtol=0.05)
  assert close['agree'] and len(close['windows']) == 4
  assert close['max_rel_diff'] == pytest.approx(0.03)
  assert close['windows'][0]['steps'] == [1, 25]
  assert close['windows'][0]['reference'] == pytest.approx(np.mean([a[s] for s in range(1, 26)]))
  # the last 25 steps 10% off: that window alone disagrees
  far = device_check.compare_curves(a, {s: v * (1.1 if s > 75 else 1.0) for s, v in a.items()}, window=25, rtol=0.05)
  assert not far['agree'] and far['max_rel_diff'] == pytest.approx(0.1)
  assert [w['rel_diff'] for w in far['windows'][:3]] == [0.0, 0.0, 0.0]
  assert not device_check.compare_curves(a, {}, window=25, rtol=0.05)['agree']  # no common step: no agreement


def test_metrics_losses_reads_the_training_loss_of_each_logged_step(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  rows = [{'step': 1, 'loss': 1.0, 'lr': 0.1}, {'step': 2, 'loss': 0.5}, {'step': 2, 'eval/loss': 0.7}]
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  assert device_check.metrics_losses(path) == {1: 1.0, 2: 0.5}


def test_summary_table_says_when_where_and_each_figure():
  loss = {'figure': 'loss_curves', 'status': 'ok', 'wall_s': 140.0, 'steps': 300, 'batch': 128,
          **device_check.compare_curves({1: 1.0, 2: 0.5}, {1: 1.01, 2: 0.5}, 2, 0.05),
          'first_loss': {'float32': 1.0, 'bfloat16': 1.01}, 'last_loss': {'float32': 0.5, 'bfloat16': 0.5}}
  skipped = {'figure': 'train_torch', 'status': 'skipped', 'reason': '3 s of the budget left, needs ~40'}
  lines = device_check.summary([ENV, TRAIN, OURS, TORCH, loss, skipped]).splitlines()
  assert lines[0].startswith('Measured 2026-12-03 18:00 UTC on NVIDIA H200, 580.159.04, 143771 MiB (JAX 0.11.2, '
                             'jaxlib 0.11.2, flax 0.12.8, torch 2.11.0), commit abc1234')
  assert lines[2:4] == ['| figure | status | result | wall s |', '| --- | --- | --- | --- |']
  rows = {line.split(' | ')[0][2:]: line for line in lines[4:]}
  assert rows['env'] == '| env | ok | NVIDIA H200 x1 (gpu), JAX 0.11.2, Python 3.12.3 | 2 |'
  assert rows['train_ddpm_cifar_bfloat16'] == (
      '| train_ddpm_cifar_bfloat16 | ok | 11,000.0 images/s at batch 128 bfloat16 · MFU 40.0% of the vendor peak · '
      '50.0% of the measured matmul peak · peak memory 12.0 GiB · compile 41 s | 61 |')
  assert rows['sample_ours'] == ('| sample_ours | ok | batch 256: ancestral-1000: 30.0 images/s · ddim-50: 600.0 '
                                 'images/s · dpmpp_2m: not registered | 30 |')
  assert rows['sample_torch'] == ('| sample_torch | ok | batch 256: ddim-50: 300.0 images/s (ours 2.00x) · '
                                  'ancestral-1000: 20.0 images/s (ours 1.50x) | 50 |')
  assert rows['loss_curves'] == (  # (1.01 + 0.5) / 2 against (1 + 0.5) / 2
      '| loss_curves | ok | 300 steps at batch 128: 2-step mean losses of bfloat16 within 0.67% of float32 '
      '(tolerance 5%); loss 1.000 -> 0.500 (float32), 1.010 -> 0.500 (bfloat16) | 140 |')
  assert rows['train_torch'] == '| train_torch | skipped | 3 s of the budget left, needs ~40 | - |'


def test_each_figure_is_one_json_file_skipped_when_out_of_time_and_packed(tmp_path):
  check = device_check.Check(tmp_path, budget_s=60.0, env={})
  check.figure('env', 1, lambda t: ENV)
  check.figure('too_long', 3600, lambda t: pytest.fail('a figure past the budget must not run'))
  check.figure('broken', 1, lambda t: 1 / 0)
  table = check.finish(pack=True)
  assert not (tmp_path / 'figures').exists()
  with tarfile.open(tmp_path / 'figures.tar.gz') as tar:
    saved = {m.name: json.load(tar.extractfile(m)) for m in tar if m.isfile()}
  assert set(saved) == {'figures/env.json', 'figures/too_long.json', 'figures/broken.json'}
  assert saved['figures/too_long.json']['status'] == 'skipped'
  assert saved['figures/broken.json'] == {'figure': 'broken', 'status': 'error', 'wall_s': pytest.approx(0, abs=1),
                                          'error': 'ZeroDivisionError: division by zero'}
  assert json.loads((tmp_path / 'figures.json').read_text())[0]['results'] == ENV['results']
  assert (tmp_path / 'summary.md').read_text() == table
  assert '| too_long | skipped | ' in table and '| broken | error | ZeroDivisionError' in table


# The GPU image has none of these: the checked path must not need them.
ABSENT = ('tensorflow', 'tensorflow_datasets', 'tensorflow_io_gcs_filesystem', 'tensorflow_metadata', 'keras',
          'tf_keras', 'clu', 'submitit')
# Python with site-packages seen through a folder of links to all of it but ABSENT (packages and
# their metadata), so that imports and probes (importlib.util.find_spec) find them missing, as there.
WITHOUT = '''
import runpy, site, sys
sys.path[:] = [p for p in sys.path if 'site-packages' not in p]
site.addsitedir(sys.argv[1])
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name='__main__')
'''


def site_without(absent: tuple[str, ...], view: pathlib.Path) -> pathlib.Path:
  """A folder of links to every entry of this Python's site-packages except the distributions `absent`."""
  view.mkdir()
  for folder in {p for p in map(pathlib.Path, sys.path) if p.name == 'site-packages' and p.is_dir()}:
    for entry in folder.iterdir():
      top = entry.name.split('-')[0].split('.')[0].lower()
      if top not in absent and not (view / entry.name).exists():
        (view / entry.name).symlink_to(entry)
  return view


def test_a_ddpm_cifar_run_from_an_npz_needs_no_tensorflow(tmp_path):
  npz = tmp_path / 'images.npz'
  np.savez(npz, images=np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), np.uint8),
           labels=np.arange(12) % 10)
  workdir = tmp_path / 'run'
  tiny = [f'--config.data.npz_path={npz}', '--config.data.npz_holdout=4', '--config.model.ch=4',
          '--config.model.ch_mult=(1,)', '--config.model.attn_resolutions=()', '--config.model.num_res_blocks=1',
          '--config.model.num_groups=2',
          '--config.diffusion.num_timesteps=10', '--config.training.batch_size=4',
          '--config.training.num_train_steps=2', '--config.training.log_every=1',
          '--config.training.checkpoint_every=2', '--config.training.sample_every=0']
  site = site_without(ABSENT, tmp_path / 'site')
  done = subprocess.run([sys.executable, '-S', '-c', WITHOUT, str(site), 'run.py', '--config=configs/ddpm_cifar.py',
                         f'--workdir={workdir}', *tiny], cwd=ROOT, env=process_env(1), capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert sorted(device_check.metrics_losses(workdir / 'metrics.jsonl')) == [1, 2]
  # and the view hid them while it showed the rest
  absent = subprocess.run([sys.executable, '-S', '-c', 'import site, sys; sys.path[:] = [p for p in sys.path if '
                           '"site-packages" not in p]; site.addsitedir(sys.argv[1]); import importlib.util as u; '
                           'print([n for n in sys.argv[2:] if u.find_spec(n)])', str(site), *ABSENT, 'jax', 'flax'],
                          capture_output=True, text=True)
  assert absent.stdout.strip() == "['jax', 'flax']"
