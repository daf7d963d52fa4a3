"""Hugging Face GPT-2 checkpoints in and out of our Transformer, without torch or transformers.

A GPT-2 folder (what `GPT2LMHeadModel.save_pretrained` writes, or Hugging Face's `gpt2`
repository) holds `config.json`, the weights as `model.safetensors` or `pytorch_model.bin` (read
by our own torch-free reader, evaluation/torch_checkpoint.py) and optionally the tokenizer files.
The model's shape comes from config.json; every tensor is mapped to one of our parameters and
checked by name and shape, and the first missing, unexpected or misshapen one is named in a one-line
error. GPT-2's `Conv1D` stores its weight as [in, out], as a Flax kernel does, so the attention and
MLP matrices map as they are (a `torch.nn.Linear` would need a transpose); the output head is the
token embedding (tied), as in GPT-2.

    python -m aigc_jax.interop.gpt2 export --workdir=W --out=DIR

writes the newest checkpoint of run W (its EMA parameters, which sampling uses) in the same format
with its tokenizer, so that `GPT2LMHeadModel.from_pretrained(DIR)` loads it.
"""

import json
import os
import re
from typing import Any

import numpy as np

from aigc_jax.errors import UserError

# config.json values our Transformer has no other choice for: GPT-2's own.
_FIXED = {'layer_norm_epsilon': 1e-5, 'scale_attn_weights': True, 'scale_attn_by_inverse_layer_idx': False,
          'tie_word_embeddings': True, 'add_cross_attention': False}
# activation_function -> model.activation ('gelu_new' and 'gelu_pytorch_tanh' are the same tanh formula).
_ACTIVATIONS = {'gelu_new': 'gelu_tanh', 'gelu_pytorch_tanh': 'gelu_tanh', 'gelu': 'gelu'}
_HF_ACTIVATION = {'gelu_tanh': 'gelu_new', 'gelu': 'gelu'}
_GPT2_DEFAULTS = {'n_positions': 1024, 'n_embd': 768, 'n_layer': 12, 'n_head': 12, 'vocab_size': 50257,
                  'activation_function': 'gelu_new', 'n_inner': None}


def read_config(folder: str) -> dict[str, Any]:
  """The model settings of a GPT-2 folder's config.json: {vocab_size, block_size, num_layers, num_heads,
  width, activation, use_bias}; an architecture our Transformer is not is an error naming the difference."""
  path = os.path.join(folder, 'config.json')
  try:
    with open(path, encoding='utf-8') as f:
      hf = json.load(f)
  except OSError as e:
    raise UserError(f'init_from={folder!r}: cannot read {path} ({e.strerror}): point it to a folder '
                    'holding a Hugging Face GPT-2 config.json and its weights') from None
  except json.JSONDecodeError as e:
    raise UserError(f'{path} is not JSON ({e.msg} at line {e.lineno})') from None
  if hf.get('model_type') != 'gpt2':
    raise UserError(f'{path} describes model_type={hf.get("model_type")!r}, not a GPT-2 (model_type "gpt2"): '
                    'only GPT-2 checkpoints can be imported')
  hf = {**_GPT2_DEFAULTS, **hf}
  for key, value in _FIXED.items():
    if key in hf and hf[key] != value:
      raise UserError(f'{path} has {key}={hf[key]!r}, our GPT-2 only {value!r}: this architecture cannot be imported')
  if hf['activation_function'] not in _ACTIVATIONS:
    raise UserError(f'{path} has activation_function={hf["activation_function"]!r}: use one of {sorted(_ACTIVATIONS)}')
  if hf['n_inner'] not in (None, 4 * hf['n_embd']):
    raise UserError(f'{path} has n_inner={hf["n_inner"]}, our MLP only 4 * n_embd = {4 * hf["n_embd"]}')
  if hf['n_embd'] % hf['n_head']:
    raise UserError(f'{path} has n_head={hf["n_head"]}, which does not divide n_embd={hf["n_embd"]}')
  return {'vocab_size': hf['vocab_size'], 'block_size': hf['n_positions'], 'num_layers': hf['n_layer'],
          'num_heads': hf['n_head'], 'width': hf['n_embd'], 'activation': _ACTIVATIONS[hf['activation_function']],
          'use_bias': True}


def _names(num_layers: int) -> dict[str, tuple[str, ...]]:
  """GPT-2's state-dict name (without the 'transformer.' prefix) -> the path of our parameter."""
  names = {'wte.weight': ('token_embed', 'embedding'), 'wpe.weight': ('pos_embed', 'embedding'),
           'ln_f.weight': ('final_norm', 'scale'), 'ln_f.bias': ('final_norm', 'bias')}
  ours = {'ln_1': 'attn_norm', 'ln_2': 'mlp_norm', 'attn.c_attn': 'attn/qkv', 'attn.c_proj': 'attn/out',
          'mlp.c_fc': 'mlp_in', 'mlp.c_proj': 'mlp_out'}
  for i in range(num_layers):
    for theirs, mine in ours.items():
      norm = theirs.startswith('ln')
      names[f'h.{i}.{theirs}.weight'] = (f'blocks_{i}', *mine.split('/'), 'scale' if norm else 'kernel')
      names[f'h.{i}.{theirs}.bias'] = (f'blocks_{i}', *mine.split('/'), 'bias')
  return names


def read_tensors(folder: str) -> dict[str, np.ndarray]:
  """The state dict of a GPT-2 folder: model.safetensors, else pytorch_model.bin (read without torch)."""
  st, pt = os.path.join(folder, 'model.safetensors'), os.path.join(folder, 'pytorch_model.bin')
  if os.path.isfile(st):
    from safetensors.numpy import load_file
    try:
      return load_file(st)
    except Exception as e:  # safetensors raises its own error types for a damaged header or file
      raise UserError(f'{st} is not a readable safetensors file ({type(e).__name__}: {e})') from None
  if os.path.isfile(pt):
    from aigc_jax.evaluation import torch_checkpoint
    return torch_checkpoint.load_state_dict(pt)
  raise UserError(f'init_from={folder!r} holds neither model.safetensors nor pytorch_model.bin')


def params_from_tensors(tensors: dict[str, np.ndarray], settings: dict[str, Any], block_size: int,
                        source: str) -> dict[str, Any]:
  """Our Transformer's params (float32) from GPT-2 tensors, checked name by name and shape by shape.

  The position embedding keeps its first `block_size` rows (a shorter context than the checkpoint's).
  `source` names the checkpoint in errors.
  """
  tensors = {k.removeprefix('transformer.'): v for k, v in tensors.items()}
  tensors = {k: v for k, v in tensors.items() if not re.fullmatch(r'h\.\d+\.attn\.(masked_)?bias', k)}  # mask buffers
  D, V, S = settings['width'], settings['vocab_size'], settings['block_size']
  head = tensors.pop('lm_head.weight', None)
  names = _names(settings['num_layers'])
  params: dict[str, Any] = {}
  for name, path in names.items():
    if name not in tensors:
      raise UserError(f'{source} has no tensor {name!r} (nor transformer.{name}), which a {settings["num_layers"]}-layer '
                      'GPT-2 needs: the file is incomplete or of another model')
    value = np.asarray(tensors.pop(name), np.float32)
    expected = _shape(path, D, V, S)
    if value.shape != expected:
      raise UserError(f'{source}: tensor {name!r} has shape {list(value.shape)}, config.json implies '
                      f'{list(expected)}: the weights do not belong to this config.json')
    if path[0] == 'pos_embed':
      value = value[:block_size]
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  if tensors:
    raise UserError(f'{source} has a tensor our GPT-2 has no place for: {sorted(tensors)[0]!r}')
  if head is not None and not np.array_equal(np.asarray(head, np.float32), params['token_embed']['embedding']):
    raise UserError(f'{source}: lm_head.weight differs from wte.weight: an untied output head cannot be imported')
  return params


def _shape(path: tuple[str, ...], D: int, V: int, S: int) -> tuple[int, ...]:
  """The shape GPT-2's tensor for our parameter `path` has."""
  leaf, layer = path[-1], path[-2]
  if path[0] == 'token_embed':
    return (V, D)
  if path[0] == 'pos_embed':
    return (S, D)
  out = {'qkv': 3 * D, 'out': D, 'mlp_in': 4 * D, 'mlp_out': D}.get(layer, D)
  if leaf == 'kernel':
    return (4 * D if layer == 'mlp_out' else D, out)
  return (out,)


def load(folder: str, block_size: int) -> tuple[dict[str, Any], dict[str, Any]]:
  """(model settings, params) of the GPT-2 checkpoint in `folder`, its context cut to `block_size`."""
  settings = read_config(folder)
  if block_size > settings['block_size']:
    raise UserError(f'data.block_size={block_size} exceeds the n_positions={settings["block_size"]} of '
                    f'{folder}/config.json: lower it')
  return settings, params_from_tensors(read_tensors(folder), settings, block_size, folder)


def hf_config(settings: dict[str, Any], end_id: int | None) -> dict[str, Any]:
  """A transformers GPT2Config (as config.json) for our model settings."""
  return {'model_type': 'gpt2', 'architectures': ['GPT2LMHeadModel'], 'vocab_size': settings['vocab_size'],
          'n_positions': settings['block_size'], 'n_embd': settings['width'], 'n_layer': settings['num_layers'],
          'n_head': settings['num_heads'], 'n_inner': None, 'activation_function': _HF_ACTIVATION[settings['activation']],
          'layer_norm_epsilon': 1e-5, 'resid_pdrop': 0.0, 'embd_pdrop': 0.0, 'attn_pdrop': 0.0,
          'tie_word_embeddings': True, 'bos_token_id': end_id, 'eos_token_id': end_id}


def save(folder: str, params: dict[str, Any], settings: dict[str, Any], tokenizer_json: str | None) -> None:
  """Writes config.json, model.safetensors and (given a BPE) the tokenizer files into `folder`."""
  from safetensors.numpy import save_file
  if not settings['use_bias']:
    raise UserError('the model has no biases (model.use_bias=False): GPT-2 has them, so transformers could not '
                    'load it; train with --config.model.use_bias=True')
  os.makedirs(folder, exist_ok=True)
  tensors = {}
  for name, path in _names(settings['num_layers']).items():
    node = params
    for key in path:
      node = node[key]
    tensors[f'transformer.{name}'] = np.ascontiguousarray(np.asarray(node, np.float32))
  end_id = None
  if tokenizer_json:
    from aigc_jax.data import bpe
    end_id = bpe.save(bpe.from_json(tokenizer_json), folder, settings['block_size'])
  with open(os.path.join(folder, 'config.json'), 'w', encoding='utf-8') as f:
    json.dump(hf_config(settings, end_id), f, indent=2)
  save_file(tensors, os.path.join(folder, 'model.safetensors'), metadata={'format': 'pt'})


def export(workdir: str, out: str) -> int:
  """Writes the newest checkpoint of the LM run in `workdir` into `out` as a GPT-2 folder; returns its step."""
  import ml_collections
  from aigc_jax.train import loop
  path = os.path.join(workdir, 'config.json')
  try:
    with open(path, encoding='utf-8') as f:
      config = ml_collections.ConfigDict(json.load(f))
  except OSError as e:
    raise UserError(f'cannot read {path} ({e.strerror}): --workdir must be a run that trained') from None
  if config.method != 'lm':
    raise UserError(f'{workdir} is a {config.method!r} run: only language models export as GPT-2')
  method, state, step = loop.restore_newest(config, workdir)
  info = method.tokenizer.info
  save(out, state.ema_params, method.model_settings, info.get('tokenizer_json'))
  return step


def main(argv: list[str]) -> None:
  from absl import flags
  from absl import logging
  from aigc_jax import cli
  if len(argv) != 2 or argv[1] != 'export':
    raise SystemExit('usage: python -m aigc_jax.interop.gpt2 export --workdir=W --out=DIR')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # no Orbax INFO lines
  step = cli.run(export, flags.FLAGS.workdir, flags.FLAGS.out)
  print(f'wrote step {step} of {flags.FLAGS.workdir} as a GPT-2 checkpoint into {flags.FLAGS.out}')


if __name__ == '__main__':
  from absl import app
  from absl import flags
  flags.DEFINE_string('workdir', None, 'the run whose newest checkpoint to export', required=True)
  flags.DEFINE_string('out', None, 'folder to write config.json, model.safetensors and the tokenizer into',
                      required=True)
  app.run(main)
