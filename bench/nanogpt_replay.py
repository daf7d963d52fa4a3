"""nanoGPT's documented CPU run of shakespeare_char, replayed draw for draw, then retrained by our LM step.

nanoGPT's README trains the setting of configs/gpt_shakespeare_cpu.py on a CPU and reports a validation
loss of 1.88: the mean loss of 20 random batches of 12 windows (240 windows) drawn at step 2000, one draw of
a noisy estimator. `torch` rebuilds that run from nanoGPT's order of random draws (torch.manual_seed(1337);
module construction; re-initialisation; the first batch; 20 train and 20 val batches at every eval; each
next batch drawn after the forward pass), fp32 with exact GELU, and prints its eval lines, which match the
published log of nanoGPT itself (step 2000: train loss 1.7648, val loss 1.8857). It then scores the step-2000
model over the whole validation split (every non-overlapping window) and saves the initial weights, the
2000 training batches, the learning rates and the step-2000 eval batches. `--seed` runs nanoGPT with
another seed, to see the spread of both figures.

`jax` trains our LM train step and optimizer (the program `run.py` trains with; its learning rates are
nanoGPT's) from those weights on those batches, prints the estimate on nanoGPT's step-2000 eval batches and
saves the state as a checkpoint, which `run.py --mode=eval` scores over the whole validation split. So the
two codes are compared on the same draws, without seed noise:

  python bench/nanogpt_replay.py torch --text=../shared/data/tinyshakespeare.txt --out=/tmp/nanogpt.npz  # torch
  python bench/nanogpt_replay.py jax --replay=/tmp/nanogpt.npz --workdir=/tmp/replay    # the aigc_jax environment
  python run.py --config=configs/gpt_shakespeare_cpu.py --workdir=/tmp/replay --mode=eval \\
    --config.data.text_file=../shared/data/tinyshakespeare.txt

The torch half needs only torch and numpy (`pip install torch`), the jax half only aigc_jax.
"""

import argparse
import math
import os
import sys
import time

import numpy as np

TRAIN_FRACTION = 0.9  # nanoGPT's prepare.py: the first 90% of the characters train, the rest validate
STEPS, EVAL_EVERY, EVAL_BATCHES = 2000, 250, 20
LAYERS, HEADS, WIDTH, BLOCK, BATCH = 4, 4, 128, 64, 12
LR, MIN_LR, WARMUP, BETAS, WEIGHT_DECAY, CLIP = 1e-3, 1e-4, 100, (0.9, 0.99), 0.1, 1.0


def _nanogpt_lr(it: int) -> float:
  """nanoGPT's get_lr: warmup lr * (it + 1) / (warmup + 1), then cosine decay to min_lr at the last step."""
  if it < WARMUP:
    return LR * (it + 1) / (WARMUP + 1)
  return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * (it - WARMUP) / (STEPS - WARMUP))) * (LR - MIN_LR)


def _split(text_path: str) -> tuple[list[str], dict[str, np.ndarray]]:
  """nanoGPT's character vocabulary (of the whole text) and its train/val token arrays."""
  with open(text_path, encoding='utf-8') as f:
    text = f.read()
  chars = sorted(set(text))
  index = {c: i for i, c in enumerate(chars)}
  ids = np.array([index[c] for c in text], np.int64)
  n = int(len(ids) * TRAIN_FRACTION)
  return chars, {'train': ids[:n], 'val': ids[n:]}


def _val_windows(val: np.ndarray) -> np.ndarray:
  """Every non-overlapping window of BLOCK + 1 tokens of the validation split, as `--mode=eval` reads them."""
  count = (len(val) - 1) // BLOCK
  return val[np.arange(count)[:, None] * BLOCK + np.arange(BLOCK + 1)]


def run_torch(text_path: str, out: str, seed: int) -> None:
  """nanoGPT's run with `seed`, draw for draw; saves what the jax half replays."""
  import torch
  import torch.nn as nn
  import torch.nn.functional as F

  chars, data = _split(text_path)
  vocab = len(chars)

  class LayerNorm(nn.Module):
    def __init__(self):
      super().__init__()
      self.weight = nn.Parameter(torch.ones(WIDTH))

    def forward(self, x_BTD):
      return F.layer_norm(x_BTD, (WIDTH,), self.weight, None, 1e-5)

  class Attention(nn.Module):
    def __init__(self):
      super().__init__()
      self.c_attn = nn.Linear(WIDTH, 3 * WIDTH, bias=False)
      self.c_proj = nn.Linear(WIDTH, WIDTH, bias=False)

    def forward(self, x_BTD):
      b, t, d = x_BTD.shape
      q, k, v = (z.view(b, t, HEADS, d // HEADS).transpose(1, 2) for z in self.c_attn(x_BTD).split(d, 2))
      y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
      return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, d))

  class MLP(nn.Module):
    def __init__(self):
      super().__init__()
      self.c_fc = nn.Linear(WIDTH, 4 * WIDTH, bias=False)
      self.c_proj = nn.Linear(4 * WIDTH, WIDTH, bias=False)

    def forward(self, x_BTD):
      return self.c_proj(F.gelu(self.c_fc(x_BTD)))

  class Block(nn.Module):
    def __init__(self):
      super().__init__()
      self.ln_1, self.attn, self.ln_2, self.mlp = LayerNorm(), Attention(), LayerNorm(), MLP()

    def forward(self, x_BTD):
      x_BTD = x_BTD + self.attn(self.ln_1(x_BTD))
      return x_BTD + self.mlp(self.ln_2(x_BTD))

  class GPT(nn.Module):
    """nanoGPT's GPT without biases, its modules made in its order (each construction draws initial weights)."""

    def __init__(self):
      super().__init__()
      self.transformer = nn.ModuleDict(dict(
          wte=nn.Embedding(vocab, WIDTH), wpe=nn.Embedding(BLOCK, WIDTH),
          h=nn.ModuleList([Block() for _ in range(LAYERS)]), ln_f=LayerNorm()))
      self.lm_head = nn.Linear(WIDTH, vocab, bias=False)
      self.transformer.wte.weight = self.lm_head.weight
      self.apply(self._init)  # children before parents, as nanoGPT: the order fixes which draw goes where
      for name, p in self.named_parameters():
        if name.endswith('c_proj.weight'):
          nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * LAYERS))

    @staticmethod
    def _init(module):
      if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, 0.0, 0.02)

    def forward(self, tok_BT):
      x_BTD = self.transformer.wte(tok_BT) + self.transformer.wpe(torch.arange(tok_BT.shape[1]))
      for block in self.transformer.h:
        x_BTD = block(x_BTD)
      return self.lm_head(self.transformer.ln_f(x_BTD))

  torch.manual_seed(seed)
  model = GPT()
  init = {k: v.detach().numpy().copy() for k, v in model.named_parameters()}
  params = list(model.parameters())
  opt = torch.optim.AdamW([{'params': [p for p in params if p.dim() >= 2], 'weight_decay': WEIGHT_DECAY},
                           {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}],
                          lr=LR, betas=BETAS)

  def get_batch(split: str) -> torch.Tensor:
    """BATCH random windows of BLOCK + 1 tokens (inputs and targets of nanoGPT's get_batch in one array)."""
    ix = torch.randint(len(data[split]) - BLOCK, (BATCH,))
    return torch.stack([torch.from_numpy(data[split][i:i + BLOCK + 1]) for i in ix])

  def loss_of(tok_BT1: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(tok_BT1[:, :-1]).reshape(-1, vocab), tok_BT1[:, 1:].reshape(-1))

  start = time.time()
  batch = get_batch('train')
  batches, lrs = [], []
  for it in range(STEPS + 1):
    if it % EVAL_EVERY == 0:
      model.eval()
      with torch.no_grad():
        drawn = {s: [get_batch(s) for _ in range(EVAL_BATCHES)] for s in ('train', 'val')}
        est = {s: np.mean([loss_of(b).item() for b in drawn[s]]) for s in drawn}
      model.train()
      print(f"step {it}: train loss {est['train']:.4f}, val loss {est['val']:.4f}", flush=True)
    if it == STEPS:
      break
    lr = _nanogpt_lr(it)
    for group in opt.param_groups:
      group['lr'] = lr
    batches.append(batch.numpy())
    lrs.append(lr)
    loss = loss_of(batch)
    batch = get_batch('train')
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
    opt.step()
  model.eval()
  windows = torch.from_numpy(_val_windows(data['val']))
  with torch.no_grad():
    whole = np.mean(np.concatenate([
        F.cross_entropy(model(w[:, :-1]).transpose(1, 2), w[:, 1:], reduction='none').mean(1).numpy()
        for w in windows.split(512)]))
  print(f'step {STEPS} model over the whole validation split ({len(windows)} windows): {whole:.4f} '
        f'({time.time() - start:.0f} s)', flush=True)
  np.savez(out, chars=np.array(chars), tokens=np.stack(batches), lrs=np.array(lrs), whole_val=whole,
           **{f'eval_{s}': np.stack([b.numpy() for b in drawn[s]]) for s in drawn},
           **{'init/' + k: v for k, v in init.items()})
  print(f'wrote {out}')


def _our_params(z: np.lib.npyio.NpzFile) -> dict:
  """nanoGPT's initial weights in our Transformer's parameter tree (torch Linear weights are [out, in])."""
  w = lambda name: z['init/transformer.' + name]
  params = {'token_embed': {'embedding': w('wte.weight')}, 'pos_embed': {'embedding': w('wpe.weight')},
            'final_norm': {'scale': w('ln_f.weight')}}
  for i in range(LAYERS):
    h = lambda name: w(f'h.{i}.{name}')
    params[f'blocks_{i}'] = {
        'attn_norm': {'scale': h('ln_1.weight')}, 'mlp_norm': {'scale': h('ln_2.weight')},
        'attn': {'qkv': {'kernel': h('attn.c_attn.weight').T}, 'out': {'kernel': h('attn.c_proj.weight').T}},
        'mlp_in': {'kernel': h('mlp.c_fc.weight').T}, 'mlp_out': {'kernel': h('mlp.c_proj.weight').T}}
  return params


def run_jax(replay: str, text_path: str, workdir: str) -> None:
  """Our train step from nanoGPT's initial weights on its batches; the state saved as a checkpoint."""
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root: configs/
  import jax
  from configs import gpt_shakespeare_cpu
  from aigc_jax.train import checkpoint, loop, parallel, step as step_lib

  z = np.load(replay)
  config = gpt_shakespeare_cpu.get_config()
  config.data.text_file = text_path
  devs = parallel.devices(jax.local_devices()[:1])
  ds = loop.train_data(config, devs)
  method, train_step, fresh = loop.build(config, ds.info, {})
  chars = [str(c) for c in z['chars']]
  if list(method.tokenizer.encode(''.join(chars))) != list(range(len(chars))):
    sys.exit(f'error: {replay} has a different vocabulary from {text_path}: give the text the torch half read')
  params = jax.tree.map(np.asarray, _our_params(z))
  if jax.tree.structure(params) != jax.tree.structure(fresh.params):
    sys.exit('error: the Transformer\'s parameter tree changed: update _our_params')
  (_, schedule), = train_step.optimizers
  ours = np.array([float(schedule(s)) for s in range(STEPS)])
  if not np.allclose(ours, z['lrs'], rtol=1e-5, atol=0):
    sys.exit("error: the config's learning rates are not nanoGPT's: the replay would compare two schedules")
  state = parallel.replicate(fresh.replace(params=params, ema_params=params), devs)  # Adam's state starts at 0
  step = parallel.train_step(train_step, devs)
  start = time.time()
  for s, tokens in enumerate(z['tokens']):
    state, metrics = step(state, [{'tokens': tokens[None].astype(np.int32)}])
    if (s + 1) % EVAL_EVERY == 0:
      print(f'step {s + 1}: train batch loss {float(metrics["loss"]):.4f} ({time.time() - start:.0f} s)', flush=True)
  evaluate = parallel.eval_step(step_lib.eval_step(method, parallel.AXIS), devs)
  est = {s: np.mean([float(evaluate(state, {'tokens': b[None].astype(np.int32)}, fresh.rng)['loss'])
                     for b in z[f'eval_{s}']]) for s in ('train', 'val')}
  print(f"step {STEPS}, on nanoGPT's step-{STEPS} eval batches: "
        f"train loss {est['train']:.4f}, val loss {est['val']:.4f}")
  ckpts = checkpoint.Checkpoints(os.path.join(workdir, 'checkpoints'), keep=1)
  ckpts.save(STEPS, state, ds.info)
  ckpts.close()
  print(f"saved to {workdir}; nanoGPT's model scores {float(z['whole_val']):.4f} over the whole validation split, "
        f'ours: run.py --config=configs/gpt_shakespeare_cpu.py --workdir={workdir} --mode=eval '
        f'--config.data.text_file={text_path}')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='half', required=True)
  t = sub.add_parser('torch', help="nanoGPT's run, in an environment with torch")
  t.add_argument('--text', required=True, help='Tiny Shakespeare (input.txt)')
  t.add_argument('--out', required=True, help='the .npz to write')
  t.add_argument('--seed', type=int, default=1337, help="nanoGPT's seed (1337) or another, to see its spread")
  j = sub.add_parser('jax', help='our train step on the same draws, in the aigc_jax environment')
  j.add_argument('--replay', required=True, help="the torch half's .npz")
  j.add_argument('--text', default='../shared/data/tinyshakespeare.txt', help='the text the torch half read')
  j.add_argument('--workdir', required=True, help='where the checkpoint goes')
  args = parser.parse_args()
  if args.half == 'torch':
    run_torch(args.text, args.out, args.seed)
  else:
    run_jax(args.replay, args.text, args.workdir)


if __name__ == '__main__':
  main()
