"""Beam search for the decoder-only Transformer: the K most likely continuations, one jitted loop.

As in the GPT-2 decoding of Hugging Face's `generate(num_beams=K, no_repeat_ngram_size=n,
early_stopping=True)`: every step extends each of the K running beams of a prompt by every
token, scores the candidates by the sum of their tokens' log-probabilities, and keeps the best
2K; those ending in the end token (among the best K) become finished hypotheses scored by
sum / (new tokens) ** length_penalty, the best K others run on. A token that would repeat
an n-gram already in the sequence (prompt included) is never chosen. A prompt stops when it
holds K finished hypotheses; at `length` new tokens its running beams count as finished too,
and the best hypothesis is returned.

The prompt fills the key/value cache once; the cache is then copied to the K beams and,
every step, reordered to follow each surviving beam's parent. Past `block_size` positions
each step re-reads the last block_size tokens of every beam instead (as sampling does).
Shapes: B prompts, K beams, L = P + length positions, V tokens, S = block_size.
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


def repeated_ngram_tokens(tok_BKL: jax.Array, q: jax.Array | int, n: int, vocab_size: int) -> jax.Array:
  """bool [B, K, V]: the tokens that, put at position q, would repeat an n-gram of positions < q."""
  B, K, L = tok_BKL.shape
  if n < 1 or L < n:
    return jnp.zeros((B, K, vocab_size), bool)
  starts = jnp.arange(L - n + 1)
  seen_BKI = jnp.broadcast_to(starts <= q - n, (B, K, L - n + 1))  # n-grams that end before q
  prefix_BKJ = jax.lax.dynamic_slice_in_dim(tok_BKL, jnp.maximum(q - n + 1, 0), n - 1, axis=2)
  for j in range(n - 1):  # an earlier n-gram whose first n-1 tokens are the last n-1 before q
    seen_BKI &= tok_BKL[:, :, j:j + L - n + 1] == prefix_BKJ[:, :, j:j + 1]
  following_BKI = tok_BKL[:, :, n - 1:]
  banned = jnp.zeros((B, K, vocab_size), jnp.int32).at[
      jnp.arange(B)[:, None, None], jnp.arange(K)[None, :, None], following_BKI].max(seen_BKI.astype(jnp.int32))
  return banned > 0


def _gather_beams(x_BK: jax.Array, idx_BJ: jax.Array) -> jax.Array:
  """x[b, idx[b, j], ...] for every prompt b: [B, J, ...]."""
  return jax.vmap(lambda x, i: x[i])(x_BK, idx_BJ)


def beam_search(model: Transformer, params: Any, prompt_BP: jax.Array, length: int, num_beams: int,
                length_penalty: float = 1.0, no_repeat_ngram_size: int = 0,
                end_id: int | None = None) -> Beams:
  """The most likely continuation of `length` tokens of each prompt under `num_beams`-beam search.

  `end_id` (optional) is the token that ends a hypothesis early; P <= block_size.
  """
  B, P = prompt_BP.shape
  K, L, S, V = num_beams, P + length, model.block_size, model.vocab_size
  neg_inf = jnp.float32(-jnp.inf)

  def penalized(logp, num_new):
    return logp / jnp.asarray(num_new, jnp.float32) ** length_penalty

  def expand(carry, logits_BKV, q):
    """Chooses the token at position q for every beam: new running beams and finished hypotheses."""
    tok_BKL, run_BK, fin_tok_BKL, fin_BK, fin_len_BK, cache = carry
    logp_BKV = jax.nn.log_softmax(logits_BKV.astype(jnp.float32), axis=-1)
    if no_repeat_ngram_size:
      logp_BKV = jnp.where(repeated_ngram_tokens(tok_BKL, q, no_repeat_ngram_size, V), neg_inf, logp_BKV)
    top_B2K, flat_B2K = jax.lax.top_k((run_BK[:, :, None] + logp_BKV).reshape(B, K * V), 2 * K)
    parent_B2K, token_B2K = flat_B2K // V, flat_B2K % V
    ends_B2K = (token_B2K == end_id) if end_id is not None else jnp.zeros_like(token_B2K, bool)
    at_q = jnp.arange(L) == q

    # The best K candidates that do not end run on.
    run_BK, pick_BK = jax.lax.top_k(jnp.where(ends_B2K, neg_inf, top_B2K), K)
    parent_BK = jnp.take_along_axis(parent_B2K, pick_BK, axis=1)
    token_BK = jnp.take_along_axis(token_B2K, pick_BK, axis=1)
    new_tok_BKL = jnp.where(at_q, token_BK[:, :, None], _gather_beams(tok_BKL, parent_BK))
    flat_parent = (jnp.arange(B)[:, None] * K + parent_BK).reshape(-1)
    cache = jax.tree.map(lambda x: x[flat_parent], cache)

    if end_id is not None:  # ending candidates among the best K join the finished hypotheses of unfinished prompts
      done_B = jnp.sum(fin_BK > neg_inf, axis=1) >= K
      keep_B2K = ends_B2K & (jnp.arange(2 * K) < K) & ~done_B[:, None]
      cand_B2K = jnp.where(keep_B2K, penalized(top_B2K, q - P + 1), neg_inf)
      cand_tok_B2KL = jnp.where(at_q, end_id, _gather_beams(tok_BKL, parent_B2K))
      fin_BK, best_B3K = jax.lax.top_k(jnp.concatenate([fin_BK, cand_B2K], axis=1), K)
      fin_tok_BKL = _gather_beams(jnp.concatenate([fin_tok_BKL, cand_tok_B2KL], axis=1), best_B3K)
      fin_len_BK = _gather_beams(jnp.concatenate([fin_len_BK, jnp.full((B, 2 * K), q - P + 1)], axis=1), best_B3K)
    return new_tok_BKL, run_BK, fin_tok_BKL, fin_BK, fin_len_BK, cache

  def running(carry, q):
    """More tokens to choose, and some prompt without K finished hypotheses."""
    return (q < L) & jnp.any(jnp.sum(carry[3] > neg_inf, axis=1) < K)

  logits_BPV, cache = model.apply({'params': params}, prompt_BP, empty_cache(model, B), 0,
                                  method=Transformer.decode)
  cache = jax.tree.map(lambda x: jnp.repeat(x, K, axis=0), cache)  # beam k of prompt b at row b * K + k
  tok_BKL = jnp.zeros((B, K, L), jnp.int32).at[:, :, :P].set(prompt_BP[:, None])
  run_BK = jnp.tile(jnp.where(jnp.arange(K) == 0, 0.0, neg_inf), (B, 1))  # one live beam until the first choice
  carry = (tok_BKL, run_BK, tok_BKL, jnp.full((B, K), neg_inf), jnp.zeros((B, K), jnp.int32), cache)
  carry = expand(carry, jnp.broadcast_to(logits_BPV[:, None, -1], (B, K, V)), P)

  def cached_step(state):
    """Feeds every beam's token at q - 1 (< S) through the cache and chooses the one at q."""
    carry, q = state
    tok_BK1 = jax.lax.dynamic_slice_in_dim(carry[0], q - 1, 1, axis=2).reshape(B * K, 1)
    logits_BK1V, cache = model.apply({'params': params}, tok_BK1, carry[5], q - 1, method=Transformer.decode)
    return expand(carry[:5] + (cache,), logits_BK1V.reshape(B, K, V), q), q + 1

  carry, q = jax.lax.while_loop(lambda s: running(s[0], s[1]) & (s[1] <= S), cached_step, (carry, jnp.int32(P + 1)))

  def window_step(state):
    """Chooses the token at q (> S) from the S tokens before it, recomputed for every beam."""
    carry, q = state
    window_BKS = jax.lax.dynamic_slice_in_dim(carry[0], q - S, S, axis=2).reshape(B * K, S)
    logits_BKV = model.apply({'params': params}, window_BKS)[:, -1].reshape(B, K, V)
    return expand(carry, logits_BKV, q), q + 1

  if L > S + 1:
    carry, _ = jax.lax.while_loop(lambda s: running(s[0], s[1]), window_step, (carry[:5] + ((),), q))
  tok_BKL, run_BK, fin_tok_BKL, fin_BK, fin_len_BK, _ = carry

  # Prompts still running at full length count their running beams as finished hypotheses.
  done_B = jnp.sum(fin_BK > neg_inf, axis=1) >= K
  all_B2K = jnp.concatenate([fin_BK, jnp.where(done_B[:, None], neg_inf, penalized(run_BK, length))], axis=1)
  all_len_B2K = jnp.concatenate([fin_len_BK, jnp.full((B, K), length)], axis=1)
  all_tok_B2KL = jnp.concatenate([fin_tok_BKL, tok_BKL], axis=1)
  best_B1 = jnp.argmax(all_B2K, axis=1)[:, None]
  num_new_B = jnp.take_along_axis(all_len_B2K, best_B1, axis=1)[:, 0]
  tokens_BL = _gather_beams(all_tok_B2KL, best_B1)[:, 0]
  if end_id is not None:  # a hypothesis that ended: the end token repeated to the full length
    tokens_BL = jnp.where(jnp.arange(L) >= P + num_new_B[:, None], end_id, tokens_BL)
  return Beams(tokens_BL, num_new_B, jnp.take_along_axis(all_B2K, best_B1, axis=1)[:, 0])
