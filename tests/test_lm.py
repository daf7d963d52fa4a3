"""The Transformer LM: tokenizers, causality, the KV cache, sampling, steps, and the loop and CLI end to end."""

import json
import math
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aigc_jax import data
from aigc_jax import methods
from aigc_jax.data import text
from aigc_jax.data import tokenizers
from aigc_jax.errors import UserError
from aigc_jax.methods import generation
from aigc_jax.methods import lm
from aigc_jax.models.transformer import Transformer
from aigc_jax.models.transformer import causal_attention
from aigc_jax.models.transformer import empty_cache
from aigc_jax.train import loop
from aigc_jax.train import nonfinite
from aigc_jax.train import optim
from aigc_jax.train import parallel
from aigc_jax.train import step as step_lib
from configs import gpt_shakespeare_cpu
from tests.conftest import build
from tests.conftest import process_env
from tests.conftest import ROOT
from tests.conftest import needs_shared_data
from tests.conftest import shrink_training
from tests.conftest import TFDS_PREPARE_STAGES
from tests.conftest import tfds_prepared_by_another_process_first

# Shakespeare's Sonnet 18, four times over: a real text that needs nothing from ../shared.
SONNET = """Shall I compare thee to a summer's day?
Thou art more lovely and more temperate:
Rough winds do shake the darling buds of May,
And summer's lease hath all too short a date;
Sometime too hot the eye of heaven shines,
And often is his gold complexion dimm'd;
And every fair from fair sometime declines,
By chance or nature's changing course untrimm'd;
But thy eternal summer shall not fade,
Nor lose possession of that fair thou ow'st;
Nor shall death brag thou wander'st in his shade,
When in eternal lines to time thou grow'st:
So long as men can breathe or eyes can see,
So long lives this, and this gives life to thee.
""" * 4

BLOCK = 16


def tiny_lm_config(text_file: str):
  """gpt_shakespeare_cpu shrunk to compile and run in seconds: 2 layers of width 32, context 16."""
  config = shrink_training(gpt_shakespeare_cpu.get_config())
  config.data.text_file = text_file
  config.data.block_size = BLOCK
  config.model.num_layers = 2
  config.model.num_heads = 2
  config.model.width = 32
  config.sample.num = 3
  config.sample.length = BLOCK + 8  # past the context: exercises the sliding window
  config.eval.num_batches = 1
  return config


@pytest.fixture(scope='module')
def sonnet_file(tmp_path_factory):
  path = tmp_path_factory.mktemp('text') / 'sonnet.txt'
  path.write_text(SONNET, encoding='utf-8')
  return str(path)


@pytest.fixture
def config(sonnet_file):
  return tiny_lm_config(sonnet_file)


def _info(source: str = SONNET) -> dict[str, str]:
  return tokenizers.CharTokenizer(source).info


@pytest.fixture(scope='module')
def model_and_params():
  """A tiny Transformer with random weights, its jitted full forward and cached decode."""
  model = Transformer(vocab_size=11, block_size=BLOCK, num_layers=2, num_heads=2, width=32)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, BLOCK), jnp.int32))['params']
  forward = jax.jit(lambda p, tok: model.apply({'params': p}, tok))
  decode = jax.jit(lambda p, tok, cache, pos: model.apply({'params': p}, tok, cache, pos, method=Transformer.decode))
  return model, params, forward, decode


def test_tokenizers_round_trip():
  sample = 'Fair — thou ow\'st, café!\n'
  char = tokenizers.CharTokenizer(sample)
  assert char.decode(char.encode(sample)) == sample
  assert char.vocab_size == len(set(sample)) and char.encode(sample).dtype == np.int32
  rebuilt = tokenizers.from_info(json.loads(json.dumps(char.info)))
  np.testing.assert_array_equal(rebuilt.encode(sample), char.encode(sample))
  with pytest.raises(UserError, match=r"the prompt has characters outside the vocabulary .*'z'"):
    char.encode('fizz', what='the prompt')
  byte = tokenizers.from_info(tokenizers.build('byte', '').info)
  assert byte.vocab_size == 256 and len(byte.encode(sample)) == len(sample.encode('utf-8'))
  assert byte.decode(byte.encode(sample)) == sample
  with pytest.raises(UserError, match="data.tokenizer='word' is unknown"):
    tokenizers.build('word', sample)


def test_text_windows_are_deterministic_and_cover_the_eval_split():
  tokens = np.arange(100, dtype=np.int32)
  kw = dict(seed=1, local_devices=2, shuffle=True, info={})
  whole = data.pipeline.TextBatches(tokens, 8, 10, process_index=0, process_count=1, **kw).batch(3)['tokens']
  assert whole.shape == (2, 4, 11) and whole.dtype == np.int32
  np.testing.assert_array_equal(
      whole, data.pipeline.TextBatches(tokens, 8, 10, process_index=0, process_count=1, **kw).batch(3)['tokens'])
  assert np.all(np.diff(whole, axis=-1) == 1)  # windows of consecutive tokens
  ev = data.pipeline.TextBatches(tokens, 3, 10, seed=0, process_index=0, process_count=1, local_devices=1,
                                 shuffle=False, info={})
  assert len(ev) == 3  # 9 windows of 10 targets
  starts = np.concatenate([ev.window_starts(i) for i in range(len(ev))])
  np.testing.assert_array_equal(starts, np.arange(0, 90, 10))
  ev = data.pipeline.TextBatches(tokens, 4, 10, seed=0, process_index=0, process_count=1, local_devices=2,
                                 shuffle=False, info={})
  assert len(ev) == 3 and [ev.share(i) for i in range(3)] == [1.0, 1.0, 0.25]  # the 9th window pads the last
  np.testing.assert_array_equal(ev.batch(2)['weights'], [[1, 0], [0, 0]])
  np.testing.assert_array_equal(ev.batch(2)['tokens'][0, 0], np.arange(80, 91))


def test_text_file_splits_and_errors(config, tmp_path):
  train, _ = text.load(config.data, 'train')
  val, _ = text.load(config.data, 'validation')
  assert train + val == SONNET and len(val) == len(SONNET) - int(len(SONNET) * 0.9)
  ds = data.create(config.data, 'validation', 8, seed=0, process_index=0, process_count=1, local_devices=4,
                   train=False)
  assert ds.info == _info(train) and ds.batch(0)['tokens'].shape == (4, 2, BLOCK + 1)
  empty = tmp_path / 'empty.txt'
  empty.write_text('')
  config.data.text_file = str(empty)
  with pytest.raises(UserError, match=r"data.text_file=.*empty.txt' split 'train' is empty"):
    text.load(config.data, 'train')
  short = tmp_path / 'short.txt'
  short.write_text('to be or not to be\n' * 2)
  config.data.text_file = str(short)
  with pytest.raises(UserError, match=r"split 'validation' has 4 tokens, fewer than data.block_size \+ 1 = 17"):
    data.create(config.data, 'validation', 8, seed=0, process_index=0, process_count=1, local_devices=4,
                train=False)
  config.data.text_file = str(tmp_path / 'missing.txt')
  with pytest.raises(UserError, match='cannot read data.text_file='):
    text.load(config.data, 'train')


def test_byte_level_data_and_model(config):
  config.data.tokenizer = 'byte'
  ds = data.create(config.data, 'train', 8, seed=0, process_index=0, process_count=1, local_devices=4, train=True)
  assert ds.info == {'tokenizer': 'byte'} and ds.batch(0)['tokens'].max() < 256
  method = lm.LM(config, parallel.AXIS, ds.info)
  params, _ = jax.eval_shape(method.init, jax.random.PRNGKey(0))
  assert params['token_embed']['embedding'].shape == (256, 32) and method.bits_name == 'bits_per_byte'


def test_gpt_shakespeare_has_nanogpts_10_65m_parameters_plus_positions():
  from configs import gpt_shakespeare
  vocab_65 = '\n' + ''.join(chr(c) for c in range(32, 96))  # Tiny Shakespeare has 65 characters
  method = lm.LM(gpt_shakespeare.get_config(), parallel.AXIS, _info(vocab_65))
  params, _ = jax.eval_shape(method.init, jax.random.PRNGKey(0))
  count = sum(x.size for x in jax.tree.leaves(params))
  assert count - 256 * 384 == 10_646_784, count  # nanoGPT reports 10.65M, leaving out the position embedding


def test_attention_is_causal(model_and_params):
  _, params, forward, _ = model_and_params
  tok = jax.random.randint(jax.random.PRNGKey(1), (2, BLOCK), 0, 11)
  t = 9
  changed = tok.at[:, t].set((tok[:, t] + 1) % 11)
  before, after = forward(params, tok), forward(params, changed)
  np.testing.assert_array_equal(before[:, :t], after[:, :t])
  assert not np.allclose(before[:, t:], after[:, t:])


def test_dropout_attention_equals_dot_product_attention_without_dropout():
  q, k, v = jax.random.normal(jax.random.PRNGKey(2), (3, 2, 7, 4, 8))
  np.testing.assert_allclose(causal_attention(q, k, v, lambda w: w),
                             jax.nn.dot_product_attention(q, k, v, is_causal=True), atol=1e-5)


def test_cached_decoding_matches_recomputing_the_prefix(model_and_params):
  model, params, forward, decode = model_and_params
  tok = jax.random.randint(jax.random.PRNGKey(3), (2, BLOCK), 0, 11)
  full = forward(params, tok)  # by causality, position p sees exactly the prefix tok[:, :p+1]
  prefix_logits, cache = decode(params, tok[:, :5], empty_cache(model, 2), 0)  # the prompt in one call
  np.testing.assert_allclose(prefix_logits, full[:, :5], atol=1e-5)
  for p in range(5, BLOCK):
    logits, cache = decode(params, tok[:, p:p + 1], cache, p)
    padded = jnp.zeros_like(tok).at[:, :p + 1].set(tok[:, :p + 1])
    np.testing.assert_allclose(logits[:, 0], forward(params, padded)[:, p], atol=1e-5)


@pytest.mark.parametrize('length', [4, BLOCK + 6])  # within the context; its last 6 tokens by the sliding window
def test_greedy_generation_equals_greedy_recomputation(model_and_params, length):
  model, params, forward, _ = model_and_params
  prompt = np.array([[1, 2, 3], [4, 4, 0]], np.int32)
  got, _ = jax.jit(lambda p, pr: generation.generate(model, p, pr, jax.random.PRNGKey(0), length, temperature=0.0))(
      params, prompt)
  seqs = [list(row) for row in prompt]
  for _ in range(length):
    for seq in seqs:
      ctx = seq[-BLOCK:]
      padded = np.zeros((1, BLOCK), np.int32)
      padded[0, :len(ctx)] = ctx
      seq.append(int(np.argmax(forward(params, padded)[0, len(ctx) - 1])))
  np.testing.assert_array_equal(got, np.array(seqs))


@pytest.mark.parametrize('length', [6, BLOCK + 3])
def test_sampling_with_the_cache_draws_what_recomputation_draws(model_and_params, length):
  model, params, _, _ = model_and_params
  prompt = np.array([[1, 2, 3], [4, 4, 0]], np.int32)
  draw = jax.jit(lambda p, pr, kv: generation.generate(model, p, pr, jax.random.PRNGKey(5), length, temperature=1.0,
                                               top_k=8, kv_cache=kv), static_argnums=2)
  (tok, logp), (ref_tok, ref_logp) = draw(params, prompt, True), draw(params, prompt, False)
  np.testing.assert_array_equal(tok, ref_tok)
  np.testing.assert_allclose(logp, ref_logp, atol=1e-5)


def test_next_token_filters():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 256))
  keys = jax.random.PRNGKey(0)
  assert set(np.asarray(generation.next_token(logits, keys, 1.0, 2, 1.0)).tolist()) == {0, 1}
  assert set(np.asarray(generation.next_token(logits, keys, 1.0, 0, 0.7)).tolist()) == {0, 1}
  assert set(np.asarray(generation.next_token(logits, keys, 1.0, 0, 0.85)).tolist()) == {0, 1, 2}
  assert set(np.asarray(generation.next_token(logits, keys, 1.0, 0, 1.0)).tolist()) == {0, 1, 2, 3}
  np.testing.assert_array_equal(generation.next_token(logits, keys, 0.0, 0, 1.0), 0)


def _step_run(config, devices, batches):
  _, train_step, state = build(config, _info(text.load(config.data, 'train')[0]))
  step = parallel.train_step(train_step, parallel.devices(devices))
  losses = []
  for b in batches:
    state, metrics = step(state, [{'tokens': b.reshape((len(devices), -1) + b.shape[2:])}])
    losses.append(float(metrics['loss']))
  return jax.device_get(state), losses, metrics


def test_4_device_step_equals_1_device_step(config):
  assert jax.device_count() == 4
  ds = data.create(config.data, 'train', 8, seed=0, process_index=0, process_count=1, local_devices=1, train=True)
  batches = [ds.batch(s)['tokens'] for s in range(3)]
  state4, losses4, _ = _step_run(config, jax.devices()[:4], batches)
  state1, losses1, metrics = _step_run(config, jax.devices()[:1], batches)
  np.testing.assert_allclose(losses4, losses1, atol=1e-5)
  for a, b in zip(jax.tree.leaves(state4.params), jax.tree.leaves(state1.params)):
    np.testing.assert_allclose(a, b, atol=1e-5)
  assert {'loss', 'perplexity', 'bits_per_char', 'grad_norm', 'lr', nonfinite.COUNT, nonfinite.FIRST} == set(metrics)
  np.testing.assert_allclose(metrics['perplexity'], math.exp(losses1[-1]), rtol=1e-5)


def _loss_drop(config, steps: int) -> tuple[float, float, float]:
  """Loss of the current params on fixed windows before and after `steps` jitted steps of a 64-wide model.

  Also returns the entropy of the training text's character frequencies: the best loss
  of a model that ignores the context.
  """
  config.model.width = 64
  config.optim.lr = 3e-3
  config.training.batch_size = 16
  config.training.num_train_steps = steps  # the learning rate decays over these steps
  ds = data.create(config.data, 'train', config.training.batch_size, seed=0, process_index=0, process_count=1,
                   local_devices=1, train=True)
  method, train_step, state = build(config, ds.info)
  devs = parallel.devices(jax.devices()[:1])
  step = parallel.train_step(train_step, devs)
  evaluate = parallel.eval_step(step_lib.eval_step(method, parallel.AXIS), devs)
  held = ds.batch(10_000)

  def loss(state):
    return evaluate(state.replace(ema_params=state.params), held, jax.random.PRNGKey(0))['loss']

  before = loss(state)
  for s in range(steps):
    state, _ = step(state, [ds.batch(s)])
  freq = np.bincount(ds.tokens) / len(ds.tokens)
  return before, loss(state), float(-np.sum(freq[freq > 0] * np.log(freq[freq > 0])))


def test_step_lowers_the_loss_on_embedded_text(config):
  config.model.dropout = 0.1  # trains through the attention with dropout; evaluates without
  before, after, unigram = _loss_drop(config, 80)
  assert before > math.log(40) - 0.1 and after < unigram - 0.3, (before, after, unigram)  # uses the context


def test_step_lowers_the_loss_on_tiny_shakespeare(config):
  config.data.text_file = str(needs_shared_data('tinyshakespeare.txt'))
  before, after, unigram = _loss_drop(config, 80)
  assert before > math.log(65) - 0.1 and after < unigram - 0.15, (before, after, unigram)


def test_weight_decay_spares_biases_and_norm_scales(config):
  tx, _ = optim.create(config.optim, 10)
  params = {'kernel': jnp.ones((2, 2)), 'scale': jnp.ones(2)}
  zero = jax.tree.map(jnp.zeros_like, params)
  state = tx.init(params)
  for _ in range(5):  # past the warmup, so the learning rate is positive
    updates, state = tx.update(zero, state, params)
  assert np.all(updates['kernel'] < 0) and np.all(updates['scale'] == 0)


def test_bad_settings_are_clear_errors(config):
  config.model.num_heads = 3
  with pytest.raises(UserError, match='model.num_heads=3 must divide model.width=32'):
    methods.check_config(config)
  config.model.num_heads = 2
  config.sample.prompt = 'Zounds!'
  with pytest.raises(UserError, match=r"sample.prompt='Zounds!' has characters outside the vocabulary .*'!Z'"):
    lm.LM(config, parallel.AXIS, _info())
  config.sample.prompt = ''
  with pytest.raises(UserError, match='sample.prompt is empty'):
    methods.check_config(config)


@pytest.fixture(scope='module')
def trained(tmp_path_factory, sonnet_file):
  """One tiny 4-step run on 4 devices on a copy of the sonnet, shared by the tests that read its workdir."""
  root = tmp_path_factory.mktemp('lm_run')
  copy = str(root / 'sonnet.txt')
  shutil.copy(sonnet_file, copy)
  workdir = str(root / 'w')
  state = loop.train(tiny_lm_config(copy), workdir)
  return workdir, copy, state


def test_training_writes_text_samples_and_metrics(trained):
  workdir, _, state = trained
  assert int(state.step) == 4
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  train_rows = [r for r in rows if 'loss' in r]
  assert [r['step'] for r in train_rows] == [2, 4]
  assert {'loss', 'perplexity', 'bits_per_char', 'lr', 'grad_norm'} <= set(train_rows[-1])
  assert train_rows[-1]['tokens_per_sec'] == pytest.approx(train_rows[-1]['examples_per_sec'] * BLOCK)
  assert [r['step'] for r in rows if 'eval/loss' in r] == [4]  # every 250 steps and at the last
  with open(os.path.join(workdir, 'samples', 'step_4.txt'), encoding='utf-8') as f:
    assert f.read().count('-' * 40 + '\n') == 3


def test_eval_scores_every_window_of_the_split_once(trained):
  """15 validation windows in batches of 8 on 4 devices: the padded last batch counts for its 7 windows."""
  workdir, copy, _ = trained
  config = tiny_lm_config(copy)
  config.eval.num_batches = 0
  result = loop.evaluate(config, workdir)
  ckpts = loop.checkpoint.Checkpoints(os.path.join(workdir, 'checkpoints'), 3)
  method, _, state = build(config, ckpts.data_info())
  state = jax.device_get(ckpts.restore(state))
  ckpts.close()
  tokens = method.tokenizer.encode(text.load(config.data, 'validation')[0])
  windows = np.stack([tokens[i * BLOCK:(i + 1) * BLOCK + 1] for i in range((len(tokens) - 1) // BLOCK)])
  logits = method.model.apply({'params': state.ema_params}, windows[:, :-1])
  want = -np.take_along_axis(jax.nn.log_softmax(logits), windows[:, 1:, None], axis=-1).mean()
  assert result['num_examples'] == len(windows) == 15
  np.testing.assert_allclose(result['eval/loss'], want, rtol=1e-5)


def test_eval_mode_reports_loss_perplexity_and_bits(trained):
  workdir, copy, _ = trained
  result = loop.evaluate(tiny_lm_config(copy), workdir)
  with open(os.path.join(workdir, 'eval_4.json')) as f:
    assert json.load(f) == result
  assert result['num_examples'] == 8
  np.testing.assert_allclose(result['eval/perplexity'], math.exp(result['eval/loss']), rtol=1e-6)
  np.testing.assert_allclose(result['eval/bits_per_char'], result['eval/loss'] / math.log(2), rtol=1e-6)


def test_sampling_needs_no_data_the_vocabulary_comes_with_the_checkpoint(trained, tmp_path):
  workdir, copy, _ = trained
  config = tiny_lm_config(str(tmp_path / 'no_such_file.txt'))  # no data anywhere
  config.sample.prompt = 'Shall'
  config.sample.num = 5
  texts = loop.sample(config, workdir)['text']
  assert len(texts) == 5 and all(len(t) == len('Shall') + config.sample.length for t in texts)
  assert all(t.startswith('Shall') and set(t) <= set(SONNET) for t in texts)
  with open(os.path.join(workdir, 'samples', 'step_4_1.txt'), encoding='utf-8') as f:  # beside training's step_4.txt
    assert f.read().startswith(texts[0] + '\n' + '-' * 40 + '\n')


def test_data_tokenized_unlike_the_checkpoint_is_a_clear_error(trained):
  workdir, copy, _ = trained
  config = tiny_lm_config(copy)
  config.data.tokenizer = 'byte'
  with pytest.raises(UserError, match="data.tokenizer='byte', but the checkpoints were trained with 'char'"):
    loop.evaluate(config, workdir)


def test_tiny_shakespeare_from_tfds_manual_dir(tmp_path):
  source = needs_shared_data('tinyshakespeare.txt')
  manual = tmp_path / 'manual'
  manual.mkdir()
  shutil.copy(source, manual / 'input.txt')
  cfg = gpt_shakespeare_cpu.get_config().data
  cfg.manual_dir = str(manual)
  cfg.tfds_data_dir = str(tmp_path / 'tfds')
  train, source_name = text.load(cfg, 'train')
  assert len(train) == 1_003_854 and source_name == "TFDS 'tiny_shakespeare'"

  # Another process (of the same run, or a sweep's trial) prepares the same data set at the same
  # time and finishes first: before this one starts writing, or while it writes (then TFDS cannot
  # put this one's copy in place). Either way this one reads the other's copy.
  import tensorflow_datasets as tfds
  manual_file = tfds.download.DownloadConfig(manual_dir=cfg.manual_dir)
  for stage in TFDS_PREPARE_STAGES:
    cfg.tfds_data_dir = str(tmp_path / f'tfds{stage}')
    with tfds_prepared_by_another_process_first(stage, 'tiny_shakespeare', cfg.tfds_data_dir,
                                                download_config=manual_file) as other:
      assert text.load(cfg, 'train')[0] == train, stage
    assert other, stage


def test_tfds_not_prepared_offline_is_a_clear_error(monkeypatch, tmp_path):
  from aigc_jax.data import images
  monkeypatch.setattr(images, 'network_up', lambda: False)
  cfg = gpt_shakespeare_cpu.get_config().data
  cfg.tfds_data_dir = str(tmp_path)
  with pytest.raises(UserError, match=r"not prepared .* no network .*data.manual_dir .*input.txt.*data.text_file"):
    text.load(cfg, 'train')


def _cli(*args, python_flags=()):
  return subprocess.run([sys.executable, *python_flags, 'run.py', *args], cwd=ROOT, env=process_env(2),
                        capture_output=True, text=True, timeout=300)


def test_cli_trains_then_samples_text(sonnet_file, tmp_path):
  tiny = ['--config=configs/gpt_shakespeare_cpu.py', f'--config.data.text_file={sonnet_file}',
          f'--config.data.block_size={BLOCK}', '--config.model.num_layers=1', '--config.model.num_heads=2',
          '--config.model.width=16', '--config.training.batch_size=4', '--config.training.num_train_steps=2',
          '--config.training.log_every=2', '--config.training.checkpoint_every=2',
          '--config.training.sample_every=0', f'--workdir={tmp_path}']
  train = _cli(*tiny, python_flags=('-X', 'importtime'))
  assert train.returncode == 0, train.stderr[-2000:]
  assert 'lm: ' in train.stdout and 'step 2/2 | loss' in train.stdout
  # TensorFlow (~4 s of start-up) serves TFDS only: a run on a text file, TensorBoard included, never loads it
  assert re.search(r'\| +jax$', train.stderr, re.M) and not re.search(r'\| +tensorflow$', train.stderr, re.M)
  sample = _cli(*tiny, '--mode=sample', '--config.sample.num=2', '--config.sample.length=5',
                '--config.sample.prompt=Thou', '--config.data.text_file=/nonexistent.txt')
  assert sample.returncode == 0, sample.stderr[-2000:]
  assert '2 samples from step 2' in sample.stdout
  assert sample.stdout.count('Thou') >= 2 and sample.stdout.count('-' * 40) == 2
  assert os.path.exists(tmp_path / 'samples' / 'step_2.txt')


def test_beam_search_through_sample_mode_prints_text_and_log_probability(trained, capsys):
  workdir, copy, _ = trained
  config = tiny_lm_config(copy)
  config.sample.update({'method': 'beam', 'num': 2, 'num_beams': 3, 'no_repeat_ngram_size': 2, 'end_token': '\n',
                        'prompt': 'Shall', 'length': BLOCK + 4})
  out = loop.sample(config, workdir)
  text = out['text'][0]
  assert out['text'] == [text, text] and text.startswith('Shall')  # deterministic: every sample is the best beam
  assert len({text[i:i + 2] for i in range(len(text) - 1)}) == len(text) - 1  # no character pair twice
  assert (text.endswith('\n') and text.count('\n') == 1) or ('\n' not in text and len(text) == 5 + BLOCK + 4)
  assert out['logprob_per_token'][0] < 0
  assert f'{text}\n(logprob_per_token {out["logprob_per_token"][0]:.4f})\n' + '-' * 40 in capsys.readouterr().out


def test_decoding_settings_are_clear_errors(config):
  config.sample.method = 'nucleus'
  with pytest.raises(UserError, match="sample.method='nucleus' is unknown: use 'sample' .* or 'beam'"):
    methods.check_config(config)
  config.sample.method = 'beam'
  config.sample.num_beams = 0
  with pytest.raises(UserError, match='sample.num_beams=0 must be >= 1'):
    methods.check_config(config)
  config.sample.num_beams = 2
  config.sample.end_token = '\n\n'
  with pytest.raises(UserError, match=r"sample.end_token='\\n\\n' is 2 tokens, not one"):
    lm.LM(config, parallel.AXIS, _info())
