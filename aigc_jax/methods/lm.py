"""A decoder-only Transformer language model: next-token cross-entropy, and decoding as transformers' generate.

Metrics are the mean next-token loss (nats), its perplexity exp(loss), and bits per
character, byte or BPE token (loss / ln 2). Sampling continues `sample.prompt` by
`sample.method`: 'sample' (temperature / top-k / top-p) or 'greedy' (`generation.py`, one jitted
program with a key/value cache, past `data.block_size` re-reading the last block_size tokens), or
'beam' (`beam_search.py`), for `sample.length` new tokens or up to `sample.max_length` in all, a row
ending at `sample.end_token`. `sample.kv_cache=False` recomputes every token's whole context instead:
the slow reference. With `init_from` (a Hugging Face GPT-2 folder, `interop/gpt2.py`) the model's
shape is that checkpoint's, and a fresh run starts from its weights.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from aigc_jax.data import tokenizers
from aigc_jax.errors import UserError
from aigc_jax.interop import gpt2
from aigc_jax.methods import beam_search
from aigc_jax.methods import generation
from aigc_jax.methods import precision
from aigc_jax.methods.base import Batch
from aigc_jax.methods.base import Method
from aigc_jax.methods.base import Metrics
from aigc_jax.models.transformer import ACTIVATIONS
from aigc_jax.models.transformer import Transformer
from aigc_jax.randomness import Rng
from aigc_jax.rules import Rule
from aigc_jax.train.state import TrainState


class LM(Method):
  """Language modelling: `config.model` sizes the Transformer, `data_info` gives its tokenizer."""

  DATA_KIND = 'text'
  RULES = (
      Rule('model.dtype', lambda c: c.model.dtype in precision.CHOICES,
           lambda c: f'model.dtype={c.model.dtype!r} is unknown: use one of {", ".join(precision.CHOICES)}'),
      Rule('model.num_heads', lambda c: c.model.width % c.model.num_heads == 0,
           'model.num_heads={model.num_heads} must divide model.width={model.width}: change one of them'),
      Rule('model.activation', lambda c: c.model.activation in ACTIVATIONS,
           lambda c: f'model.activation={c.model.activation!r} is unknown: use one of {", ".join(ACTIVATIONS)}'),
      Rule('model.dropout', lambda c: 0.0 <= c.model.dropout < 1.0, 'model.dropout={model.dropout} must be in [0, 1)'),
      Rule('data.block_size', lambda c: c.data.block_size >= 1,
           'data.block_size={data.block_size} must be positive'),
      Rule('sample.prompt', lambda c: c.sample.prompt,
           "sample.prompt is empty: give at least one character to start from, e.g. '\\n'"),
      Rule('sample.length', lambda c: c.sample.length >= 1, 'sample.length={sample.length} must be positive'),
      Rule('sample.temperature', lambda c: c.sample.temperature >= 0,
           'sample.temperature={sample.temperature} must be >= 0 (0: always the most likely token)'),
      Rule('sample.top_k', lambda c: c.sample.top_k >= 0, 'sample.top_k={sample.top_k} must be >= 0 (0: no top-k filter)'),
      Rule('sample.top_p', lambda c: 0.0 < c.sample.top_p <= 1.0,
           'sample.top_p={sample.top_p} must be in (0, 1] (1: no nucleus filter)'),
      Rule('sample.method', lambda c: c.sample.method in ('sample', 'greedy', 'beam'),
           "sample.method={sample.method!r} is unknown: use 'sample' (temperature / top-k / top-p), 'greedy' or "
           "'beam' (beam search)"),
      Rule('sample.max_length', lambda c: c.sample.max_length >= 0,
           'sample.max_length={sample.max_length} must be >= 0 (0: sample.length new tokens)'),
      Rule('sample.num_beams', lambda c: c.sample.num_beams >= 1, 'sample.num_beams={sample.num_beams} must be >= 1'),
      Rule('sample.no_repeat_ngram_size', lambda c: c.sample.no_repeat_ngram_size >= 0,
           'sample.no_repeat_ngram_size={sample.no_repeat_ngram_size} must be >= 0 (0: no restriction)'),
  )

  def __init__(self, config: ml_collections.ConfigDict, axis_name: str, data_info: dict[str, str] | None = None,
               parts: dict[str, Any] | None = None):
    """The prompt and end token must be tokens of the data's tokenizer: checked here, once it is known."""
    super().__init__(config, axis_name, data_info, parts)
    self.tokenizer = tokenizers.from_info(data_info)
    self.bits_name = f'bits_per_{self.tokenizer.unit}'
    m = config.model
    self.init_from = config.init_from
    if config.init_from:  # the shape is the checkpoint's
      settings = gpt2.read_config(config.init_from)
      if self.tokenizer.vocab_size > settings['vocab_size']:
        raise UserError(f'the tokenizer has {self.tokenizer.vocab_size} tokens, the model of init_from='
                        f'{config.init_from!r} only {settings["vocab_size"]}: use that model\'s tokenizer files '
                        '(data.bpe_dir)')
      settings['block_size'] = config.data.block_size
    else:
      settings = {'vocab_size': self.tokenizer.vocab_size, 'block_size': config.data.block_size,
                  'num_layers': m.num_layers, 'num_heads': m.num_heads, 'width': m.width,
                  'activation': m.activation, 'use_bias': m.use_bias}
    self.model_settings = settings  # the Transformer's shape and choices (interop/gpt2.py exports them)
    self.model = Transformer(**settings, dropout=m.dropout, dtype=precision.compute_dtype(m.dtype))
    s = config.sample
    self.prompt_P = self.tokenizer.encode(s.prompt, what=f'sample.prompt={s.prompt!r}')
    if len(self.prompt_P) > config.data.block_size:
      raise UserError(f'sample.prompt is {len(self.prompt_P)} tokens, longer than data.block_size='
                      f'{config.data.block_size}: shorten it')
    self.num_new = s.max_length - len(self.prompt_P) if s.max_length else s.length  # new tokens
    if self.num_new < 1:
      raise UserError(f'sample.max_length={s.max_length} leaves no new token after the {len(self.prompt_P)} of '
                      'sample.prompt: raise it (it counts the prompt and the new tokens)')
    self.end_id = None
    if s.end_token:
      end = self.tokenizer.encode(s.end_token, what=f'sample.end_token={s.end_token!r}')
      if len(end) != 1:
        raise UserError(f'sample.end_token={s.end_token!r} is {len(end)} tokens, not one: give a single '
                        f'{self.tokenizer.unit} (or \'\' for none)')
      self.end_id = int(end[0])
    self.sample_cfg = s

  def init(self, rng: jax.Array) -> tuple[Any, Any]:
    tok_BT = jnp.zeros((1, self.model.block_size), jnp.int32)
    return self.model.init({'params': rng}, tok_BT)['params'], {}

  def warm_start(self, state: TrainState) -> TrainState:
    """The fresh state with the params (and EMA) of the GPT-2 checkpoint `init_from`, if one is set."""
    if not self.init_from:
      return state
    _, params = gpt2.load(self.init_from, self.model.block_size)
    on_device = lambda: jax.tree.map(lambda x, ref: jnp.asarray(x, ref.dtype), params, state.params)
    return state.replace(params=on_device(), ema_params=on_device())  # two buffers: the step donates both

  def _losses(self, params: Any, tokens_BT1: jax.Array, train: bool, rng: jax.Array | None = None) -> jax.Array:
    """Cross-entropy [B, T] of each window's tokens 1..T given the ones before them."""
    rngs = {'dropout': rng} if train else {}
    logits_BTV = self.model.apply({'params': params}, tokens_BT1[:, :-1], train=train, rngs=rngs)
    return optax.softmax_cross_entropy_with_integer_labels(logits_BTV, tokens_BT1[:, 1:])

  def loss(self, params: Any, batch: Batch, rng: Rng, model_state: Any) -> tuple[jax.Array, tuple[Metrics, Any]]:
    """The mean next-token cross-entropy of the batch's windows (dropout masks drawn per device)."""
    return self._losses(params, batch['tokens'], True, rng.device()).mean(), ({}, model_state)

  def eval_step(self, state: TrainState, batch: Batch, rng: Rng) -> Metrics:
    """The mean loss of each window under the EMA parameters (no dropout): windows that pad the split weigh 0."""
    del rng  # evaluation is deterministic
    return {'loss': self._losses(state.ema_params, batch['tokens'], False).mean(axis=1)}

  def summarize(self, means: dict[str, Any]) -> dict[str, Any]:
    """The perplexity exp(loss) and bits per token loss / ln 2 of the mean loss."""
    return {**means, 'perplexity': jnp.exp(means['loss']), self.bits_name: means['loss'] / math.log(2.0)}

  def sample(self, state: TrainState, rng: jax.Array, num: int) -> dict[str, jax.Array]:
    """`num` continuations of `sample.prompt` from the EMA parameters, as transformers' `generate` makes them.

    {'tokens': int32 [num, P + new], 'num_new': int32 [num] new tokens (fewer where a row stopped at
    the end token, which it includes), 'logprobs': float32 [num, P + new], each new token's
    log-probability under the model (0 elsewhere)}. Greedy and beam search are deterministic: their
    `num` continuations are the same one.
    """
    s = self.sample_cfg
    prompt_1P = jnp.asarray(self.prompt_P)[None]
    if s.method == 'beam':
      beams = beam_search.beam_search(self.model, state.ema_params, prompt_1P, self.num_new, s.num_beams,
                                      s.length_penalty, s.no_repeat_ngram_size, self.end_id, s.early_stopping)
      return jax.tree.map(lambda x: jnp.repeat(x, num, axis=0),
                          {'tokens': beams.tokens_BL, 'num_new': beams.num_new_B, 'logprobs': beams.logprobs_BL})
    temperature = 0.0 if s.method == 'greedy' else s.temperature
    tok_BL, logp_BL = generation.generate(self.model, state.ema_params, jnp.tile(prompt_1P, (num, 1)), rng,
                                          self.num_new, temperature, s.top_k, s.top_p, s.kv_cache, self.end_id,
                                          s.no_repeat_ngram_size)
    return {'tokens': tok_BL, 'num_new': generation.new_tokens(tok_BL, len(self.prompt_P), self.end_id),
            'logprobs': logp_BL}

  def decode_samples(self, samples: dict[str, np.ndarray]) -> dict[str, Any]:
    """The samples as text, each one's mean log-probability per new token, and the records of step_<N>.jsonl.

    {'text': [num strings: prompt and continuation], 'logprob_per_token': float [num], 'records': [num
    {'prompt', 'text' (the continuation), 'tokens' (its ids), 'logprobs' (theirs)}]}; text stops after the end token.
    """
    P = len(self.prompt_P)
    texts, means, records = [], [], []
    for row, lp, n in zip(np.asarray(samples['tokens']), np.asarray(samples['logprobs']), np.asarray(samples['num_new'])):
      new, new_lp = row[P:P + n], lp[P:P + n]
      texts.append(self.tokenizer.decode(row[:P + n]))
      means.append(float(new_lp.mean()))
      records.append({'prompt': self.sample_cfg.prompt, 'text': self.tokenizer.decode(new),
                      'tokens': new.tolist(), 'logprobs': new_lp.tolist()})
    return {'text': texts, 'logprob_per_token': np.array(means), 'records': records}
