"""What users would pick instead, timed on this machine: PyTorch's training steps or diffusers' samplers, one JSON line.

  python bench/torch_reference.py --model=ddpm_cifar|ddpm_digits|gpt_cpu [--batch=N] [--steps=N] [--autocast=bf16]
  python bench/torch_reference.py --what=sample --model=ddpm_cifar --sampler=ddim --sample_steps=50 --batch=16

Needs torch (and diffusers for the UNets), which aigc_jax itself does not: install them in a
separate environment (`pip install torch diffusers`). It runs on the GPU when torch sees one
(`--device`); `--autocast=bf16` trains or samples under bfloat16 autocast there.
--what=sample times diffusers' `DDPMPipeline` (ancestral: `DDPMScheduler` with Ho et al.'s
fixed-large variance and clipped x_0, as our 'ancestral'; 'dpmpp_2m': DPM-Solver++(2M)) or
`DDIMPipeline` (eta 0, clipped x_0, evenly spaced timesteps from T-1 down to 0, as our 'ddim')
on the UNet with random weights: images/s over `--calls` calls after `--warmup_calls` untimed ones, beside
`python -m aigc_jax.bench --what=sample` for the same config and batch.
For --what=train each model is the same architecture as our config's, trained on random data
with the same objective and optimizer:
- ddpm_cifar: diffusers' `UNet2DModel` with the DDPM CIFAR-10 architecture (channels
  128/256/256/256, 2 layers per block, attention at 16x16) = configs/ddpm_cifar.py;
- ddpm_digits: the same family shrunk as configs/ddpm_digits.py (channels 32/64, 1 layer per
  block, attention at 4x4, 8 groups, 8x8x1 images);
- gpt_cpu: a GPT of nanoGPT's CPU setting = configs/gpt_shakespeare_cpu.py (4 layers, 4
  heads, width 128, context 64, batch 12, AdamW, no compile), written here.
A step is forward, backward and the optimizer update; the median of `--steps` after warm-up.
"""

import argparse
import contextlib
import json
import math
import sys
import time

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F


def _diffusers() -> Any:
  """The diffusers package, imported without torchvision: a torchvision built for another torch
  (as pip leaves it beside a CPU-only torch) breaks the import of transformers, which diffusers
  pulls in, and none of what is timed here uses it."""
  sys.modules.setdefault('torchvision', None)
  import diffusers
  return diffusers


def _unet(name: str) -> tuple[nn.Module, tuple[int, ...], int]:
  UNet2DModel = _diffusers().UNet2DModel
  if name == 'ddpm_cifar':
    model = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                        block_out_channels=(128, 256, 256, 256),
                        down_block_types=('DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D', 'DownBlock2D'),
                        up_block_types=('UpBlock2D', 'UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'), dropout=0.1)
    return model, (3, 32, 32), 16
  model = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(32, 64),
                      down_block_types=('DownBlock2D', 'AttnDownBlock2D'),
                      up_block_types=('AttnUpBlock2D', 'UpBlock2D'), norm_num_groups=8)
  return model, (1, 8, 8), 128


class _Block(nn.Module):
  def __init__(self, d: int, heads: int):
    super().__init__()
    self.heads = heads
    self.ln1, self.ln2 = nn.LayerNorm(d, bias=False), nn.LayerNorm(d, bias=False)
    self.qkv, self.proj = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
    self.fc, self.out = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

  def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
    b, t, d = x_BTD.shape
    q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2)
               for z in self.qkv(self.ln1(x_BTD)).split(d, 2))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
    x_BTD = x_BTD + self.proj(y)
    return x_BTD + self.out(F.gelu(self.fc(self.ln2(x_BTD))))


class _GPT(nn.Module):
  def __init__(self, vocab: int = 65, block: int = 64, d: int = 128, layers: int = 4, heads: int = 4):
    super().__init__()
    self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(block, d)
    self.blocks = nn.ModuleList(_Block(d, heads) for _ in range(layers))
    self.ln_f = nn.LayerNorm(d, bias=False)
    for name, p in self.named_parameters():
      if p.dim() >= 2:
        std = 0.02 / math.sqrt(2 * layers) if name.endswith(('proj.weight', 'out.weight')) else 0.02
        nn.init.normal_(p, 0.0, std)

  def forward(self, tok_BT: torch.Tensor) -> torch.Tensor:
    x_BTD = self.wte(tok_BT) + self.wpe(torch.arange(tok_BT.shape[1]))
    for block in self.blocks:
      x_BTD = block(x_BTD)
    return self.ln_f(x_BTD) @ self.wte.weight.T


def _time(step, steps: int, warmup: int) -> list[float]:
  times = []
  for i in range(warmup + steps):
    start = time.perf_counter()
    step()
    if i >= warmup:
      times.append(time.perf_counter() - start)
  return times


DEFAULT_SAMPLE_STEPS = {'ancestral': 1000, 'ddim': 50, 'dpmpp_2m': 20}


def _autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
  if dtype == 'fp32':
    return contextlib.nullcontext()
  return torch.autocast(device.type, dtype=torch.bfloat16)


def _sync(device: torch.device) -> None:
  if device.type == 'cuda':
    torch.cuda.synchronize()


def _pipeline(unet: nn.Module, sampler: str) -> Any:
  """diffusers' pipeline and scheduler for our sampler of that name, on the schedule of configs/ddpm_*.py."""
  d = _diffusers()
  common = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule='linear')
  if sampler == 'ancestral':
    return d.DDPMPipeline(unet, d.DDPMScheduler(**common, variance_type='fixed_large', clip_sample=True))
  if sampler == 'ddim':
    return d.DDIMPipeline(unet, d.DDIMScheduler(**common, clip_sample=True, set_alpha_to_one=True,
                                                timestep_spacing='linspace'))
  return d.DDPMPipeline(unet, d.DPMSolverMultistepScheduler(**common, algorithm_type='dpmsolver++', solver_order=2))


def bench_sample(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
  """images/s of diffusers' pipeline for `args.sampler` with `args.sample_steps` steps at batch `args.batch`."""
  unet, _, _ = _unet(args.model)
  unet = unet.to(device).eval()
  pipe = _pipeline(unet, args.sampler)
  pipe.set_progress_bar_config(disable=True)
  steps = args.sample_steps or DEFAULT_SAMPLE_STEPS[args.sampler]
  batch = args.batch or 16

  def call(seed: int) -> None:
    with torch.inference_mode(), _autocast(device, args.autocast):
      pipe(batch_size=batch, num_inference_steps=steps, output_type='np',
           generator=torch.Generator(device='cpu').manual_seed(seed))
    _sync(device)
  start = time.perf_counter()
  for seed in range(args.warmup_calls):
    call(seed)
  first_s = time.perf_counter() - start if args.warmup_calls else None
  cpu_start = time.process_time()
  times = _time(lambda: call(args.warmup_calls), args.calls, 0)
  cpu_s = (time.process_time() - cpu_start) / args.calls
  median = sorted(times)[len(times) // 2]
  return {'what': 'sample', 'framework': f'torch {torch.__version__} diffusers {_diffusers().__version__}',
          'model': args.model, 'params': sum(p.numel() for p in unet.parameters()),
          'device': torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu',
          'threads': torch.get_num_threads(), 'autocast': args.autocast, 'sampler': args.sampler,
          'pipeline': type(pipe).__name__, 'scheduler': type(pipe.scheduler).__name__, 'sample_steps': steps,
          'num': batch, 'calls_timed': args.calls, 'median_call_s': median, 'cpu_s_per_call': cpu_s,
          'warmup_calls_s': first_s,
          'images_per_s': batch / median}


def bench_train(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
  """The median train step of `args.model` on random data."""
  if args.model == 'gpt_cpu':
    model, batch, block = _GPT().to(device), args.batch or 12, 64
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{'params': decay, 'weight_decay': 0.1}, {'params': rest, 'weight_decay': 0.0}],
                            lr=1e-3, betas=(0.9, 0.99))
    tokens = torch.randint(0, 65, (batch, block + 1), device=device)

    def loss() -> torch.Tensor:
      return F.cross_entropy(model(tokens[:, :-1]).reshape(-1, 65), tokens[:, 1:].reshape(-1))
  else:
    model, shape, default_batch = _unet(args.model)
    model = model.to(device)
    batch = args.batch or default_batch
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    x0 = torch.rand((batch,) + shape, device=device) * 2 - 1

    def loss() -> torch.Tensor:
      t = torch.randint(0, 1000, (batch,), device=device)
      noise = torch.randn_like(x0)
      abar = torch.rand(batch, device=device).view(-1, 1, 1, 1)  # stands in for the schedule: same cost
      return F.mse_loss(model(abar.sqrt() * x0 + (1 - abar).sqrt() * noise, t).sample.float(), noise)

  def step():
    with _autocast(device, args.autocast):
      value = loss()
    opt.zero_grad(set_to_none=True)
    value.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    _sync(device)
  model.train()
  times = _time(step, args.steps, args.warmup)
  median = sorted(times)[len(times) // 2]
  result = {'what': 'train', 'framework': f'torch {torch.__version__}', 'model': args.model,
            'params': sum(p.numel() for p in model.parameters()),
            'device': torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu',
            'threads': torch.get_num_threads(), 'autocast': args.autocast,
            'global_batch': batch, 'steps_timed': args.steps, 'median_step_s': median}
  result['tokens_per_s' if args.model == 'gpt_cpu' else 'images_per_s'] = (
      batch * 64 / median if args.model == 'gpt_cpu' else batch / median)
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--what', choices=('train', 'sample'), default='train')
  parser.add_argument('--model', choices=('ddpm_cifar', 'ddpm_digits', 'gpt_cpu'), required=True)
  parser.add_argument('--batch', type=int, default=0, help='global batch (default: the config\'s; 16 to sample)')
  parser.add_argument('--steps', type=int, default=10, help='train: timed steps')
  parser.add_argument('--warmup', type=int, default=2, help='train: untimed steps first')
  parser.add_argument('--sampler', choices=('ancestral', 'ddim', 'dpmpp_2m'), default='ddim')
  parser.add_argument('--sample_steps', type=int, default=0,
                      help='sample: the sampler\'s steps (default: ancestral 1000, ddim 50, dpmpp_2m 20); fewer '
                           'ancestral ones stride over the 1000 (per step the same cost)')
  parser.add_argument('--calls', type=int, default=1, help='sample: timed calls')
  parser.add_argument('--warmup_calls', type=int, default=1, help='sample: untimed calls first')
  parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
  parser.add_argument('--autocast', choices=('fp32', 'bf16'), default='fp32')
  args = parser.parse_args()
  if args.what == 'sample' and args.model == 'gpt_cpu':
    parser.error('--what=sample times the DDPM pipelines: --model=ddpm_cifar or ddpm_digits')
  torch.manual_seed(0)
  device = torch.device(args.device)
  bench = bench_sample if args.what == 'sample' else bench_train
  print(json.dumps(bench(args, device)), flush=True)


if __name__ == '__main__':
  main()
