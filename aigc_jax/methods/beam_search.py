"""Beam search for the decoder-only Transformer, step for step as Hugging Face's `generate(num_beams=M)`.

transformers' (>= 4.50, checked against 5.25) vectorized beam search, in one jitted loop: every step
adds each of the M running beams' log-probabilities of every token to the beam's score, and keeps
the best 2M candidates (K = 2M: one end token). Candidates that end (the end token, or the last
position) among the best M are scored sum / (new tokens) ** length_penalty and merged with the
finished hypotheses, of which the best M are kept; the best M candidates that do not end run on.
A token that would repeat an n-gram of the row (prompt and padding included, as transformers
bans them) gets probability 0 (`no_repeat_ngram_size`). A prompt is done when
- `early_stopping=True`: it holds M finished hypotheses;
- `False`: moreover no running beam's score / (new tokens so far) ** length_penalty beats its worst;
- `'never'`: the same with the longest possible length when length_penalty > 0 (canonical beam search);
and all prompts stop together, at the latest after `length` new tokens. Like transformers, scores
that cannot win carry -1e9 rather than -inf (the initial copies of the first beam, closed prompts).

The prompts (left-padded to one length: `start_B`) fill the key/value cache once; the cache is then
copied to the M beams and, every step, reordered to follow each surviving beam's parent. Past
`block_size` positions each step re-reads the last block_size tokens of every beam instead.
Shapes: B prompts, M beams, K = 2M candidates, L = P + length positions, V tokens, S = block_size,
G n-grams.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from aigc_jax.models.transformer import Transformer
from aigc_jax.models.transformer import empty_cache

_CLOSED = 1e9  # transformers' "very large negative" added to scores that must lose


class Beams(NamedTuple):
  """The best hypothesis of each prompt."""
  tokens_BL: jax.Array  # int32: the prompt and the new tokens (after an end token: the end token again)
  num_new_B: jax.Array  # int32: new tokens in it, the end token included
  score_B: jax.Array    # float32: sum of the new tokens' log-probabilities / num_new ** length_penalty
  logprobs_BL: jax.Array  # float32: each new token's log-probability under the model (0 elsewhere)


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


class _Search(NamedTuple):
  """The loop's carry: running beams, finished hypotheses (transformers' `sequences`), per-prompt flags."""
  tok_BML: jax.Array      # running beams' tokens
  lp_BML: jax.Array       # ... and their tokens' log-probabilities
  run_BM: jax.Array       # running beams' summed log-probabilities, best first
  fin_tok_BML: jax.Array  # finished hypotheses' tokens
  fin_lp_BML: jax.Array
  fin_BM: jax.Array       # their penalized scores (-1e9: an empty slot), best first
  fin_len_BM: jax.Array   # their new tokens
  done_BM: jax.Array      # slot holds a finished hypothesis
  open_B: jax.Array       # the running beams may still beat the worst finished one
  hits_BK: jax.Array      # the last step's candidates that ended
  cache: Any


def beam_search(model: Transformer, params: Any, prompt_BP: jax.Array, length: int, num_beams: int,
                length_penalty: float = 1.0, no_repeat_ngram_size: int = 0, end_id: int | None = None,
                early_stopping: bool | str = True, start_B: jax.Array | None = None) -> Beams:
  """The best continuation of at most `length` tokens of each prompt under `num_beams`-beam search.

  `end_id` (optional) is the token that ends a hypothesis early, and fills the positions after it.
  `start_B` (int32 [B], optional): row b of `prompt_BP` is left padding before start_B[b]. P <= block_size.
  """
  if early_stopping not in (True, False, 'never'):
    raise ValueError(f"early_stopping={early_stopping!r}: use True, False or 'never'")
  B, P = prompt_BP.shape
  M, K, L, S, V = num_beams, 2 * num_beams, P + length, model.block_size, model.vocab_size
  fill = end_id if end_id is not None else 0
  start_BM = None if start_B is None else jnp.repeat(start_B, M)
  at = jnp.arange(L)

  def expand(c: _Search, logits_BMV: jax.Array, q: jax.Array) -> _Search:
    """Chooses the token at position q (transformers' cur_len) of every beam."""
    logp_BMV = jax.nn.log_softmax(logits_BMV.astype(jnp.float32), axis=-1)
    scored_BMV = logp_BMV
    if no_repeat_ngram_size:
      scored_BMV = jnp.where(repeated_ngram_tokens(c.tok_BML, q, no_repeat_ngram_size, V), -jnp.inf, logp_BMV)
    top_BK, flat_BK = jax.lax.top_k((scored_BMV + c.run_BM[:, :, None]).reshape(B, M * V), K)
    parent_BK, token_BK = flat_BK // V, flat_BK % V
    tok_BKL = jnp.where(at == q, token_BK[:, :, None], _gather_beams(c.tok_BML, parent_BK))
    token_lp_BK = jnp.take_along_axis(logp_BMV.reshape(B, M * V), flat_BK, axis=1)
    lp_BKL = jnp.where(at == q, token_lp_BK[:, :, None], _gather_beams(c.lp_BML, parent_BK))
    hits_BK = (q + 1 >= L) | ((token_BK == end_id) if end_id is not None else jnp.zeros((B, K), bool))

    # The best M candidates that do not end run on.
    run_BM, pick_BM = jax.lax.top_k(top_BK - _CLOSED * hits_BK, M)
    parent_BM = jnp.take_along_axis(parent_BK, pick_BM, axis=1)
    cache = jax.tree.map(lambda x: x[(jnp.arange(B)[:, None] * M + parent_BM).reshape(-1)], c.cache)

    # Ending candidates among the best M join the finished hypotheses, unless the prompt is closed.
    just_BK = hits_BK & (jnp.arange(K) < M)
    cand_BK = top_BK / (q + 1 - P).astype(jnp.float32) ** length_penalty
    full_B = jnp.all(c.done_BM, axis=1) & (early_stopping is True)
    cand_BK = cand_BK - _CLOSED * full_B[:, None] - _CLOSED * ~c.open_B[:, None] - _CLOSED * ~just_BK
    fin_BM, best_BM = jax.lax.top_k(jnp.concatenate([c.fin_BM, cand_BK], axis=1), M)
    merge = lambda old, new: _gather_beams(jnp.concatenate([old, new], axis=1), best_BM)
    fin_len = merge(c.fin_len_BM, jnp.broadcast_to(q + 1 - P, (B, K)))
    c = _Search(_gather_beams(tok_BKL, pick_BM), _gather_beams(lp_BKL, pick_BM), run_BM,
                merge(c.fin_tok_BML, tok_BKL), merge(c.fin_lp_BML, lp_BKL), fin_BM, fin_len,
                merge(c.done_BM, just_BK), c.open_B, hits_BK, cache)

    # Whether a running beam could still beat the worst finished hypothesis (transformers' heuristic).
    new = (L - P) if (early_stopping == 'never' and length_penalty > 0) else (q + 1 - P)
    best_B = c.run_BM[:, 0] / jnp.asarray(new, jnp.float32) ** length_penalty
    worst_BM = jnp.where(c.done_BM, jnp.min(c.fin_BM, axis=1, keepdims=True), -_CLOSED)
    return c._replace(open_B=c.open_B & jnp.any(best_B[:, None] > worst_BM, axis=1))

  def running(c: _Search) -> jax.Array:
    """transformers' `_beam_search_has_unfinished_sequences`."""
    full = jnp.all(c.done_BM) & (early_stopping is True)
    return jnp.any(c.open_B) & ~full & ~jnp.all(c.hits_BK)

  logits_BPV, cache = model.apply({'params': params}, prompt_BP, empty_cache(model, B), 0, start_B,
                                  method=Transformer.decode)
  cache = jax.tree.map(lambda x: jnp.repeat(x, M, axis=0), cache)  # beam k of prompt b at row b * M + k
  tok_BML = jnp.full((B, M, L), fill, jnp.int32).at[:, :, :P].set(prompt_BP[:, None])
  zeros_BML = jnp.zeros((B, M, L), jnp.float32)
  run_BM = jnp.tile(jnp.where(jnp.arange(M) == 0, 0.0, -_CLOSED), (B, 1))  # one live beam until the first choice
  c = _Search(tok_BML, zeros_BML, run_BM, tok_BML, zeros_BML, jnp.full((B, M), -_CLOSED), jnp.zeros((B, M), jnp.int32),
              jnp.zeros((B, M), bool), jnp.ones((B,), bool), jnp.zeros((B, K), bool), cache)
  c = expand(c, jnp.broadcast_to(logits_BPV[:, None, -1], (B, M, V)), jnp.int32(P))

  def cached_step(state):
    """Feeds every beam's token at q - 1 (< S) through the cache and chooses the one at q."""
    c, q = state
    tok_BM1 = jax.lax.dynamic_slice_in_dim(c.tok_BML, q - 1, 1, axis=2).reshape(B * M, 1)
    logits_BM1V, cache = model.apply({'params': params}, tok_BM1, c.cache, q - 1, start_BM, method=Transformer.decode)
    return expand(c._replace(cache=cache), logits_BM1V.reshape(B, M, V), q), q + 1

  c, q = jax.lax.while_loop(lambda s: running(s[0]) & (s[1] <= S), cached_step, (c, jnp.int32(P + 1)))

  def window_step(state):
    """Chooses the token at q (> S) from the S tokens before it, recomputed for every beam."""
    c, q = state
    window_BMS = jax.lax.dynamic_slice_in_dim(c.tok_BML, q - S, S, axis=2).reshape(B * M, S)
    if start_BM is None:
      logits_BMV = model.apply({'params': params}, window_BMS)[:, -1]
    else:  # the padding left in the window
      logits_BMV = model.apply({'params': params}, window_BMS, empty_cache(model, B * M), 0,
                               jnp.maximum(start_BM - (q - S), 0), method=Transformer.decode)[0][:, -1]
    return expand(c, logits_BMV.reshape(B, M, V), q), q + 1

  if L > S + 1:
    c, _ = jax.lax.while_loop(lambda s: running(s[0]), window_step, (c._replace(cache=()), q))
  num_new_B = c.fin_len_BM[:, 0]
  logprobs_BL = jnp.where(at < P + num_new_B[:, None], c.fin_lp_BML[:, 0], 0.0)
  return Beams(c.fin_tok_BML[:, 0], num_new_B, c.fin_BM[:, 0], logprobs_BL)
