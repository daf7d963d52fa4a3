"""A decoder-only Transformer language model: next-token cross-entropy, and sampling with a KV cache.

Metrics are the mean next-token loss (nats), its perplexity exp(loss), and bits per
character or byte (loss / ln 2, one token being one character or byte). Sampling continues
`sample.prompt` for `sample.length` tokens in one jitted program: the prompt fills the
cache in one call, a `lax.scan` then adds one token per step attending to the cache, and
past `data.block_size` positions a second scan re-reads the last block_size tokens at
every step (the position embedding ends there, so cached keys cannot be reused).
`sample.kv_cache=False` recomputes every token's whole context instead: the slow reference.
`sample.method='beam'` decodes by beam search (`beam_search.py`) instead of sampling.
`lm.objective='masked'` trains a bidirectional masked-token model instead, decoded by
`sample.method='maskgit'` (`masked.py`).
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
from aigc_jax.methods import beam_search
from aigc_jax.methods import masked
from aigc_jax.methods import precision
from aigc_jax.methods.base import Batch
from aigc_jax.methods.base import Method
from aigc_jax.methods.base import Metrics
from aigc_jax.models.transformer import Transformer
from aigc_jax.models.transformer import empty_cache
from aigc_jax.randomness import Rng
from aigc_jax.rules import Rule
from aigc_jax.train.state import TrainState


def next_token(logits_BV: jax.Array, rng: jax.Array, temperature: float, top_k: int,
               top_p: float) -> jax.Array:
  """int32 [B] tokens drawn from softmax(logits / temperature), restricted to the top k and top p.

  temperature 0 takes the most likely token; top_k 0 and top_p 1 leave those filters off.
  Tokens whose logit ties a cutoff are all kept: top_k may keep more than k tokens (as Hugging
  Face's top-k does) and top_p more mass than needed (Hugging Face's top-p keeps a prefix of its sort).
  """
  if temperature == 0:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  logits_BV = logits_BV / temperature
  if top_k:
    kth_B1 = jax.lax.top_k(logits_BV, min(top_k, logits_BV.shape[-1]))[0][:, -1:]
    logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
  if top_p < 1.0:
    sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    # Keep the most likely tokens until their mass reaches top_p (at least one).
    kept_B = jnp.sum(jnp.cumsum(probs_BV, axis=-1) - probs_BV < top_p, axis=-1)
    cutoff_B1 = jnp.take_along_axis(sorted_BV, kept_B[:, None] - 1, axis=-1)
    logits_BV = jnp.where(logits_BV < cutoff_B1, -jnp.inf, logits_BV)
  return jax.random.categorical(rng, logits_BV).astype(jnp.int32)


def generate(model: Transformer, params: Any, prompt_BP: jax.Array, rng: jax.Array, length: int,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             kv_cache: bool = True) -> tuple[jax.Array, jax.Array]:
  """The prompts followed by `length` sampled tokens, int32 [B, P + length], and each token's log-probability.

  The log-probabilities (float32 [B, P + length], 0 at the prompt) are the model's own, at
  temperature 1 and unfiltered: how likely the model finds the text. The token at position q
  is drawn with the key fold_in(rng, q), so both ways of computing the logits draw the same
  tokens. Without `kv_cache` every token re-reads its whole context (the reference the cache
  is checked and timed against). P <= block_size.
  """
  B, P = prompt_BP.shape
  L, S = P + length, model.block_size
  tok_BL = jnp.zeros((B, L), jnp.int32).at[:, :P].set(prompt_BP)

  def put(seq, logits_BV, q):
    """Draws the token at position q from `logits_BV` into seq = (tokens, log-probabilities)."""
    tok_BL, logp_BL = seq
    t_B = next_token(logits_BV, jax.random.fold_in(rng, q), temperature, top_k, top_p)
    logp_B = jnp.take_along_axis(jax.nn.log_softmax(logits_BV.astype(jnp.float32)), t_B[:, None], axis=1)
    return (jax.lax.dynamic_update_slice_in_dim(tok_BL, t_B[:, None], q, axis=1),
            jax.lax.dynamic_update_slice_in_dim(logp_BL, logp_B, q, axis=1))

  seq = (tok_BL, jnp.zeros((B, L), jnp.float32))
  if kv_cache:
    logits_BPV, cache = model.apply({'params': params}, prompt_BP, empty_cache(model, B), 0,
                                    method=Transformer.decode)
    seq = put(seq, logits_BPV[:, -1], P)

    def cached_step(carry, p):
      """Feeds the token at position p (< S) and draws the one at p + 1."""
      seq, cache = carry
      logits_B1V, cache = model.apply({'params': params}, jax.lax.dynamic_slice_in_dim(seq[0], p, 1, axis=1),
                                      cache, p, method=Transformer.decode)
      return (put(seq, logits_B1V[:, 0], p + 1), cache), None

    (seq, _), _ = jax.lax.scan(cached_step, (seq, cache), jnp.arange(P, min(L - 1, S)))
  else:
    def full_step(seq, q):
      """Draws the token at position q (<= S) from all positions before it, recomputed."""
      logits_BTV = model.apply({'params': params}, seq[0][:, :min(L, S)])
      return put(seq, jax.lax.dynamic_index_in_dim(logits_BTV, q - 1, axis=1, keepdims=False), q), None

    seq, _ = jax.lax.scan(full_step, seq, jnp.arange(P, min(L - 1, S) + 1))

  def window_step(seq, q):
    """Draws the token at position q (> S) from the S tokens before it."""
    logits_BSV = model.apply({'params': params}, jax.lax.dynamic_slice_in_dim(seq[0], q - S, S, axis=1))
    return put(seq, logits_BSV[:, -1], q), None

  if L > S + 1:
    seq, _ = jax.lax.scan(window_step, seq, jnp.arange(S + 1, L))
  return seq


class LM(Method):
  """Language modelling: `config.model` sizes the Transformer, `data_info` gives its tokenizer."""

  DATA_KIND = 'text'
  RULES = (
      Rule('model.dtype', lambda c: c.model.dtype in precision.CHOICES,
           lambda c: f'model.dtype={c.model.dtype!r} is unknown: use one of {", ".join(precision.CHOICES)}'),
      Rule('model.num_heads', lambda c: c.model.width % c.model.num_heads == 0,
           'model.num_heads={model.num_heads} must divide model.width={model.width}: change one of them'),
      Rule('model.dropout', lambda c: 0.0 <= c.model.dropout < 1.0, 'model.dropout={model.dropout} must be in [0, 1)'),
      Rule('data.block_size', lambda c: c.data.block_size >= 1,
           'data.block_size={data.block_size} must be positive'),
      Rule('sample.prompt', lambda c: c.sample.prompt or c.sample.method == 'maskgit',
           "sample.prompt is empty: give at least one character to start from, e.g. '\\n'"),
      Rule('sample.length', lambda c: c.sample.length >= 1, 'sample.length={sample.length} must be positive'),
      Rule('sample.temperature', lambda c: c.sample.temperature >= 0,
           'sample.temperature={sample.temperature} must be >= 0 (0: always the most likely token)'),
      Rule('sample.top_k', lambda c: c.sample.top_k >= 0, 'sample.top_k={sample.top_k} must be >= 0 (0: no top-k filter)'),
      Rule('sample.top_p', lambda c: 0.0 < c.sample.top_p <= 1.0,
           'sample.top_p={sample.top_p} must be in (0, 1] (1: no nucleus filter)'),
      Rule('sample.method', lambda c: c.sample.method in ('sample', 'beam', 'maskgit'),
           "sample.method={sample.method!r} is unknown: use 'sample' (temperature / top-k / top-p) or 'beam' "
           "(beam search); a masked model (lm.objective='masked') uses 'maskgit'"),
      Rule('sample.num_beams', lambda c: c.sample.method != 'beam' or c.sample.num_beams >= 1,
           'sample.num_beams={sample.num_beams} must be >= 1'),
      Rule('sample.no_repeat_ngram_size', lambda c: c.sample.method != 'beam' or c.sample.no_repeat_ngram_size >= 0,
           'sample.no_repeat_ngram_size={sample.no_repeat_ngram_size} must be >= 0 (0: no restriction)'),
      *masked.RULES,
  )

  def __init__(self, config: ml_collections.ConfigDict, axis_name: str, data_info: dict[str, str] | None = None,
               parts: dict[str, Any] | None = None):
    """The prompt and end token must be tokens of the data's tokenizer: checked here, once it is known."""
    super().__init__(config, axis_name, data_info, parts)
    self.tokenizer = tokenizers.from_info(data_info)
    self.bits_name = f'bits_per_{self.tokenizer.unit}'
    m = config.model
    is_masked = masked.objective(config) == 'masked'
    self.mask_id = self.tokenizer.vocab_size  # a masked model's [MASK] token, after the tokenizer's
    self.model = Transformer(vocab_size=self.tokenizer.vocab_size + is_masked, block_size=config.data.block_size,
                             num_layers=m.num_layers, num_heads=m.num_heads, width=m.width,
                             dropout=m.dropout, use_bias=m.use_bias, dtype=precision.compute_dtype(m.dtype),
                             causal=not is_masked)
    self.masked = masked.MaskedObjective(config, self.model, self.mask_id, axis_name) if is_masked else None
    s = config.sample
    self.prompt_P = self.tokenizer.encode(s.prompt, what=f'sample.prompt={s.prompt!r}')
    if len(self.prompt_P) > config.data.block_size:
      raise UserError(f'sample.prompt is {len(self.prompt_P)} tokens, longer than data.block_size='
                      f'{config.data.block_size}: shorten it')
    self.canvas_L = (masked.canvas(self.tokenizer, s, self.prompt_P, self.mask_id, config.data.block_size)
                     if s.method == 'maskgit' else None)
    self.end_id = None
    if s.method != 'maskgit' and s.end_token:
      end = self.tokenizer.encode(s.end_token, what=f'sample.end_token={s.end_token!r}')
      if len(end) != 1:
        raise UserError(f'sample.end_token={s.end_token!r} is {len(end)} tokens, not one: give a single '
                        f'{self.tokenizer.unit} (or \'\' for none)')
      self.end_id = int(end[0])
    self.sample_cfg = s

  def init(self, rng: jax.Array) -> tuple[Any, Any]:
    tok_BT = jnp.zeros((1, self.model.block_size), jnp.int32)
    return self.model.init({'params': rng}, tok_BT)['params'], {}

  def _losses(self, params: Any, tokens_BT1: jax.Array, train: bool, rng: jax.Array | None = None) -> jax.Array:
    """Cross-entropy [B, T] of each window's tokens 1..T given the ones before them."""
    rngs = {'dropout': rng} if train else {}
    logits_BTV = self.model.apply({'params': params}, tokens_BT1[:, :-1], train=train, rngs=rngs)
    return optax.softmax_cross_entropy_with_integer_labels(logits_BTV, tokens_BT1[:, 1:])

  def loss(self, params: Any, batch: Batch, rng: Rng, model_state: Any) -> tuple[jax.Array, tuple[Metrics, Any]]:
    """The mean next-token cross-entropy of the batch's windows (dropout masks drawn per device)."""
    if self.masked:
      loss, metrics = self.masked.loss(params, batch['tokens'], rng)
      return loss, (metrics, model_state)
    return self._losses(params, batch['tokens'], True, rng.device()).mean(), ({}, model_state)

  def eval_step(self, state: TrainState, batch: Batch, rng: Rng) -> Metrics:
    """The mean loss of each window under the EMA parameters (no dropout): windows that pad the split weigh 0."""
    if self.masked:  # masks keyed by the eval batch and example: the same every evaluation
      return self.masked.eval_metrics(state.ema_params, batch['tokens'], rng)
    del rng  # evaluation is deterministic
    return {'loss': self._losses(state.ema_params, batch['tokens'], False).mean(axis=1)}

  def summarize(self, means: dict[str, Any]) -> dict[str, Any]:
    """The perplexity exp(loss) and bits per token loss / ln 2 of the mean loss."""
    if self.masked:
      return masked.summarize(means)
    return {**means, 'perplexity': jnp.exp(means['loss']), self.bits_name: means['loss'] / math.log(2.0)}

  def sample(self, state: TrainState, rng: jax.Array, num: int) -> dict[str, jax.Array]:
    """`num` continuations of `sample.prompt` from the EMA parameters.

    {'tokens': int32 [num, P + length], 'num_new': int32 [num] new tokens (fewer where beam
    search stopped at the end token), 'logprob': float32 [num] their summed log-probability
    under the model}. Beam search is deterministic: its `num` continuations are the same one.
    """
    s = self.sample_cfg
    if s.method == 'maskgit':
      def logits_fn(tok_BL):
        return masked.predictions(self.model.apply({'params': state.ema_params}, tok_BL), self.mask_id)

      def draw(logits_NV, key):
        return next_token(logits_NV, key, s.temperature, s.top_k, s.top_p)

      tok_BL, logp_BL, _ = masked.maskgit(logits_fn, self.canvas_L, num, rng, s.steps, draw, s.confidence_noise,
                                          self.mask_id)
      num_new = int(np.sum(self.canvas_L == self.mask_id))
      return {'tokens': tok_BL, 'num_new': jnp.full((num,), num_new, jnp.int32), 'logprob': logp_BL.sum(axis=1)}
    if s.method == 'beam':
      beams = beam_search.beam_search(self.model, state.ema_params, jnp.asarray(self.prompt_P)[None], s.length,
                                      s.num_beams, s.length_penalty, s.no_repeat_ngram_size, self.end_id)
      logprob_B = beams.score_B * beams.num_new_B.astype(jnp.float32) ** s.length_penalty
      return jax.tree.map(lambda x: jnp.repeat(x, num, axis=0),
                          {'tokens': beams.tokens_BL, 'num_new': beams.num_new_B, 'logprob': logprob_B})
    prompt_BP = jnp.tile(jnp.asarray(self.prompt_P)[None], (num, 1))
    tok_BL, logp_BL = generate(self.model, state.ema_params, prompt_BP, rng, s.length,
                               s.temperature, s.top_k, s.top_p, s.kv_cache)
    return {'tokens': tok_BL, 'num_new': jnp.full((num,), s.length, jnp.int32), 'logprob': logp_BL.sum(axis=1)}

  def decode_samples(self, samples: dict[str, np.ndarray]) -> dict[str, Any]:
    """The samples as text, and each one's mean log-probability per new token.

    {'text': [num strings], 'logprob_per_token': float [num]}; text stops after the end token.
    """
    if self.canvas_L is not None:  # maskgit: the whole canvas is the text
      return {'text': [self.tokenizer.decode(row) for row in samples['tokens']],
              'logprob_per_token': np.asarray(samples['logprob']) / np.asarray(samples['num_new'])}
    P = len(self.prompt_P)
    return {'text': [self.tokenizer.decode(row[:P + n]) for row, n in zip(samples['tokens'], samples['num_new'])],
            'logprob_per_token': np.asarray(samples['logprob']) / np.asarray(samples['num_new'])}
