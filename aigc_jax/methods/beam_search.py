"""Beam search for the decoder-only Transformer: the M most likely continuations, one jitted loop.

As in the GPT-2 decoding of Hugging Face's `generate(num_beams=M, no_repeat_ngram_size=n,
early_stopping=True)`: every step extends each of the M running beams of a prompt by every
token, scores the candidates by the sum of their tokens' log-probabilities, and keeps the best
2M; those ending in the end token (among the best M) become finished hypotheses scored by
sum / (new tokens) ** length_penalty, the best M others run on. A token that would repeat
an n-gram already in the sequence (prompt included) is never chosen. A prompt stops when it
holds M finished hypotheses; at `length` new tokens its running beams count as finished too,
and the best hypothesis is returned.

The prompt fills the key/value cache once; the cache is then copied to the M beams and,
every step, reordered to follow each surviving beam's parent. Past `block_size` positions
each step re-reads the last block_size tokens of every beam instead (as sampling does).
Shapes: B prompts, M beams, L = P + length positions, V tokens, S = block_size, G n-grams.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from aigc_jax.models.transformer import Transformer
from aigc_jax.models.transformer import empty_cache


class Beams(NamedTuple):
  """The best hypothesis of each prompt."""
  tokens_BL: jax.Array  # int32: the prompt and the new tokens (after an end token: the end token again)
  num_new_B: jax.Array  # int32: new tokens in it, the end token included
  score_B: jax.Array    # float32: sum of the new tokens' log-probabilities / num_new ** length_penalty


def repeated_ngram_tokens(tok_BML: jax.Array, q: jax.Array | int, n: int, vocab_size: int) -> jax.Array:
  """bool [B, M, V]: the tokens that, put at position q, would repeat an n-gram of positions < q."""
  B, M, L = tok_BML.shape
  if n < 1 or L < n:
    return jnp.zeros((B, M, vocab_size), bool)
  starts = jnp.arange(L - n + 1)
  seen_BMG = jnp.broadcast_to(starts <= q - n, (B, M, L - n + 1))  # n-grams that end before q
  tail = jax.lax.dynamic_slice_in_dim(tok_BML, jnp.maximum(q - n + 1, 0), n - 1, axis=2)  # [B, M, n - 1]
  for j in range(n - 1):  # an earlier n-gram whose first n-1 tokens are the last n-1 before q
    seen_BMG &= tok_BML[:, :, j:j + L - n + 1] == tail[:, :, j:j + 1]
  following_BMG = tok_BML[:, :, n - 1:]
  banned = jnp.zeros((B, M, vocab_size), jnp.int32).at[
      jnp.arange(B)[:, None, None], jnp.arange(M)[None, :, None], following_BMG].max(seen_BMG.astype(jnp.int32))
  return banned > 0


def _gather_beams(x_BM: jax.Array, idx_BM: jax.Array) -> jax.Array:
  """x[b, idx[b, j], ...] for every prompt b: [B, J, ...]."""
  return jax.vmap(lambda x, i: x[i])(x_BM, idx_BM)


def beam_search(model: Transformer, params: Any, prompt_BP: jax.Array, length: int, num_beams: int,
                length_penalty: float = 1.0, no_repeat_ngram_size: int = 0,
                end_id: int | None = None) -> Beams:
  """The most likely continuation of `length` tokens of each prompt under `num_beams`-beam search.

  `end_id` (optional) is the token that ends a hypothesis early; P <= block_size.
  """
  B, P = prompt_BP.shape
  M, L, S, V = num_beams, P + length, model.block_size, model.vocab_size
  neg_inf = jnp.float32(-jnp.inf)

  def penalized(logp, num_new):
    return logp / jnp.asarray(num_new, jnp.float32) ** length_penalty

  def expand(carry, logits_BMV, q):
    """Chooses the token at position q for every beam: new running beams and finished hypotheses."""
    tok_BML, run_BM, fin_tok_BML, fin_BM, fin_len_BM, cache = carry
    logp_BMV = jax.nn.log_softmax(logits_BMV.astype(jnp.float32), axis=-1)
    if no_repeat_ngram_size:
      logp_BMV = jnp.where(repeated_ngram_tokens(tok_BML, q, no_repeat_ngram_size, V), neg_inf, logp_BMV)
    top_B2M, flat_B2M = jax.lax.top_k((run_BM[:, :, None] + logp_BMV).reshape(B, M * V), 2 * M)
    parent_B2M, token_B2M = flat_B2M // V, flat_B2M % V
    ends_B2M = (token_B2M == end_id) if end_id is not None else jnp.zeros_like(token_B2M, bool)
    at_q = jnp.arange(L) == q

    # The best M candidates that do not end run on.
    run_BM, pick_BM = jax.lax.top_k(jnp.where(ends_B2M, neg_inf, top_B2M), M)
    parent_BM = jnp.take_along_axis(parent_B2M, pick_BM, axis=1)
    token_BM = jnp.take_along_axis(token_B2M, pick_BM, axis=1)
    new_tok_BML = jnp.where(at_q, token_BM[:, :, None], _gather_beams(tok_BML, parent_BM))
    flat_parent = (jnp.arange(B)[:, None] * M + parent_BM).reshape(-1)
    cache = jax.tree.map(lambda x: x[flat_parent], cache)

    if end_id is not None:  # ending candidates among the best M join the finished hypotheses of unfinished prompts
      done_B = jnp.sum(fin_BM > neg_inf, axis=1) >= M
      keep_B2M = ends_B2M & (jnp.arange(2 * M) < M) & ~done_B[:, None]
      cand_B2M = jnp.where(keep_B2M, penalized(top_B2M, q - P + 1), neg_inf)
      cand_tok_B2ML = jnp.where(at_q, end_id, _gather_beams(tok_BML, parent_B2M))
      fin_BM, best_B3M = jax.lax.top_k(jnp.concatenate([fin_BM, cand_B2M], axis=1), M)
      fin_tok_BML = _gather_beams(jnp.concatenate([fin_tok_BML, cand_tok_B2ML], axis=1), best_B3M)
      fin_len_BM = _gather_beams(jnp.concatenate([fin_len_BM, jnp.full((B, 2 * M), q - P + 1)], axis=1), best_B3M)
    return new_tok_BML, run_BM, fin_tok_BML, fin_BM, fin_len_BM, cache

  def running(carry, q):
    """More tokens to choose, and some prompt without M finished hypotheses."""
    return (q < L) & jnp.any(jnp.sum(carry[3] > neg_inf, axis=1) < M)

  logits_BPV, cache = model.apply({'params': params}, prompt_BP, empty_cache(model, B), 0,
                                  method=Transformer.decode)
  cache = jax.tree.map(lambda x: jnp.repeat(x, M, axis=0), cache)  # beam k of prompt b at row b * M + k
  tok_BML = jnp.zeros((B, M, L), jnp.int32).at[:, :, :P].set(prompt_BP[:, None])
  run_BM = jnp.tile(jnp.where(jnp.arange(M) == 0, 0.0, neg_inf), (B, 1))  # one live beam until the first choice
  carry = (tok_BML, run_BM, tok_BML, jnp.full((B, M), neg_inf), jnp.zeros((B, M), jnp.int32), cache)
  carry = expand(carry, jnp.broadcast_to(logits_BPV[:, None, -1], (B, M, V)), P)

  def cached_step(state):
    """Feeds every beam's token at q - 1 (< S) through the cache and chooses the one at q."""
    carry, q = state
    tok_BM1 = jax.lax.dynamic_slice_in_dim(carry[0], q - 1, 1, axis=2).reshape(B * M, 1)
    logits_BM1V, cache = model.apply({'params': params}, tok_BM1, carry[5], q - 1, method=Transformer.decode)
    return expand(carry[:5] + (cache,), logits_BM1V.reshape(B, M, V), q), q + 1

  carry, q = jax.lax.while_loop(lambda s: running(s[0], s[1]) & (s[1] <= S), cached_step, (carry, jnp.int32(P + 1)))

  def window_step(state):
    """Chooses the token at q (> S) from the S tokens before it, recomputed for every beam."""
    carry, q = state
    window_BMS = jax.lax.dynamic_slice_in_dim(carry[0], q - S, S, axis=2).reshape(B * M, S)
    logits_BMV = model.apply({'params': params}, window_BMS)[:, -1].reshape(B, M, V)
    return expand(carry, logits_BMV, q), q + 1

  if L > S + 1:
    carry, _ = jax.lax.while_loop(lambda s: running(s[0], s[1]), window_step, (carry[:5] + ((),), q))
  tok_BML, run_BM, fin_tok_BML, fin_BM, fin_len_BM, _ = carry

  # Prompts still running at full length count their running beams as finished hypotheses.
  done_B = jnp.sum(fin_BM > neg_inf, axis=1) >= M
  all_B2M = jnp.concatenate([fin_BM, jnp.where(done_B[:, None], neg_inf, penalized(run_BM, length))], axis=1)
  all_len_B2M = jnp.concatenate([fin_len_BM, jnp.full((B, M), length)], axis=1)
  all_tok_B2ML = jnp.concatenate([fin_tok_BML, tok_BML], axis=1)
  best_B1 = jnp.argmax(all_B2M, axis=1)[:, None]
  num_new_B = jnp.take_along_axis(all_len_B2M, best_B1, axis=1)[:, 0]
  tokens_BL = _gather_beams(all_tok_B2ML, best_B1)[:, 0]
  if end_id is not None:  # a hypothesis that ended: the end token repeated to the full length
    tokens_BL = jnp.where(jnp.arange(L) >= P + num_new_B[:, None], end_id, tokens_BL)
  return Beams(tokens_BL, num_new_B, jnp.take_along_axis(all_B2M, best_B1, axis=1)[:, 0])
