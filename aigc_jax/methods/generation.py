"""Decoding a Transformer LM as Hugging Face's `generate` does: greedy, sampling, beam search, left padding.

`generate` draws (temperature, top-k, top-p; temperature 0: greedy) in one jitted program: the
prompts fill the key/value cache in one call, a `lax.scan` then adds one token per step, and past
`block_size` positions a second scan re-reads the last block_size tokens at every step (the
position embedding ends there). Beam search is `beam_search.py`. Both take prompts of different
lengths left-padded to one (`left_pad`), each row's positions counting from its first token, as
transformers' GPT-2 does with an attention mask; both stop a row at the end token and fill it with
that token after (transformers' pad_token_id = eos_token_id of GPT-2), and both ban repeated n-grams.
Shapes: B prompts, P (padded) prompt positions, L = P + new tokens, V tokens, S = block_size.
"""

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from aigc_jax.methods.beam_search import repeated_ngram_tokens
from aigc_jax.models.transformer import Transformer
from aigc_jax.models.transformer import empty_cache


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """int32 [B, P] prompts right-aligned after `pad_id`s, and int32 [B] where each one starts."""
  P = max(len(p) for p in prompts)
  tok_BP = np.full((len(prompts), P), pad_id, np.int32)
  for b, p in enumerate(prompts):
    tok_BP[b, P - len(p):] = p
  return tok_BP, np.array([P - len(p) for p in prompts], np.int32)


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
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, kv_cache: bool = True,
             end_id: int | None = None, no_repeat_ngram_size: int = 0,
             start_B: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """The prompts followed by `length` drawn tokens, int32 [B, P + length], and each token's log-probability.

  The log-probabilities (float32 [B, P + length], 0 at the prompt) are the model's own, at
  temperature 1 and unfiltered: how likely the model finds the text. The token at position q
  is drawn with the key fold_in(rng, q), so both ways of computing the logits draw the same
  tokens. Without `kv_cache` every token re-reads its whole context (the reference the cache
  is checked and timed against). After `end_id` a row holds `end_id` (log-probability 0);
  `no_repeat_ngram_size` n bans a token that would repeat an n-gram of the row; `start_B`
  (int32 [B], with the cache) says where each left-padded prompt starts. P <= block_size.
  """
  B, P = prompt_BP.shape
  L, S = P + length, model.block_size
  tok_BL = jnp.zeros((B, L), jnp.int32).at[:, :P].set(prompt_BP)

  def put(seq, logits_BV, q):
    """Draws the token at position q from `logits_BV` into seq = (tokens, log-probabilities, ended)."""
    tok_BL, logp_BL, ended_B = seq
    if no_repeat_ngram_size:
      banned_BV = repeated_ngram_tokens(tok_BL[:, None], q, no_repeat_ngram_size, logits_BV.shape[-1])[:, 0]
      drawn_BV = jnp.where(banned_BV, -jnp.inf, logits_BV)
    else:
      drawn_BV = logits_BV
    t_B = next_token(drawn_BV, jax.random.fold_in(rng, q), temperature, top_k, top_p)
    logp_B = jnp.take_along_axis(jax.nn.log_softmax(logits_BV.astype(jnp.float32)), t_B[:, None], axis=1)[:, 0]
    if end_id is not None:
      t_B, logp_B = jnp.where(ended_B, end_id, t_B), jnp.where(ended_B, 0.0, logp_B)
      ended_B = ended_B | (t_B == end_id)
    return (jax.lax.dynamic_update_slice_in_dim(tok_BL, t_B[:, None], q, axis=1),
            jax.lax.dynamic_update_slice_in_dim(logp_BL, logp_B[:, None], q, axis=1), ended_B)

  seq = (tok_BL, jnp.zeros((B, L), jnp.float32), jnp.zeros((B,), bool))
  if kv_cache:
    logits_BPV, cache = model.apply({'params': params}, prompt_BP, empty_cache(model, B), 0, start_B,
                                    method=Transformer.decode)
    seq = put(seq, logits_BPV[:, -1], P)

    def cached_step(carry, p):
      """Feeds the token at position p (< S) and draws the one at p + 1."""
      seq, cache = carry
      logits_B1V, cache = model.apply({'params': params}, jax.lax.dynamic_slice_in_dim(seq[0], p, 1, axis=1),
                                      cache, p, start_B, method=Transformer.decode)
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
    window_BS = jax.lax.dynamic_slice_in_dim(seq[0], q - S, S, axis=1)
    if start_B is None:
      logits_BSV = model.apply({'params': params}, window_BS)
    else:  # the padding left in the window
      logits_BSV = model.apply({'params': params}, window_BS, empty_cache(model, B), 0,
                               jnp.maximum(start_B - (q - S), 0), method=Transformer.decode)[0]
    return put(seq, logits_BSV[:, -1], q), None

  if L > S + 1:
    seq, _ = jax.lax.scan(window_step, seq, jnp.arange(S + 1, L))
  return seq[:2]


def new_tokens(tok_BL: jax.Array, P: int, end_id: int | None) -> jax.Array:
  """int32 [B]: the new tokens of each row after its P prompt positions, up to and with its first `end_id`."""
  L = tok_BL.shape[1]
  if end_id is None:
    return jnp.full(tok_BL.shape[:1], L - P, jnp.int32)
  ends_BL = (tok_BL == end_id) & (jnp.arange(L) >= P)
  return jnp.where(ends_BL.any(axis=1), jnp.argmax(ends_BL, axis=1) + 1 - P, L - P).astype(jnp.int32)
