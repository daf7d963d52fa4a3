"""The prepared accelerator check behind bench/device_check.sh: every figure one JSON file, then a summary table.

  python bench/device_check.py prepare            # here, with ../shared/data and a package registry
  python bench/device_check.py run [--cpu-smoke] [--out=DIR] [--budget_s=480]

`prepare` writes what the GPU machine lacks into .device/ (ignored by git; name it in the
device tool's `carry`): real CIFAR-10 training images as an .npz (a class-balanced, shuffled
subset of ../shared/data's JPEGs, small enough to travel), Tiny Shakespeare and a BPE of it, and the wheels of
the pure-Python packages its image does not have (ml-collections; diffusers for the torch lines).
`run` times and checks, each figure in its own process under a time limit, in order of worth,
skipping (with a JSON saying so) what the remaining budget cannot hold:
  - env: device, JAX and library versions;
  - tests: the bfloat16 tests (tests/test_precision.py) and the one-device equality tests of
    tests/test_step.py and tests/test_parallel.py (the 4-device ones need 4 devices);
  - train_*: `python -m aigc_jax.bench` for ddpm_cifar at batch 128 in bfloat16 and float32,
    gpt_shakespeare, dcgan_cifar and configs/gpt2.py (124M; its BPE trained here on Tiny
    Shakespeare, ~21.5k of GPT-2's 50,257 tokens: the head is smaller than GPT-2's);
  - sample_ours: `--what=sample` at batch 256 for ancestral-1000, DDIM-50 and DPM-Solver++(2M)-20
    where registered; sample_torch_* and train_torch: diffusers' pipelines and UNet2DModel step;
  - loss_curves: 300 steps of `run.py` ddpm_cifar in bfloat16 and in float32 from one seed on the
    real images; their 25-step mean losses must agree within LOSS_RTOL.
Every process reads images from the .npz and text from a file: no TensorFlow, TFDS or clu.
`--cpu-smoke` shrinks every figure to seconds (tiny widths, few steps) so the whole path runs here.
"""

import argparse
import dataclasses
import datetime
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import time
from typing import Any, Callable, Sequence

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEVICE_DIR = ROOT / '.device'
NPZ = DEVICE_DIR / 'cifar10_train.npz'
TEXT = DEVICE_DIR / 'tinyshakespeare.txt'
# GPT-2's vocabulary size asked of a BPE trained on Tiny Shakespeare (it stops at ~21.5k merges' worth)
BPE = DEVICE_DIR / 'bpe'
BPE_VOCAB = 50257
WHEELS = DEVICE_DIR / 'whl'
SHARED_DATA = ROOT.parent / 'shared' / 'data'
# 1,000 training images per class: 30.7 MB as uint8, within the device tool's 64 MiB per call
NPZ_PER_CLASS = 1000
NPZ_HOLDOUT = 100
# Pure-Python wheels the GPU image lacks (device README / KINDS.md), pinned to what runs here.
WHEEL_PINS = ('ml-collections==1.1.0', 'diffusers==0.42.1', 'importlib-metadata==8.7.0')
LOSS_STEPS = 300
LOSS_WINDOW = 25
# bfloat16 vs float32 from one seed on the same batches: each 25-step mean loss within 5%
LOSS_RTOL = 0.05
DEFAULT_BUDGET_S = 480
SAMPLERS = 'ancestral,ddim:50,dpmpp_2m:20'


def _say(msg: str) -> None:
  print(f'[device_check {time.strftime("%H:%M:%S")}] {msg}', file=sys.stderr, flush=True)


def make_npz(tar_path: pathlib.Path, out: pathlib.Path, per_class: int, seed: int = 0) -> dict[str, Any]:
  """`per_class` training JPEGs of each CIFAR-10 class from the tarball, decoded, shuffled, as images/labels."""
  import numpy as np
  from PIL import Image
  by_class: dict[str, list[bytes]] = {}
  with tarfile.open(tar_path) as tar:
    for member in tar:
      parts = member.name.split('/')
      if member.isfile() and len(parts) == 3 and parts[0] == 'train':
        files = by_class.setdefault(parts[1], [])
        if len(files) < per_class:
          files.append(tar.extractfile(member).read())
  classes = sorted(by_class)
  images, labels = [], []
  for label, name in enumerate(classes):
    for blob in by_class[name]:
      images.append(np.asarray(Image.open(io.BytesIO(blob)).convert('RGB'), np.uint8))
      labels.append(label)
  order = np.random.default_rng(seed).permutation(len(images))
  x, y = np.stack(images)[order], np.asarray(labels, np.int32)[order]
  out.parent.mkdir(parents=True, exist_ok=True)
  np.savez(out, images=x, labels=y)
  return {'path': str(out), 'images': list(x.shape), 'classes': classes, 'bytes': out.stat().st_size}


def train_bpe(text: pathlib.Path, out: pathlib.Path) -> None:
  """A byte-level BPE of `text` for configs/gpt2.py (GPT-2's own tokenizer files cannot be fetched here)."""
  subprocess.run([sys.executable, '-m', 'aigc_jax.data.bpe', f'--text={text}', f'--vocab_size={BPE_VOCAB}',
                  f'--out={out}'], check=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def prepare() -> None:
  """Writes .device/: the CIFAR-10 .npz, Tiny Shakespeare and the missing wheels."""
  if not SHARED_DATA.is_dir():
    sys.exit(f'error: {SHARED_DATA} is absent: prepare needs ../shared/data (CIFAR-10 JPEGs, Tiny Shakespeare)')
  _say(f'writing {NPZ} from {SHARED_DATA / "cifar10_jpeg.tar.gz"}')
  print(json.dumps(make_npz(SHARED_DATA / 'cifar10_jpeg.tar.gz', NPZ, NPZ_PER_CLASS)))
  shutil.copyfile(SHARED_DATA / 'tinyshakespeare.txt', TEXT)
  train_bpe(TEXT, BPE)
  shutil.rmtree(WHEELS, ignore_errors=True)
  subprocess.run([sys.executable, '-m', 'pip', 'download', '-q', '--no-deps', '--only-binary=:all:',
                  '--python-version', '3.12', '--implementation', 'py', '-d', str(WHEELS), *WHEEL_PINS], check=True)
  size = sum(f.stat().st_size for f in DEVICE_DIR.rglob('*') if f.is_file())
  print(json.dumps({'device_dir': str(DEVICE_DIR), 'bytes': size,
                    'wheels': sorted(f.name for f in WHEELS.iterdir())}))
  _say(f'{size / 2**20:.1f} MiB in {DEVICE_DIR}: run there with carry=[".device"] and the command '
       'bench/device_check.sh')



@dataclasses.dataclass(frozen=True)
class Plan:
  """The sizes of every figure: the real ones, or seconds-long ones for --cpu-smoke."""
  smoke: bool
  npz: pathlib.Path
  text: pathlib.Path
  bpe: pathlib.Path
  ddpm: tuple[str, ...]          # --config overrides of configs/ddpm_cifar.py beyond the data
  lm: tuple[str, ...]
  gan: tuple[str, ...]
  batch: int
  bench_steps: tuple[str, ...]
  sample_num: int
  samplers: str
  loss_steps: int
  loss_window: int
  torch_model: str
  torch_sample_steps: int
  torch_batch: int


def plan(smoke: bool, scratch: pathlib.Path) -> Plan:
  if not smoke:
    for path in (NPZ, TEXT, BPE / 'tokenizer.json'):
      if not path.is_file():
        sys.exit(f'error: {path} is absent: run `bench/device_check.sh --prepare` where ../shared/data is, '
                 'and carry .device along')
    return Plan(False, NPZ, TEXT, BPE, (), (), (), 128, ('--steps=10', '--warmup=2'), 256, SAMPLERS, LOSS_STEPS,
                LOSS_WINDOW, 'ddpm_cifar', 50, 256)
  npz, text, bpe_dir = NPZ, TEXT, BPE
  if not npz.is_file():  # a few real images per class are enough to run every step
    if not SHARED_DATA.is_dir():
      sys.exit(f'error: --cpu-smoke needs {NPZ} or {SHARED_DATA} for its images')
    npz, text = scratch / 'cifar10_smoke.npz', SHARED_DATA / 'tinyshakespeare.txt'
    make_npz(SHARED_DATA / 'cifar10_jpeg.tar.gz', npz, 20)
  if not (bpe_dir / 'tokenizer.json').is_file():
    bpe_dir = scratch / 'bpe'
    train_bpe(text, bpe_dir)
  tiny_unet = ('--config.model.ch=8', '--config.model.ch_mult=(1,2)', '--config.model.num_res_blocks=1',
               '--config.model.num_groups=4', '--config.diffusion.num_timesteps=20')
  tiny_lm = ('--config.model.num_layers=1', '--config.model.num_heads=2', '--config.model.width=16',
             '--config.data.block_size=16', '--config.training.batch_size=4')
  tiny_gan = ('--config.model.width=8', '--config.model.latents=8', '--config.training.batch_size=8')
  return Plan(True, npz, text, bpe_dir, tiny_unet, tiny_lm, tiny_gan, 8, ('--steps=1', '--warmup=0'), 2,
              'ancestral,ddim:10,dpmpp_2m:5', 6, 2, 'ddpm_digits', 5, 2)


def _images(p: Plan) -> list[str]:
  return [f'--config.data.npz_path={p.npz}', f'--config.data.npz_holdout={20 if p.smoke else NPZ_HOLDOUT}']


@dataclasses.dataclass
class Run:
  rc: int
  stdout: str
  stderr: str
  wall_s: float

  def json_lines(self) -> list[dict[str, Any]]:
    out = []
    for line in self.stdout.splitlines():
      if line.startswith('{'):
        try:
          out.append(json.loads(line))
        except json.JSONDecodeError:
          pass
    return out

  def tail(self, n: int = 1500) -> str:
    return (self.stdout + self.stderr)[-n:]


class Check:
  """Runs the figures in order within the budget; writes each one's JSON and the summary."""

  def __init__(self, out: pathlib.Path, budget_s: float, env: dict[str, str], cap_s: float = 300.0):
    self.out, self.budget_s, self.env = out, budget_s, env
    self.cap_s = cap_s  # the most one process may take, so that one hung figure leaves time for the rest
    self.start = time.monotonic()
    self.figures: list[dict[str, Any]] = []
    (out / 'figures').mkdir(parents=True, exist_ok=True)
    self.log = open(out / 'log.txt', 'w', encoding='utf-8')

  def left_s(self) -> float:
    return self.budget_s - (time.monotonic() - self.start)

  def proc(self, argv: Sequence[str], timeout_s: float, env: dict[str, str] | None = None) -> Run:
    """One process under a time limit, its output logged."""
    start = time.monotonic()
    self.log.write(f'$ {" ".join(argv)}\n')
    self.log.flush()
    try:
      done = subprocess.run(list(argv), cwd=ROOT, env={**self.env, **(env or {})}, capture_output=True, text=True,
                            timeout=max(timeout_s, 1.0))
      run = Run(done.returncode, done.stdout, done.stderr, time.monotonic() - start)
    except subprocess.TimeoutExpired as e:
      text = lambda b: b.decode(errors='replace') if isinstance(b, bytes) else (b or '')
      run = Run(124, text(e.stdout), text(e.stderr) + f'\n[timed out after {timeout_s:.0f} s]',
                time.monotonic() - start)
    self.log.write(run.stdout + run.stderr + f'[rc {run.rc}, {run.wall_s:.1f} s]\n\n')
    self.log.flush()
    return run

  def figure(self, name: str, estimate_s: float, fn: Callable[[float], dict[str, Any]]) -> None:
    """fn(timeout_s) -> the figure's record, unless the time left cannot hold its estimate."""
    left = self.left_s()
    if left < estimate_s:
      record = {'figure': name, 'status': 'skipped', 'reason': f'{left:.0f} s of the budget left, needs ~{estimate_s:.0f}'}
    else:
      _say(f'{name} (~{estimate_s:.0f} s, {left:.0f} s left)')
      start = time.monotonic()
      try:
        record = {'figure': name, **fn(left)}
      except Exception as e:  # pylint: disable=broad-except  # one broken figure must not cost the others
        record = {'figure': name, 'status': 'error', 'error': f'{type(e).__name__}: {e}'}
      record.setdefault('wall_s', time.monotonic() - start)
    self.figures.append(record)
    write_json(self.out / 'figures' / f'{name}.json', record)
    _say(f'{name}: {record.get("status")} {summary_cells(record)[1]}')

  def finish(self, pack: bool) -> str:
    self.log.close()
    write_json(self.out / 'figures.json', self.figures)
    table = summary(self.figures)
    (self.out / 'summary.md').write_text(table, encoding='utf-8')
    if pack:  # the device tool brings back 8 files at most: one archive of the per-figure files
      with tarfile.open(self.out / 'figures.tar.gz', 'w:gz') as tar:
        tar.add(self.out / 'figures', arcname='figures')
      shutil.rmtree(self.out / 'figures')
    return table


def write_json(path: pathlib.Path, obj: Any) -> None:
  path.write_text(json.dumps(obj, indent=1, default=str) + '\n', encoding='utf-8')


def _from_run(run: Run, results: list[dict[str, Any]] | None = None) -> dict[str, Any]:
  results = run.json_lines() if results is None else results
  status = 'ok' if run.rc == 0 and results else ('timeout' if run.rc == 124 else 'failed')
  record = {'status': status, 'rc': run.rc, 'wall_s': run.wall_s, 'results': results}
  if status != 'ok':
    record['output_tail'] = run.tail()
  return record


def env_figure(check: Check, timeout_s: float) -> dict[str, Any]:
  code = (
      'import json, platform, importlib.metadata as md, jax\n'
      'v = {}\n'
      'for n in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "ml-collections", "torch", '
      '"diffusers", "tensorflow", "jax-cuda13-plugin", "jax-cuda12-plugin"):\n'
      '  try: v[n] = md.version(n)\n'
      '  except md.PackageNotFoundError: pass\n'
      'd = jax.devices()\n'
      'print(json.dumps({"backend": jax.default_backend(), "device_kind": d[0].device_kind, "devices": len(d), '
      '"python": platform.python_version(), "versions": v}))\n')
  run = check.proc([sys.executable, '-c', code], timeout_s)
  record = _from_run(run)
  smi = shutil.which('nvidia-smi')
  if smi:
    q = check.proc([smi, '--query-gpu=name,driver_version,memory.total', '--format=csv,noheader'], 30)
    record['nvidia_smi'] = q.stdout.strip()
  record['date_utc'] = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M')
  git = check.proc(['git', 'rev-parse', '--short', 'HEAD'], 10)
  record['commit'] = git.stdout.strip() if git.rc == 0 else None
  return record


# The one-device equality tests of these files run on one GPU; those that need 4 devices do not.
TEST_FILES = ('tests/test_precision.py', 'tests/test_step.py', 'tests/test_parallel.py')
NEEDS_4_DEVICES = 'not 4_device and not 4_devices and not device_split and not divisible'


def tests_figure(check: Check, p: Plan, timeout_s: float) -> dict[str, Any]:
  import xml.etree.ElementTree as ET
  report = check.out / 'tests.xml'
  select = 'auto_is_float32' if p.smoke else NEEDS_4_DEVICES
  run = check.proc([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', f'--junitxml={report}',
                    '-k', select, *TEST_FILES], min(timeout_s, check.cap_s))
  counts = {'passed': 0, 'failed': 0, 'skipped': 0}
  failed = []
  if report.is_file():
    for case in ET.parse(report).getroot().iter('testcase'):
      kind = next((c.tag for c in case if c.tag in ('failure', 'error', 'skipped')), 'passed')
      kind = 'failed' if kind in ('failure', 'error') else kind
      counts[kind] += 1
      if kind == 'failed':
        failed.append(case.get('name'))
    report.unlink()
  status = 'ok' if run.rc == 0 and counts['passed'] else ('timeout' if run.rc == 124 else 'failed')
  record = {'status': status, 'rc': run.rc, 'wall_s': run.wall_s, 'selected': f'{" ".join(TEST_FILES)} -k {select!r}',
            **counts, 'failed_tests': failed}
  if status != 'ok':
    record['output_tail'] = run.tail()
  return record


def bench_figure(check: Check, config: str, overrides: Sequence[str], timeout_s: float,
                 what: str = 'train', extra: Sequence[str] = ()) -> dict[str, Any]:
  run = check.proc([sys.executable, '-m', 'aigc_jax.bench', f'--config={config}', f'--what={what}', *extra,
                    *overrides], min(timeout_s, check.cap_s))
  return _from_run(run)


def metrics_losses(path: pathlib.Path) -> dict[int, float]:
  """step -> training loss of a run's metrics.jsonl (eval lines have no 'loss' at top level)."""
  losses = {}
  for line in path.read_text(encoding='utf-8').splitlines():
    row = json.loads(line)
    if 'loss' in row and 'step' in row:
      losses[int(row['step'])] = float(row['loss'])
  return losses


def compare_curves(a: dict[int, float], b: dict[int, float], window: int, rtol: float) -> dict[str, Any]:
  """Mean loss of each `window` consecutive common steps of curves a (reference) and b; agree if all within rtol."""
  steps = sorted(set(a) & set(b))
  rows = []
  for i in range(0, len(steps) - window + 1, window):
    chunk = steps[i:i + window]
    ma, mb = sum(a[s] for s in chunk) / window, sum(b[s] for s in chunk) / window
    rows.append({'steps': [chunk[0], chunk[-1]], 'reference': ma, 'other': mb, 'rel_diff': abs(mb - ma) / abs(ma)})
  worst = max((r['rel_diff'] for r in rows), default=float('nan'))
  return {'common_steps': len(steps), 'window': window, 'rtol': rtol, 'windows': rows,
          'max_rel_diff': worst, 'agree': bool(rows) and worst <= rtol}


def loss_curves_figure(check: Check, p: Plan, timeout_s: float) -> dict[str, Any]:
  """`run.py` ddpm_cifar for p.loss_steps steps in float32 and in bfloat16 from one seed; their windowed means."""
  runs, procs = {}, {}
  for dtype in ('float32', 'bfloat16'):
    workdir = check.out / f'loss_{dtype}'
    shutil.rmtree(workdir, ignore_errors=True)
    argv = [sys.executable, 'run.py', '--config=configs/ddpm_cifar.py', f'--workdir={workdir}',
            f'--config.model.dtype={dtype}', f'--config.training.num_train_steps={p.loss_steps}',
            '--config.training.log_every=1', f'--config.training.checkpoint_every={p.loss_steps}',
            '--config.training.sample_every=0', f'--config.training.batch_size={p.batch}', *_images(p), *p.ddpm]
    procs[dtype] = argv
  if p.smoke:  # 2 shared CPU cores: one after the other
    for dtype, argv in procs.items():
      runs[dtype] = check.proc(argv, timeout_s / 2)
  else:  # one GPU holds both (each gets under half its memory): compiles overlap
    import concurrent.futures
    mem = {'XLA_PYTHON_CLIENT_MEM_FRACTION': '0.45'}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      futures = {d: pool.submit(check.proc, argv, min(timeout_s, check.cap_s), mem) for d, argv in procs.items()}
      runs = {d: f.result() for d, f in futures.items()}
  record: dict[str, Any] = {'steps': p.loss_steps, 'batch': p.batch,
                            'runs': {d: {'rc': r.rc, 'wall_s': r.wall_s} for d, r in runs.items()}}
  curves = {}
  for dtype, run in runs.items():
    metrics = check.out / f'loss_{dtype}' / 'metrics.jsonl'
    if run.rc != 0 or not metrics.is_file():
      record['runs'][dtype]['output_tail'] = run.tail()
      continue
    curves[dtype] = metrics_losses(metrics)
  for dtype in runs:
    shutil.rmtree(check.out / f'loss_{dtype}', ignore_errors=True)
  if len(curves) < 2:
    return {'status': 'failed', **record}
  cmp = compare_curves(curves['float32'], curves['bfloat16'], p.loss_window, LOSS_RTOL)
  record.update(cmp, first_loss={d: c[min(c)] for d, c in curves.items()}, last_loss={d: c[max(c)] for d, c in curves.items()})
  return {'status': 'ok' if cmp['agree'] else 'disagree', **record}


def torch_available(check: Check) -> bool:
  return check.proc([sys.executable, '-c', 'import torch, bench.torch_reference as t; t._diffusers()'], 120).rc == 0


def torch_sample_figure(check: Check, p: Plan, timeout_s: float) -> dict[str, Any]:
  results = []
  start = time.monotonic()
  specs = [('ddim', p.torch_sample_steps), ('ancestral', 1000)] if not p.smoke else [('ddim', p.torch_sample_steps)]
  for sampler, steps in specs:
    left = timeout_s - (time.monotonic() - start)
    run = check.proc([sys.executable, 'bench/torch_reference.py', '--what=sample', f'--model={p.torch_model}',
                      f'--sampler={sampler}', f'--sample_steps={steps}', f'--batch={p.torch_batch}', '--calls=1',
                      f'--autocast={"fp32" if p.smoke else "bf16"}'], left)
    results += run.json_lines() or [{'sampler': sampler, 'rc': run.rc, 'output_tail': run.tail()}]
  ok = all('images_per_s' in r for r in results)
  return {'status': 'ok' if ok else 'failed', 'results': results}


def run_check(smoke: bool, out: pathlib.Path, budget_s: float, pack: bool) -> tuple[str, list[dict[str, Any]]]:
  """Every figure, within `budget_s` seconds; returns the summary table and the figures."""
  out.mkdir(parents=True, exist_ok=True)
  scratch = out / 'scratch'
  scratch.mkdir(exist_ok=True)
  p = plan(smoke, scratch)
  env = dict(os.environ, PYTHONUNBUFFERED='1', TF_CPP_MIN_LOG_LEVEL='2', AIGC_JAX_CACHE=str(scratch / 'cache'))
  env['PYTHONPATH'] = os.pathsep.join([str(ROOT)] + [x for x in env.get('PYTHONPATH', '').split(os.pathsep) if x])
  # a loaded CPU can take minutes to compile even the smoke's programs: there the budget alone bounds them
  check = Check(out, budget_s, env, cap_s=budget_s if smoke else 300.0)
  images, b = _images(p), f'--config.training.batch_size={p.batch}'
  check.figure('env', 5, lambda t: env_figure(check, t))
  for dtype in ('bfloat16', 'float32'):
    check.figure(f'train_ddpm_cifar_{dtype}', 20 if smoke else 60, lambda t, d=dtype: bench_figure(
        check, 'configs/ddpm_cifar.py', [*images, b, f'--config.model.dtype={d}', *p.ddpm], t, extra=p.bench_steps))
  check.figure('sample_ours', 20 if smoke else 60, lambda t: bench_figure(
      check, 'configs/ddpm_cifar.py', [*images, f'--config.sample.num={p.sample_num}', *p.ddpm], t, what='sample',
      extra=('--steps=1', '--warmup=0', f'--samplers={p.samplers}')))
  check.figure('loss_curves', 40 if smoke else 150, lambda t: loss_curves_figure(check, p, t))
  check.figure('tests', 20 if smoke else 90, lambda t: tests_figure(check, p, t))
  check.figure('train_gpt_shakespeare', 15 if smoke else 40, lambda t: bench_figure(
      check, 'configs/gpt_shakespeare.py', [f'--config.data.text_file={p.text}', *p.lm], t, extra=p.bench_steps))
  check.figure('train_dcgan_cifar', 15 if smoke else 40, lambda t: bench_figure(
      check, 'configs/dcgan_cifar.py', [*images, *p.gan], t, extra=p.bench_steps))
  gpt2 = sorted(ROOT.glob('configs/gpt2*.py'))
  if gpt2:
    check.figure('train_gpt2', 15 if smoke else 60, lambda t: bench_figure(
        check, str(gpt2[0].relative_to(ROOT)), [f'--config.data.text_file={p.text}', f'--config.data.bpe_dir={p.bpe}',
                                                *(p.lm if smoke else ())], t,
        extra=p.bench_steps))
  if torch_available(check):
    check.figure('sample_torch', 20 if smoke else 90, lambda t: torch_sample_figure(check, p, t))
    check.figure('train_torch', 15 if smoke else 40, lambda t: _from_run(check.proc(
        [sys.executable, 'bench/torch_reference.py', f'--model={p.torch_model}', '--steps=1' if smoke else '--steps=10',
         f'--batch={4 if smoke else 128}', f'--autocast={"fp32" if smoke else "bf16"}'], t)))
  else:
    check.figure('sample_torch', 0, lambda t: {'status': 'skipped', 'reason': 'torch or diffusers does not import'})
  shutil.rmtree(scratch, ignore_errors=True)
  return check.finish(pack), check.figures


def _gib(n: Any) -> str:
  return f'{n / 2**30:.1f} GiB' if isinstance(n, (int, float)) else 'n/a'


def _rate(r: dict[str, Any]) -> str:
  if 'tokens_per_s' in r:
    return f'{r["tokens_per_s"]:,.0f} tokens/s'
  return f'{r["images_per_s"]:,.1f} images/s' if 'images_per_s' in r else 'n/a'


def _sampler_name(r: dict[str, Any]) -> str:
  name = r.get('sample_method') or r.get('sampler', '?')
  steps = r.get('sample_steps')
  return f'{name}-{steps}' if steps else name


def summary_cells(record: dict[str, Any], ours: dict[str, float] | None = None) -> tuple[str, str]:
  """(status, the figure in words) of one record, for the summary table."""
  status = record.get('status', '?')
  if status == 'skipped' or status == 'error':
    return status, record.get('reason') or record.get('error', '')
  name = record['figure']
  if status in ('failed', 'timeout') and not record.get('results') and name != 'loss_curves':
    return status, f'rc {record.get("rc")}: ' + ' '.join(str(record.get('output_tail', '')).split()[-12:])
  if name == 'env':
    r = (record.get('results') or [{}])[0]
    return status, (f'{r.get("device_kind")} x{r.get("devices")} ({r.get("backend")}), JAX {r.get("versions", {}).get("jax")}, '
                    f'Python {r.get("python")}')
  if name == 'tests':
    failed = f' ({", ".join(record["failed_tests"])})' if record.get('failed_tests') else ''
    return status, f'{record["passed"]} passed, {record["failed"]} failed{failed}, {record["skipped"]} skipped'
  if name == 'loss_curves':
    if 'max_rel_diff' not in record:
      return status, 'a run failed: see loss_curves.json'
    first, last = record['first_loss'], record['last_loss']
    return status, (f'{record["steps"]} steps at batch {record["batch"]}: {record["window"]}-step mean losses of '
                    f'bfloat16 within {100 * record["max_rel_diff"]:.2g}% of float32 (tolerance '
                    f'{100 * record["rtol"]:.0f}%); loss {first["float32"]:.3f} -> {last["float32"]:.3f} (float32), '
                    f'{first["bfloat16"]:.3f} -> {last["bfloat16"]:.3f} (bfloat16)')
  if name.startswith('sample'):
    parts = []
    for r in record.get('results', []):
      if 'skipped' in r:
        parts.append(f'{r.get("sample_method")}: {r["skipped"]}')
        continue
      cell = f'{_sampler_name(r)}: {_rate(r)}'
      if ours and _sampler_name(r) in ours and 'images_per_s' in r:
        cell += f' (ours {ours[_sampler_name(r)] / r["images_per_s"]:.2f}x)'
      parts.append(cell)
    batch = next((r.get('num') for r in record.get('results', []) if 'num' in r), '?')
    return status, f'batch {batch}: ' + ' · '.join(parts)
  r = (record.get('results') or [{}])[0]
  cell = f'{_rate(r)} at batch {r.get("global_batch")}'
  if 'dtype' in r:
    cell += f' {r["dtype"]}'
  elif 'autocast' in r:
    cell += f' ({r["autocast"]} autocast, {r.get("framework")})'
  if r.get('mfu_vs_vendor_peak') is not None:
    cell += f' · MFU {100 * r["mfu_vs_vendor_peak"]:.1f}% of the vendor peak'
  if 'mfu_vs_matmul_peak' in r:
    cell += f' · {100 * r["mfu_vs_matmul_peak"]:.1f}% of the measured matmul peak'
  if 'peak_memory_bytes' in r:
    cell += f' · peak memory {_gib(r["peak_memory_bytes"])}'
  if 'compile_s' in r:
    cell += f' · compile {r["compile_s"]:.0f} s'
  return status, cell


def summary(figures: list[dict[str, Any]]) -> str:
  """The markdown table of all figures under a line saying when, where and with what they were measured."""
  env = next((f for f in figures if f.get('figure') == 'env'), {})
  r = (env.get('results') or [{}])[0]
  versions = r.get('versions', {})
  head = (f'Measured {env.get("date_utc", "?")} UTC on {env.get("nvidia_smi") or r.get("device_kind", "?")} '
          f'(JAX {versions.get("jax", "?")}, jaxlib {versions.get("jaxlib", "?")}, flax {versions.get("flax", "?")}, '
          f'torch {versions.get("torch", "-")}), commit {env.get("commit") or "?"}, by `bench/device_check.sh`.')
  ours = {_sampler_name(x): x['images_per_s'] for f in figures if f.get('figure') == 'sample_ours'
          for x in f.get('results', []) if 'images_per_s' in x}
  lines = [head, '', '| figure | status | result | wall s |', '| --- | --- | --- | --- |']
  for record in figures:
    status, cell = summary_cells(record, ours if record.get('figure') == 'sample_torch' else None)
    wall = record.get('wall_s')
    lines.append(f'| {record.get("figure")} | {status} | {cell.replace("|", "/")} | '
                 f'{wall:.0f} |' if isinstance(wall, (int, float)) else
                 f'| {record.get("figure")} | {status} | {cell.replace("|", "/")} | - |')
  return '\n'.join(lines) + '\n'


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='command', required=True)
  sub.add_parser('prepare', help='write .device/ here (needs ../shared/data and a package registry)')
  run = sub.add_parser('run', help='every figure, then the summary table')
  run.add_argument('--cpu-smoke', action='store_true', help='every figure shrunk to seconds, to run it here')
  run.add_argument('--out', default='', help='folder for the JSON files (default: $OUT, else device_check_out/)')
  run.add_argument('--budget_s', type=float, default=DEFAULT_BUDGET_S, help='figures that would not fit are skipped')
  args = parser.parse_args(argv)
  if args.command == 'prepare':
    prepare()
    return
  out = pathlib.Path(args.out or os.environ.get('OUT') or ROOT / 'device_check_out')
  # under the device tool ($OUT), at most 8 files come back: pack the per-figure files
  pack = bool(os.environ.get('OUT')) and out.resolve() == pathlib.Path(os.environ['OUT']).resolve()
  table, figures = run_check(args.cpu_smoke, out, args.budget_s, pack)
  print(table, flush=True)
  broken = [f['figure'] for f in figures if f.get('status') in ('failed', 'error', 'timeout')]
  _say(f'figures in {out}' + (f'; failed: {", ".join(broken)}' if broken else ''))
  sys.exit(1 if broken else 0)


if __name__ == '__main__':
  main()
