"""Beam search for the LM: greedy with one beam, exact with enough beams, scores that are the
sequences' log-probabilities, no repeated n-grams, independent prompts, early stopping."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aigc_jax.methods import generation
from aigc_jax.methods.beam_search import beam_search
from aigc_jax.methods.beam_search import repeated_ngram_tokens
from aigc_jax.models.transformer import Transformer

BLOCK = 16
V = 11
PROMPTS = np.array([[1, 2, 3], [4, 4, 0], [7, 5, 9]], np.int32)


@pytest.fixture(scope='module')
def model_and_params():
  """A tiny Transformer with random weights and its jitted full forward."""
  model = Transformer(vocab_size=V, block_size=BLOCK, num_layers=2, num_heads=2, width=32)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, BLOCK), jnp.int32))['params']
  return model, params, jax.jit(lambda p, tok: model.apply({'params': p}, tok))


def _search(model, params, prompts, length, num_beams, **kw):
  fn = jax.jit(lambda p, pr: beam_search(model, p, pr, length, num_beams, **kw))
  return jax.device_get(fn(params, prompts))


def _token_logprobs(forward, params, seq, start, n):
  """log p(seq[q] | up to BLOCK tokens before it) for q in start..start+n-1, each from a fresh forward pass."""
  out = []
  for q in range(start, start + n):
    ctx = seq[max(0, q - BLOCK):q]
    padded = np.zeros((1, BLOCK), np.int32)
    padded[0, :len(ctx)] = ctx
    out.append(float(jax.nn.log_softmax(forward(params, padded)[0, len(ctx) - 1])[seq[q]]))
  return np.array(out)


@pytest.mark.parametrize('length', [5, BLOCK + 4])  # within the context; its last 4 tokens by the sliding window
def test_one_beam_is_greedy_decoding(model_and_params, length):
  model, params, _ = model_and_params
  beams = _search(model, params, PROMPTS, length, 1)
  greedy, _ = jax.jit(lambda p, pr: generation.generate(model, p, pr, jax.random.PRNGKey(0), length, temperature=0.0))(
      params, PROMPTS)
  np.testing.assert_array_equal(beams.tokens_BL, greedy)
  assert np.all(beams.num_new_B == length)


def test_enough_beams_find_the_most_likely_continuation(model_and_params):
  """With as many beams as tokens, two steps of beam search cover every pair: it is exhaustive."""
  model, params, forward = model_and_params
  prompt = PROMPTS[:1]
  pairs = np.array(list(itertools.product(range(V), repeat=2)), np.int32)
  seqs = np.concatenate([np.repeat(prompt, len(pairs), axis=0), pairs], axis=1)
  logp = jax.nn.log_softmax(forward(params, np.pad(seqs, ((0, 0), (0, BLOCK - 5)))), axis=-1)
  total = np.asarray(logp[np.arange(len(seqs)), 2, seqs[:, 3]] + logp[np.arange(len(seqs)), 3, seqs[:, 4]])
  beams = _search(model, params, prompt, 2, V)
  np.testing.assert_array_equal(beams.tokens_BL[0], seqs[np.argmax(total)])
  np.testing.assert_allclose(beams.score_B[0], total.max() / 2, rtol=1e-5)


@pytest.mark.parametrize('length_penalty', [1.0, 0.6])
def test_score_is_the_sum_of_token_log_probabilities_with_the_length_penalty(model_and_params, length_penalty):
  model, params, forward = model_and_params
  length = BLOCK + 3
  free = _search(model, params, PROMPTS, length, 4, length_penalty=length_penalty)
  end_id = int(free.tokens_BL[0, 3 + 2])  # a token the best continuation of the first prompt uses early
  ended = _search(model, params, PROMPTS, length, 4, length_penalty=length_penalty, end_id=end_id)
  assert ended.num_new_B.min() < length  # some hypothesis stopped at the end token
  for beams in (free, ended):
    for seq, n, score in zip(beams.tokens_BL, beams.num_new_B, beams.score_B):
      logp = _token_logprobs(forward, params, seq, 3, int(n))
      np.testing.assert_allclose(score, logp.sum() / n ** length_penalty, rtol=1e-4)
  for seq, n in zip(ended.tokens_BL, ended.num_new_B):
    new = seq[3:]
    if n < length:  # an ended hypothesis: the end token first at its last position, then repeated
      assert new[n - 1] == end_id and end_id not in new[:n - 1] and np.all(new[n:] == end_id)
    else:
      assert end_id not in new


@pytest.mark.parametrize('n', [1, 2, 3])
def test_no_ngram_repeats_in_any_output(model_and_params, n):
  model, params, _ = model_and_params
  length = {1: V - 4, 2: BLOCK + 4, 3: BLOCK + 4}[n]  # 1-grams: only the V - 3 unused tokens are left
  prompts = PROMPTS[[0, 2]]  # prompts without a repeated token
  beams = _search(model, params, prompts, length, 3, no_repeat_ngram_size=n)
  unrestricted = _search(model, params, prompts, length, 3)
  for seq in beams.tokens_BL:
    grams = [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]
    assert len(grams) == len(set(grams)), seq
  assert any(len({tuple(s[i:i + n]) for i in range(len(s) - n + 1)}) < len(s) - n + 1
             for s in unrestricted.tokens_BL)  # without the restriction some n-gram does repeat


def test_repeated_ngram_tokens_bans_what_would_complete_a_seen_ngram():
  tok = jnp.array([[[1, 2, 3, 1, 2, 0, 0]]])
  banned = np.asarray(repeated_ngram_tokens(tok, 5, 3, 5))[0, 0]  # next after (1, 2): 3 would repeat (1, 2, 3)
  np.testing.assert_array_equal(np.flatnonzero(banned), [3])
  banned = np.asarray(repeated_ngram_tokens(tok, 4, 2, 5))[0, 0]  # after 1: 2 would repeat (1, 2)
  np.testing.assert_array_equal(np.flatnonzero(banned), [2])
  assert not np.asarray(repeated_ngram_tokens(tok, 3, 3, 5)).any()  # (2, 3) has not been followed yet


def test_beams_of_a_batch_of_prompts_do_not_mix(model_and_params):
  model, params, _ = model_and_params
  kw = dict(length_penalty=0.8, no_repeat_ngram_size=2, end_id=6)
  together = _search(model, params, PROMPTS, BLOCK + 2, 4, **kw)
  for b in range(len(PROMPTS)):
    alone = _search(model, params, PROMPTS[b:b + 1], BLOCK + 2, 4, **kw)
    np.testing.assert_array_equal(together.tokens_BL[b], alone.tokens_BL[0])
    assert together.num_new_B[b] == alone.num_new_B[0]
    np.testing.assert_allclose(together.score_B[b], alone.score_B[0], rtol=1e-5)


def test_sampled_tokens_come_with_their_log_probabilities(model_and_params):
  model, params, forward = model_and_params
  length = BLOCK + 2
  tok, logp = jax.jit(lambda p, pr: generation.generate(model, p, pr, jax.random.PRNGKey(2), length, temperature=0.8,
                                                top_k=4))(params, PROMPTS)
  assert np.all(np.asarray(logp)[:, :3] == 0)
  for seq, lp in zip(np.asarray(tok), np.asarray(logp)):
    np.testing.assert_allclose(lp[3:], _token_logprobs(forward, params, seq, 3, length), atol=1e-4)
