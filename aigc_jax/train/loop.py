"""The one training loop, plus the sample and eval entry points that read its checkpoints.

train: init or restore -> pmapped steps -> log / sample / checkpoint at their intervals ->
final checkpoint. It trains every method with the one shared step (`step.py`), calls the
method only through `methods.base.Method` and never asks which method it runs.
"""

import os
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import ml_collections
import numpy as np

from aigc_jax import data
from aigc_jax import methods
from aigc_jax import rules
from aigc_jax.errors import UserError
from aigc_jax.methods.base import Method
from aigc_jax.rules import Rule
from aigc_jax.train import checkpoint
from aigc_jax.train import nonfinite
from aigc_jax.train import parallel
from aigc_jax.train import parts as parts_lib
from aigc_jax.train import preemption
from aigc_jax.train import state as state_lib
from aigc_jax.train import step as step_lib
from aigc_jax.train import writers


def _say(msg: str) -> None:
  """Progress to stdout, from process 0 only (every process of a multi-process run runs this code)."""
  if parallel.is_main_process():
    print(msg, flush=True)


def _format_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


def process_age() -> float | None:
  """Seconds since this process started (from Linux's /proc; None elsewhere): startup time from the command."""
  try:
    with open('/proc/self/stat') as f:
      start_ticks = int(f.read().rsplit(')', 1)[1].split()[19])
    return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf('SC_CLK_TCK')
  except (OSError, ValueError, IndexError, AttributeError):
    return None


def _required(key: str) -> Rule:
  section, name = key.split('.')
  return Rule(key, lambda c: c[section][name] is not None,
              f'{key} is not set: give it in the config (configs/default.py leaves it to each experiment)')


def _positive(key: str) -> Rule:
  section, name = key.split('.')
  return Rule(key, lambda c: c[section][name] > 0, f'{key}={{{key}}} must be positive')


def _multiple_of_call(key: str) -> Rule:
  return Rule(key, lambda c: c.training[key.split('.')[1]] % c.training.steps_per_call == 0,
              f'{key}={{{key}}} must be a multiple of training.steps_per_call={{training.steps_per_call}}: change one '
              'of them')


RULES = (
    _required('training.batch_size'), _required('training.num_train_steps'), _required('optim.lr'),
    *(_positive(f'training.{k}') for k in ('num_train_steps', 'log_every', 'checkpoint_every', 'steps_per_call',
                                           'keep_checkpoints')),
    *(Rule(f'training.{k}', lambda c, k=k: c.training[k] >= 0,
           f'training.{k}={{training.{k}}} must be >= 0 (0: never during training)')
      for k in ('sample_every', 'eval_every')),
    *(_multiple_of_call(f'training.{k}') for k in ('log_every', 'checkpoint_every', 'sample_every', 'eval_every')),
)
"""The loop's own settings, checked before anything loads or compiles."""


def validate(config: ml_collections.ConfigDict, devs: parallel.Devices) -> None:
  """Checks the loop's own settings (and the batch's split over the devices) before anything loads or compiles."""
  rules.check(config, RULES, 'the training loop')
  parallel.check_batch(config.training.batch_size, devs)
  if config.training.eval_every:
    parallel.check_batch(config.eval.batch_size, devs, key='eval.batch_size')


class Setup(NamedTuple):
  """Where a run stands before it builds anything: its devices, checkpoints and resolved parts."""
  devs: parallel.Devices
  ckpts: checkpoint.Checkpoints
  parts: dict[str, parts_lib.Part]
  recorded: Sequence[str]  # the parts the run's checkpoints hold


def _setup(config: ml_collections.ConfigDict, workdir: str, devices: Sequence[jax.Device] | None,
           training: bool = False) -> Setup:
  """Devices, the run's checkpoints and its parts, after validating the loop's, the method's and the parts' settings.

  Only training makes a workdir: eval and sample on one without checkpoints (a mistyped path) leave no folders.
  """
  devs = parallel.devices(devices)
  validate(config, devs)
  if config.init_from and not os.path.isdir(config.init_from):
    raise UserError(f'init_from={config.init_from!r} is not a folder: point it to a Hugging Face GPT-2 folder '
                    '(config.json, model.safetensors or pytorch_model.bin, tokenizer files)')
  if config.init_from and config.data.get('tokenizer') == 'bpe' and not config.data.bpe_dir:
    config.data.bpe_dir = config.init_from  # the tokenizer files of the checkpoint
  if not training and not config.init_from and not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise UserError(f'no checkpoint in {workdir}/checkpoints: train first (--mode=train)')
  writers.check_writable(workdir)
  methods.check_config(config)
  ckpts = checkpoint.Checkpoints(os.path.join(workdir, 'checkpoints'), config.training.keep_checkpoints)
  recorded = ckpts.run_info().get('parts', {})
  return Setup(devs, ckpts, parts_lib.resolve(config, parallel.AXIS, recorded), tuple(recorded))


class Built(NamedTuple):
  """What a run trains, samples or evaluates: the method, its train step and a fresh state (with its parts)."""
  method: Method
  step: step_lib.TrainStep
  state: state_lib.TrainState


def build(config: ml_collections.ConfigDict, data_info: dict[str, Any], parts: dict[str, parts_lib.Part],
          recorded: Sequence[str] = ()) -> Built:
  """The method for this data and these parts, its train step, and a fresh train state holding the parts' params.

  Parts `recorded` by the run's checkpoints get placeholders, which restoring the checkpoint
  fills with the params the run trained with; the others are read from their runs.
  """
  method = methods.get_method(config, parallel.AXIS, data_info, parts)
  train_step = step_lib.build(method, config, parallel.AXIS)
  state = jax.jit(train_step.init)(jax.random.PRNGKey(config.seed))
  state = parts_lib.attach(state, {name: parts_lib.placeholders(p) if name in recorded else parts_lib.load(p)
                                   for name, p in parts.items()})
  return Built(method, train_step, state)


def train_data(config: ml_collections.ConfigDict, devs: parallel.Devices,
               data_info: dict[str, Any] | None = None) -> Any:
  """This process's training batches (tokenized as `data_info` says, when resuming)."""
  return data.create(config.data, config.data.train_split, config.training.batch_size, seed=config.seed,
                     process_index=devs.process_index, process_count=devs.process_count,
                     local_devices=len(devs.local), train=True, data_info=data_info or None)


def _checkpointed_data_info(ckpts: checkpoint.Checkpoints, workdir: str) -> dict[str, Any]:
  """The data info saved with the newest checkpoint, or an error when there is no checkpoint."""
  data_info = ckpts.data_info()
  if data_info is None:
    raise UserError(f'no checkpoint in {workdir}/checkpoints: train first (--mode=train)')
  return data_info


def _restore_latest(ckpts: checkpoint.Checkpoints, state: Any, workdir: str) -> Any:
  restored = ckpts.restore(state)
  if restored is None:
    raise UserError(f'no checkpoint in {workdir}/checkpoints: train first (--mode=train)')
  return restored


def _held_out_examples(config: ml_collections.ConfigDict, method: Method,
                       data_info: dict[str, Any]) -> dict[str, Any] | None:
  """The first `method.sample_examples` examples of the eval split, the same whole batch in every process.

  None when the method's sampler wants none, so that sampling then loads no data.
  """
  n = method.sample_examples
  if not n:
    return None
  ds = data.create(config.data, config.data.eval_split, n, seed=config.seed, process_index=0, process_count=1,
                   local_devices=1, train=False, data_info=data_info or None)
  if not len(ds):
    raise UserError(f'the sampler wants {n} held-out examples, but data.eval_split='
                    f'{config.data.eval_split!r} holds fewer: lower the number in the sample settings')
  return {k: v[0] for k, v in ds.batch(0).items()}


def _sampler(method: Method, devs: parallel.Devices, num: int,
             examples: dict[str, Any] | None) -> Callable:
  """(state, rng) -> `num` samples, plus what the method makes of the held-out `examples` if any."""
  draw = parallel.sampler(method.sample, devs, num)
  if examples is None:
    return draw
  from_examples = parallel.on_every_device(method.sample_from_examples, devs)
  return lambda state, rng: {**draw(state, rng), **from_examples(state, examples, jax.random.fold_in(rng, 1))}


def _write_samples(workdir: str, step: int, outputs: dict[str, Any], overwrite: bool = True) -> list[str]:
  """Writes the decoded samples into samples/, and prints any text among them with its per-sample scores."""
  paths = writers.write_samples(workdir, step, outputs, overwrite)
  if 'text' in outputs:
    _say(writers.text_document(outputs['text'], {k: v for k, v in outputs.items() if k not in ('text', 'records')})
         .rstrip('\n'))
  return paths


def _call_bounds(step: int, num_steps: int, per_call: int) -> list[tuple[int, int]]:
  """[first, end) steps of each device call from `step` on: calls end at multiples of `per_call` (or at the end).

  A run resumed from a step between multiples (it ended early, or had another steps_per_call)
  starts with a short call, so that later calls still reach the log and checkpoint steps.
  """
  if step >= num_steps:
    return []
  first_end = min((step // per_call + 1) * per_call, num_steps)
  return [(step, first_end)] + [(a, min(a + per_call, num_steps)) for a in range(first_end, num_steps, per_call)]


def train(config: ml_collections.ConfigDict, workdir: str,
          devices: Sequence[jax.Device] | None = None) -> state_lib.TrainState:
  """Trains `config` in `workdir`, resuming from its newest checkpoint; returns the final state."""
  setup_start = time.time()
  devs, ckpts, parts, recorded = _setup(config, workdir, devices, training=True)
  training = config.training
  ds = train_data(config, devs, ckpts.data_info())
  method, train_step, state = build(config, ds.info, parts, recorded)
  restored = ckpts.restore(state)
  state = parallel.replicate(method.warm_start(state) if restored is None else restored, devs)
  step = int(state.step)
  last_ckpt = step if restored is not None else None
  if restored is not None and ckpts.steps()[-1] > step:  # unreadable newer steps that the restore passed over
    parallel.barrier('restored', devs)  # no process is still reading when process 0 moves them
    if devs.process_index == 0:
      ckpts.set_aside_after(step)
    parallel.barrier('set aside', devs)
    ckpts.reload()  # every process then writes those steps anew
  writer = None
  if devs.process_index == 0:
    writers.write_json(os.path.join(workdir, 'config.json'), config.to_dict())
    writer = writers.MetricsWriter(workdir, resume_step=step)
  _say(f'{config.method}: {state_lib.param_count(state.params):,} parameters on {devs.kind}; '
       f'global batch {training.batch_size}; ' +
       (f'resuming from step {step}' if restored is not None else 'starting from step 0') +
       f' of {training.num_train_steps}' +
       (f', with the weights of init_from={config.init_from}' if restored is None and config.init_from else ''))
  for name, part in parts.items():
    _say(f'part {name}: the {part.config.method} run {part.workdir} at step {part.step}, frozen')

  p_train = parallel.train_step(train_step, devs, training.steps_per_call)
  watch = nonfinite.Watch(training.skip_nonfinite)
  eval_ds = _eval_data(config, devs, ds.info) if training.eval_every else None
  p_eval = parallel.eval_step(step_lib.eval_step(method, parallel.AXIS), devs) if training.eval_every else None
  n_quality = config.eval.num_samples_in_training if training.eval_every else 0
  quality_sampler = _quality_sampler(config, method, devs, n_quality) if n_quality > 0 else None
  p_sample = (_sampler(method, devs, method.sample_count(config.sample.num),
                       _held_out_examples(config, method, ds.info))
              if training.sample_every else None)
  calls = parallel.prefetch(([ds.batch(s) for s in range(a, b)] for a, b in
                             _call_bounds(step, training.num_train_steps, training.steps_per_call)), devs, training.steps_per_call)
  start_step, start_time = step, time.time()
  last_step, last_time = step, start_time

  def evaluate() -> None:
    nonlocal last_time
    eval_start = time.time()
    scores = _held_out_metrics(config, method, state, p_eval, eval_ds)
    if quality_sampler:
      scores.update(_sample_quality(config, method, state, devs, n_quality, quality_sampler))
    scores = {f'eval/{k}': v for k, v in scores.items()}
    if writer:
      writer.write(step, scores)
    _say(f'eval at step {step}: ' + ', '.join(f'{k} {v:.5g}' for k, v in scores.items()))
    last_time += time.time() - eval_start  # steps/s and ETA count training time only

  def draw_samples() -> None:
    nonlocal last_time
    sample_start = time.time()
    samples = p_sample(state, jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), step))
    if devs.process_index == 0:
      _say(f'samples: {", ".join(_write_samples(workdir, step, method.decode_samples(samples)))}')
    last_time += time.time() - sample_start  # steps/s and ETA count training time only

  def eval_due(s: int) -> bool:
    return eval_ds is not None and (s % training.eval_every == 0 or s == training.num_train_steps)

  def sample_due(s: int) -> bool:
    return bool(p_sample) and s % training.sample_every == 0

  # A run stopped (or killed) after the checkpoint of an eval or sample step but before its eval or
  # samples would never make them: make them first. Process 0 reads the workdir; all agree.
  if restored is not None:
    if eval_due(step) and parallel.any_process(writer is not None and not writer.has_row(step, 'eval/'), devs):
      evaluate()
    if sample_due(step) and parallel.any_process(
        devs.process_index == 0 and not writers.samples_written(workdir, step), devs):
      draw_samples()
  notice = preemption.Notice()
  notice.install()
  try:
    while step < training.num_train_steps:
      inputs = next(calls)
      state, metrics = p_train(state, inputs)
      watch.add(metrics)
      if step == start_step:
        jax.block_until_ready(metrics)
        age = process_age()
        _say(f'first step done {time.time() - setup_start:.1f}s after the run started (data, init, compile)' +
             (f', {age:.1f}s after the command' if age is not None else ''))
      step += inputs.steps
      done = step == training.num_train_steps
      do_log = step % training.log_every == 0 or done
      # A signal may reach only some processes, at different steps: they agree at log steps, so
      # all checkpoint and stop at the same one (one process checks after every call).
      stopping = (not done and (do_log or devs.process_count == 1) and
                  parallel.any_process(notice.received is not None, devs))
      do_ckpt = step % training.checkpoint_every == 0 or done or stopping
      if do_log or do_ckpt:
        metrics = watch.read(last_ckpt)  # raises on a non-finite step since the last read, unless skipping
      if do_log:
        now = time.time()
        rate = (step - last_step) / (now - last_time)
        metrics['steps_per_sec'] = rate
        metrics['examples_per_sec'] = rate * training.batch_size
        throughput = f'{metrics["examples_per_sec"]:.1f} examples/s'
        if ds.tokens_per_example:
          metrics['tokens_per_sec'] = metrics['examples_per_sec'] * ds.tokens_per_example
          throughput += f' | {metrics["tokens_per_sec"]:.0f} tokens/s'
        skipped = ''
        if training.skip_nonfinite:
          metrics[nonfinite.SKIPPED] = watch.take_skipped()
          skipped = f' | {metrics[nonfinite.SKIPPED]:.0f} non-finite steps skipped'
        if writer:
          writer.write(step, metrics)
        first = ' (incl. compile)' if last_step == start_step else ''
        _say(f'step {step}/{training.num_train_steps} | loss {metrics["loss"]:.5f} | {rate:.2f} steps/s{first} | '
             f'{throughput} | '
             f'ETA {_format_duration((training.num_train_steps - step) / rate)}{skipped}')
        last_step, last_time = step, now
      if do_ckpt:
        ckpts.save(step, state, ds.info, parts_lib.records(parts))
        last_ckpt = step
      if stopping:
        ckpts.wait()
        _say(f'{notice.received or "a signal to another process"}: stopped at step {step}, its checkpoint '
             'written; rerun the same command to resume from it')
        break
      if eval_due(step):
        evaluate()
      if sample_due(step):
        draw_samples()
  finally:
    notice.uninstall()
    ckpts.close()  # a failing or interrupted run still completes the checkpoint it was writing
    if writer:
      writer.close()
  if step >= training.num_train_steps:
    _say(f'done: step {step} in {_format_duration(time.time() - start_time)}; '
         f'checkpoints at steps {ckpts.steps()} in {workdir}/checkpoints')
  return state


def sample(config: ml_collections.ConfigDict, workdir: str,
           devices: Sequence[jax.Device] | None = None) -> dict[str, Any]:
  """Draws `config.sample.num` samples from the newest checkpoint's EMA params into samples/.

  Needs no data (what the model must know of it comes with the checkpoint) unless the
  method's sampler wants held-out examples (`Method.sample_examples`). Returns the decoded
  samples (`Method.decode_samples`).
  """
  setup = _setup(config, workdir, devices)
  method, state, data_info = _newest(config, workdir, setup)
  devs, ckpts = setup.devs, setup.ckpts
  step = int(state.step)
  start = time.time()
  draw = _sampler(method, devs, method.sample_count(config.sample.num),
                  _held_out_examples(config, method, data_info))
  outputs = method.decode_samples(draw(state, jax.random.PRNGKey(config.seed + 2)))
  if devs.process_index == 0:
    paths = _write_samples(workdir, step, outputs, overwrite=False)  # keep the training-time samples
    _say(f'{len(next(iter(outputs.values())))} samples from step {step} '
         f'in {_format_duration(time.time() - start)}: {", ".join(paths)}')
  ckpts.close()
  return outputs


def _newest(config: ml_collections.ConfigDict, workdir: str, setup: Setup) -> tuple[Method, Any, dict[str, Any]]:
  """The method, the newest checkpoint's state and its data info; without checkpoints, those of `init_from`."""
  data_info = setup.ckpts.data_info()
  if data_info is None and config.init_from:
    data_info = data.info_without_data(config.data)
    method, _, state = build(config, data_info, setup.parts, setup.recorded)
    return method, method.warm_start(state), data_info
  data_info = _checkpointed_data_info(setup.ckpts, workdir)
  method, _, state = build(config, data_info, setup.parts, setup.recorded)
  return method, _restore_latest(setup.ckpts, state, workdir), data_info


def restore_newest(config: ml_collections.ConfigDict, workdir: str) -> tuple[Method, Any, int]:
  """The method of run `workdir` (its `config`), the state of its newest checkpoint and that step."""
  setup = _setup(config, workdir, None)
  try:
    method, state, _ = _newest(config, workdir, setup)
  finally:
    setup.ckpts.close()
  return method, state, int(state.step)


def _held_out_metrics(config: ml_collections.ConfigDict, method: Method, state: Any,
                      p_eval: Callable, ds: Any) -> dict[str, float]:
  """The method's eval metrics (p_eval, mapped) over `eval.num_batches` batches (0: all) of `ds`, summarized.

  Each batch counts by its share of real examples (`ds.share`: a padded last batch, less).
  """
  e = config.eval
  num_batches = min(len(ds), e.num_batches) if e.num_batches > 0 else len(ds)
  if num_batches == 0:
    raise UserError(f'eval.batch_size={e.batch_size} is larger than the {config.data.eval_split!r} split')
  rng = jax.random.PRNGKey(config.seed + 3)
  shares = [ds.share(i) for i in range(num_batches)]
  totals: dict[str, float] = {}
  for i in range(num_batches):
    for k, v in p_eval(state, ds.batch(i), jax.random.fold_in(rng, i)).items():
      totals[k] = totals.get(k, 0.0) + float(v) * shares[i]
  means = {k: v / sum(shares) for k, v in totals.items()}
  return {'num_examples': round(sum(shares) * e.batch_size),
          **{k: float(v) for k, v in method.summarize(means).items()}}


def _quality_sampler(config: ml_collections.ConfigDict, method: Method, devs: parallel.Devices,
                     num: int) -> tuple[Callable, int]:
  """The sampler `_sample_quality` draws `num` samples with, and the samples per call."""
  per_call = min(num, config.eval.sample_batch)
  return parallel.sampler(method.sample, devs, per_call), per_call


def _sample_quality(config: ml_collections.ConfigDict, method: Method, state: Any,
                    devs: parallel.Devices, num: int, sampler: tuple[Callable, int]) -> dict[str, float]:
  """FID / IS / KID of `num` samples under every feature network at hand; {} for non-image samples.

  Samples that carry the classes they were asked for ('labels') are also scored by how often
  each classifier assigns them to that class; samples that carry their prompts ('prompts'), by
  how often they show what the prompt says (`sample_quality.image_metrics`).

  Samples are drawn by `sampler` (`_quality_sampler`) with keys of their own, apart from the
  training-time samples' keys.
  """
  from aigc_jax.evaluation import sample_quality
  draw, per_call = sampler
  rng = jax.random.PRNGKey(config.seed + 4)
  chunks = [method.decode_samples(draw(state, jax.random.fold_in(rng, i)))
            for i in range(-(-num // per_call))]
  if 'images' not in chunks[0]:
    return {}
  images = np.concatenate([c['images'] for c in chunks])[:num]
  labels = np.concatenate([c['labels'] for c in chunks])[:num] if 'labels' in chunks[0] else None
  prompts = np.concatenate([c['prompts'] for c in chunks])[:num] if 'prompts' in chunks[0] else None
  start = time.time()
  result, missing = sample_quality.image_metrics(config, images, devs, labels_N=labels, prompts_N=prompts)
  for why in missing:
    _say(f'sample quality: left out: {why}')
  _say(f'sample quality of {len(images)} samples in {_format_duration(time.time() - start)}: '
       + ', '.join(f'{k} {v:.4g}' for k, v in result.items()))
  return {'num_samples': len(images), **result}


def _eval_data(config: ml_collections.ConfigDict, devs: parallel.Devices, data_info: dict[str, Any]) -> Any:
  parallel.check_batch(config.eval.batch_size, devs, key='eval.batch_size')
  return data.create(config.data, config.data.eval_split, config.eval.batch_size, seed=config.seed,
                     process_index=devs.process_index, process_count=devs.process_count,
                     local_devices=len(devs.local), train=False, data_info=data_info or None)


def evaluate(config: ml_collections.ConfigDict, workdir: str,
             devices: Sequence[jax.Device] | None = None) -> dict[str, float]:
  """The newest checkpoint's held-out metrics (and, with eval.num_samples, sample quality) to eval_<step>.json."""
  devs, ckpts, parts, recorded = _setup(config, workdir, devices)
  ds = _eval_data(config, devs, _checkpointed_data_info(ckpts, workdir))
  method, _, state = build(config, ds.info, parts, recorded)
  state = _restore_latest(ckpts, state, workdir)
  ckpts.close()
  step = int(state.step)
  metrics = _held_out_metrics(config, method, state,
                              parallel.eval_step(step_lib.eval_step(method, parallel.AXIS), devs), ds)
  n = config.eval.num_samples
  if n > 0:
    metrics.update(_sample_quality(config, method, state, devs, n, _quality_sampler(config, method, devs, n)))
  result = {'step': step, **{k if k.startswith('num_') else f'eval/{k}': v for k, v in metrics.items()}}
  if devs.process_index == 0:
    writers.write_json(os.path.join(workdir, f'eval_{step}.json'), result)
    writers.write_tensorboard(workdir, step, {k: v for k, v in result.items() if k.startswith('eval/')})
    _say(f'eval at step {step}: {result}')
  return result
