"""What users would pick instead, timed on this machine: PyTorch's training steps for our configs, as one JSON line.

  python bench/torch_reference.py --model=ddpm_cifar|ddpm_digits|gpt_cpu [--batch=N] [--steps=N]

Needs torch (and diffusers for the UNets), which aigc_jax itself does not: install them in a
separate environment (`pip install torch diffusers`). Each model is the same architecture
as our config's, trained on random data with the same objective and optimizer:
- ddpm_cifar: diffusers' `UNet2DModel` with the DDPM CIFAR-10 architecture (channels
  128/256/256/256, 2 layers per block, attention at 16x16) = configs/ddpm_cifar.py;
- ddpm_digits: the same family shrunk as configs/ddpm_digits.py (channels 32/64, 1 layer per
  block, attention at 4x4, 8 groups, 8x8x1 images);
- gpt_cpu: a GPT of nanoGPT's CPU setting = configs/gpt_shakespeare_cpu.py (4 layers, 4
  heads, width 128, context 64, batch 12, AdamW, no compile), written here.
A step is forward, backward and the optimizer update; the median of `--steps` after warm-up.
"""

import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def _unet(name: str) -> tuple[nn.Module, tuple[int, ...], int]:
  from diffusers import UNet2DModel
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


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', choices=('ddpm_cifar', 'ddpm_digits', 'gpt_cpu'), required=True)
  parser.add_argument('--batch', type=int, default=0, help='global batch (default: the config\'s)')
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--warmup', type=int, default=2)
  args = parser.parse_args()
  torch.manual_seed(0)
  if args.model == 'gpt_cpu':
    model, batch, block = _GPT(), args.batch or 12, 64
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{'params': decay, 'weight_decay': 0.1}, {'params': rest, 'weight_decay': 0.0}],
                            lr=1e-3, betas=(0.9, 0.99))
    tokens = torch.randint(0, 65, (batch, block + 1))

    def step():
      loss = F.cross_entropy(model(tokens[:, :-1]).reshape(-1, 65), tokens[:, 1:].reshape(-1))
      opt.zero_grad(set_to_none=True)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
      opt.step()
  else:
    model, shape, default_batch = _unet(args.model)
    batch = args.batch or default_batch
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    x0 = torch.rand((batch,) + shape) * 2 - 1

    def step():
      t = torch.randint(0, 1000, (batch,))
      noise = torch.randn_like(x0)
      abar = torch.rand(batch).view(-1, 1, 1, 1)  # stands in for the schedule: same cost
      loss = F.mse_loss(model(abar.sqrt() * x0 + (1 - abar).sqrt() * noise, t).sample, noise)
      opt.zero_grad(set_to_none=True)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
      opt.step()
  model.train()
  times = _time(step, args.steps, args.warmup)
  median = sorted(times)[len(times) // 2]
  result = {'what': 'train', 'framework': f'torch {torch.__version__}', 'model': args.model,
            'params': sum(p.numel() for p in model.parameters()), 'threads': torch.get_num_threads(),
            'global_batch': batch, 'steps_timed': args.steps, 'median_step_s': median}
  result['tokens_per_s' if args.model == 'gpt_cpu' else 'images_per_s'] = (
      batch * 64 / median if args.model == 'gpt_cpu' else batch / median)
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  main()
