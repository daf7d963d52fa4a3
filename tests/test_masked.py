"""Masked-token modelling and MaskGIT decoding (methods/masked.py): bidirectional attention, the loss at
masked positions only, the mask schedules, decoding's order and fixed positions, the pseudo-log-likelihood,
the 4-device step, and a run that trains, evaluates and infills end to end."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aigc_jax import data
from aigc_jax import methods
from aigc_jax.data import text
from aigc_jax.errors import UserError
from aigc_jax.methods import generation
from aigc_jax.methods import lm
from aigc_jax.methods import masked
from aigc_jax.models.transformer import Transformer
from aigc_jax.models.transformer import causal_attention
from aigc_jax.models.transformer import empty_cache
from aigc_jax.train import loop
from aigc_jax.train import nonfinite
from aigc_jax.train import parallel
from configs import mlm_shakespeare_cpu
from tests.conftest import shrink_training
from tests.test_lm import SONNET
from tests.test_lm import _info
from tests.test_lm import _step_run
from tests.test_lm import sonnet_file  # noqa: F401 (a fixture)

BLOCK = 16
V = 11  # real tokens; id V is [MASK]


def tiny_mlm_config(text_file: str):
  """mlm_shakespeare_cpu shrunk to compile and run in seconds: 1 layer of width 32, context 16."""
  config = shrink_training(mlm_shakespeare_cpu.get_config())
  config.data.text_file = text_file
  config.data.block_size = BLOCK
  config.model.update({'num_layers': 1, 'num_heads': 2, 'width': 32})
  config.lm.update({'pll_positions': 4, 'replace_random': 0.1, 'replace_keep': 0.1})  # BERT's 80/10/10 as well
  config.training.update({'sample_every': 0, 'checkpoint_every': 4})
  config.sample.update({'num': 3, 'length': BLOCK - 2, 'prompt': 'Sh', 'steps': 4})
  config.eval.num_batches = 1
  return config


@pytest.fixture
def config(sonnet_file):
  return tiny_mlm_config(sonnet_file)


@pytest.fixture(scope='module')
def bidirectional():
  """A tiny bidirectional Transformer over V tokens and [MASK], random weights, and its jitted real-token logits."""
  model = Transformer(vocab_size=V + 1, block_size=BLOCK, num_layers=1, num_heads=2, width=32, causal=False)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, BLOCK), jnp.int32))['params']
  logits = jax.jit(lambda tok: masked.predictions(model.apply({'params': params}, tok), V))
  return model, params, logits


def test_attention_is_bidirectional(bidirectional):
  model, params, logits = bidirectional
  tok = jax.random.randint(jax.random.PRNGKey(1), (2, BLOCK), 0, V)
  t = 9
  before, after = logits(tok), logits(tok.at[:, t].set((tok[:, t] + 1) % V))
  assert not np.allclose(before[:, :t], after[:, :t], atol=1e-4)  # earlier positions see the later token
  q, k, v = jax.random.normal(jax.random.PRNGKey(2), (3, 2, 7, 4, 8))
  np.testing.assert_allclose(causal_attention(q, k, v, lambda w: w, causal=False),
                             jax.nn.dot_product_attention(q, k, v), atol=1e-5)  # the training path with dropout
  with pytest.raises(ValueError, match='no key/value cache'):
    model.apply({'params': params}, tok[:, :1], empty_cache(model, 2), 0, method=Transformer.decode)


def test_loss_ignores_unmasked_positions():
  logits = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (2, BLOCK, V)))
  tok = np.asarray(jax.random.randint(jax.random.PRNGKey(4), (2, BLOCK), 0, V))
  picked = np.asarray(masked.pick(jax.random.split(jax.random.PRNGKey(5), 2), jnp.array([0.25, 0.5]), BLOCK))
  loss_and_grad = jax.jit(jax.value_and_grad(lambda lg: jnp.sum(masked.masked_cross_entropy(lg, tok, picked)[0])))
  _, grad = loss_and_grad(logits)
  assert np.all(grad[~picked] == 0) and np.all(np.abs(grad[picked]).sum(-1) > 0)
  ce, correct = map(np.asarray, jax.jit(masked.masked_cross_entropy)(logits, tok, picked))
  np.testing.assert_allclose(ce[picked], -jax.nn.log_softmax(logits)[picked, tok[picked]], rtol=1e-5)
  np.testing.assert_array_equal(correct, picked & (jnp.argmax(logits, -1) == tok))


@jax.jit
def _training_masks(keys, tok):
  """Masks of windows of 64 tokens: 'fixed' 15%, 'cosine' rates and picks, and BERT's corruption of the fixed ones."""
  T = tok.shape[1]
  fixed = masked.pick(keys, masked.mask_rates(keys, 'fixed', 0.15), T)
  rates = masked.mask_rates(keys, 'cosine', 0.15)
  cosine = masked.pick(jax.vmap(jax.random.fold_in, (0, None))(keys, 1), rates, T)
  return fixed, rates, cosine, masked.corrupt(keys, tok, fixed, V, 0.1, 0.1)


def test_mask_schedules_give_their_counts():
  keys = jax.random.split(jax.random.PRNGKey(6), 4000)
  T = 64
  tok = np.asarray(jax.random.randint(jax.random.PRNGKey(8), (4000, T), 0, V))
  fixed, rates, cosine, corrupted = map(np.asarray, _training_masks(keys, tok))
  np.testing.assert_array_equal(fixed.sum(1), 10)  # ceil(0.15 * 64)
  assert 0 < rates.min() and rates.max() <= 1 and abs(rates.mean() - 2 / math.pi) < 0.02  # E cos(pi u / 2)
  np.testing.assert_array_equal(cosine.sum(1), np.clip(np.ceil(rates * T), 1, T))
  assert np.all(cosine.sum(0) > 0)  # every position gets masked: the picks are spread uniformly
  # BERT's 80/10/10 of the picked positions: [MASK], a random token (which may be its own), its own token
  new, own = corrupted[fixed], tok[fixed]
  np.testing.assert_array_equal(corrupted[~fixed], tok[~fixed])
  np.testing.assert_allclose([np.mean(new == V), np.mean((new != V) & (new != own)), np.mean(new == own)],
                             [0.8, 0.1 * (1 - 1 / V), 0.1 + 0.1 / V], atol=0.01)
  # decoding: positions still masked after each step, floor(64 cos(pi/2 t/8)) here, ending at 0
  np.testing.assert_array_equal(masked.unmask_schedule(64, 8), [64, 62, 59, 53, 45, 35, 24, 12, 0])
  np.testing.assert_array_equal(masked.unmask_schedule(20, 20), np.arange(20, -1, -1))  # one per step
  for n in range(1, 40):
    for steps in range(1, n + 1):
      left = masked.unmask_schedule(n, steps)
      assert left[0] == n and left[-1] == 0 and np.all(np.diff(left) < 0), (n, steps)


def _canvas(model_tokens: str) -> np.ndarray:
  """A canvas of the tiny model's tokens: digits given, '_' to fill."""
  return np.array([V if c == '_' else int(c) for c in model_tokens], np.int32)


def _decode(logits, canvas, num, steps, temperature, noise, rng=jax.random.PRNGKey(9)):
  draw = lambda lg, key: generation.next_token(lg, key, temperature, 0, 1.0)
  return jax.jit(lambda r: masked.maskgit(logits, canvas, num, r, steps, draw, noise, V))(rng)


def test_decoding_keeps_given_positions_and_fills_as_scheduled(bidirectional):
  _, _, logits = bidirectional
  canvas = _canvas('31__5____2_7____')
  tok, logp, filled_at = _decode(logits, canvas, 4, 5, 1.0, 2.0)
  given = canvas != V
  np.testing.assert_array_equal(tok[:, given], np.broadcast_to(canvas[given], (4, given.sum())))
  assert np.all(tok < V) and np.all(filled_at[:, given] == -1) and np.all(logp[:, given] == 0)
  assert np.all(logp[:, ~given] < 0)
  fills = -np.diff(masked.unmask_schedule(int((~given).sum()), 5))
  for row in np.asarray(filled_at):
    np.testing.assert_array_equal(np.bincount(row[~given], minlength=5), fills)
  assert len({tuple(r) for r in np.asarray(tok)}) > 1  # the samples differ


def test_one_step_per_position_at_temperature_0_fills_the_most_confident(bidirectional):
  _, _, logits = bidirectional
  canvas = _canvas('4____1______0___')
  n = int((canvas == V).sum())
  tok, logp, filled_at = _decode(logits, canvas, 2, n, 0.0, 0.0)
  for b in range(2):
    np.testing.assert_array_equal(np.sort(filled_at[b][canvas == V]), np.arange(n))
    for t in range(n):  # replay: the canvas before step t, and the most confident prediction on it
      before = np.where(filled_at[b] < t, tok[b], canvas)
      logp_TV = jax.nn.log_softmax(logits(jnp.asarray(before)[None])[0])
      best_T = np.where(before == V, np.max(logp_TV, -1), -np.inf)
      q = int(np.argmax(best_T))
      assert filled_at[b, q] == t and tok[b, q] == np.argmax(logp_TV[q]), (b, t)
      np.testing.assert_allclose(logp[b, q], best_T[q], rtol=1e-4)


def test_pseudo_log_likelihood_is_the_mean_of_one_masked_position_at_a_time(bidirectional, config):
  model, params, logits = bidirectional
  config.lm.pll_positions = BLOCK
  objective = masked.MaskedObjective(config, model, V, parallel.AXIS)
  tok = np.asarray(jax.random.randint(jax.random.PRNGKey(10), (3, BLOCK), 0, V))
  keys = jax.random.split(jax.random.PRNGKey(11), 3)
  got = jax.jit(objective.pseudo_log_likelihood)(params, tok, keys)
  want = np.zeros(3)
  for t in range(BLOCK):
    one_masked = tok.copy()
    one_masked[:, t] = V
    logp = np.asarray(jax.nn.log_softmax(logits(one_masked)))[:, t]
    want += logp[np.arange(3), tok[:, t]] / BLOCK
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_4_device_step_equals_1_device_step(config):
  """The cosine schedule's rates, picks and replacements are drawn per example: the same on any device split."""
  ds = data.create(config.data, 'train', 8, seed=0, process_index=0, process_count=1, local_devices=1, train=True)
  batches = [ds.batch(s)['tokens'] for s in range(2)]
  state4, losses4, metrics4 = _step_run(config, jax.devices()[:4], batches)
  state1, losses1, metrics1 = _step_run(config, jax.devices()[:1], batches)
  np.testing.assert_allclose(losses4, losses1, rtol=1e-5)
  np.testing.assert_allclose(metrics4['masked_accuracy'], metrics1['masked_accuracy'], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(state4.params), jax.tree.leaves(state1.params)):
    np.testing.assert_allclose(a, b, atol=1e-5)
  assert {'loss', 'masked_accuracy', 'mask_ratio', 'grad_norm', 'lr', nonfinite.COUNT, nonfinite.FIRST} == set(metrics1)
  assert 0 < metrics1['mask_ratio'] < 1
  vocab = len(set(text.load(config.data, 'train')[0]))
  assert state1.params['token_embed']['embedding'].shape == (vocab + 1, 32)  # and [MASK]


def test_train_eval_and_infill_end_to_end(sonnet_file, tmp_path):
  config = tiny_mlm_config(sonnet_file)
  workdir = str(tmp_path / 'w')
  loop.train(config, workdir)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  assert {'loss', 'masked_accuracy', 'mask_ratio'} <= set(rows[0])
  evals = [r for r in rows if 'eval/loss' in r]
  assert {'eval/masked_accuracy', 'eval/pll', 'eval/pseudo_perplexity'} <= set(evals[-1])
  np.testing.assert_allclose(evals[-1]['eval/pseudo_perplexity'], math.exp(-evals[-1]['eval/pll']), rtol=1e-5)
  config.sample.template = 'Shall ____ thee'
  texts = loop.sample(config, workdir)['text']
  assert len(texts) == 3 and all(len(t) == 15 and t.startswith('Shall ') and t.endswith(' thee') and
                                 set(t) <= set(SONNET) for t in texts)
  with open(os.path.join(workdir, 'samples', 'step_4.txt'), encoding='utf-8') as f:
    assert f.read().startswith(texts[0] + '\n' + '-' * 40 + '\n')


def test_the_canvas_is_the_prompt_and_masks_or_the_template(config):
  method = lm.LM(config, parallel.AXIS, _info())
  mask = method.mask_id
  np.testing.assert_array_equal(method.canvas_L, np.concatenate([method.tokenizer.encode('Sh'), [mask] * 14]))
  config.sample.update({'template': '_hall I_', 'steps': 2})
  np.testing.assert_array_equal(lm.LM(config, parallel.AXIS, _info()).canvas_L,
                                np.concatenate([[mask], method.tokenizer.encode('hall I'), [mask]]))


def test_masked_settings_are_clear_errors(config):
  config.lm.objective = 'bert'
  with pytest.raises(UserError, match="lm.objective='bert' is unknown"):
    methods.check_config(config)
  config.lm.objective = 'masked'
  config.sample.method = 'sample'
  with pytest.raises(UserError, match="decodes with sample.method='maskgit', not 'sample'"):
    methods.check_config(config)
  config.lm.objective = 'causal'
  config.sample.method = 'maskgit'
  with pytest.raises(UserError, match="sample.method='maskgit' decodes a masked-token model"):
    methods.check_config(config)
  config.lm.objective = 'masked'
  config.lm.replace_random = 0.6
  config.lm.replace_keep = 0.6
  with pytest.raises(UserError, match='must be >= 0 and sum to at most 1'):
    methods.check_config(config)
  config.lm.replace_random = config.lm.replace_keep = 0.0
  config.sample.length = BLOCK
  with pytest.raises(UserError, match='make 18 tokens, more than data.block_size=16'):
    lm.LM(config, parallel.AXIS, _info())
  config.sample.template = 'Shall __'
  config.sample.steps = 3
  with pytest.raises(UserError, match="leave 2 positions to fill, fewer than sample.steps=3"):
    lm.LM(config, parallel.AXIS, _info())
