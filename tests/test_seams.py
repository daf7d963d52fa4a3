"""The seams a new method builds on: a frozen part from another run, and a sampler registered in a few lines."""

import json
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from aigc_jax import methods
from aigc_jax.diffusion import process
from aigc_jax.diffusion import samplers
from aigc_jax.errors import UserError
from aigc_jax.methods.base import Method
from aigc_jax.methods.base import PartSpec
from aigc_jax.models.vae import VAE as VAEModel
from aigc_jax.rules import Rule
from aigc_jax.train import checkpoint
from aigc_jax.train import loop
from aigc_jax.train import parallel
from aigc_jax.train import state as state_lib
from configs import classifier_digits
from tests.conftest import ROOT
from tests.conftest import one_level_ddpm_config
from tests.conftest import process_env
from tests.conftest import restore_newest
from tests.conftest import shrink_training
from tests.test_vae import tiny_vae_config


class LatentProbe(Method):
  """A linear classifier of the digits on the posterior means of a frozen VAE encoder (the part 'encoder')."""

  PARTS = {'encoder': PartSpec(methods=('vae',), fits=(
      Rule('data.image_size', lambda c: c.run.data.image_size == c.part.data.image_size,
           'data.image_size={run.data.image_size}, but the encoder part was trained on images of size '
           '{part.data.image_size}'),))}

  def __init__(self, config, axis_name, data_info=None, parts=None):
    super().__init__(config, axis_name, data_info, parts)
    self.image_shape = (config.data.image_size, config.data.image_size, config.data.channels)
    self.vae = self.parts['encoder'].method
    self.head = nn.Dense(config.model.num_classes)

  def init(self, rng):
    return self.head.init(rng, jnp.zeros((1, self.vae.latents)))['params'], {}

  def logits(self, params, model_state, x_BHWC):
    mean_BZ, _ = self.vae.model.apply({'params': model_state[state_lib.PARTS]['encoder']}, x_BHWC,
                                      method=VAEModel.encode)
    return self.head.apply({'params': params}, mean_BZ)

  def loss(self, params, batch, rng, model_state):
    logits_BK = self.logits(params, model_state, batch['images'])
    return optax.softmax_cross_entropy_with_integer_labels(logits_BK, batch['labels']).mean(), ({}, model_state)

  def eval_step(self, state, batch, rng):
    logits_BK = self.logits(state.ema_params, state.model_state, batch['images'])
    return {'loss': optax.softmax_cross_entropy_with_integer_labels(logits_BK, batch['labels'])}


@pytest.fixture(autouse=True)
def _probe_registered(monkeypatch):
  monkeypatch.setitem(methods.REGISTRY, 'latent_probe', LatentProbe)


def probe_config(encoder: str):
  config = shrink_training(classifier_digits.get_config())
  config.method = 'latent_probe'
  config.data.binarize = 0.5  # as the VAE saw the digits
  config.training.update({'sample_every': 0, 'ema_rate': 0.0})
  config.optim.lr = 0.05
  config.eval.num_batches = 2
  config.parts.encoder = encoder
  return config


@pytest.fixture(scope='module')
def vae_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('vae'))
  config = tiny_vae_config()
  config.training.sample_every = 0
  loop.train(config, workdir)
  return workdir


def _encoder_params(workdir):
  return restore_newest(tiny_vae_config(), workdir)[1].ema_params


def _assert_equal(a, b):
  leaves_a, leaves_b = jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)


def test_a_part_is_its_runs_ema_params_frozen_used_and_saved_with_the_checkpoints(vae_run, tmp_path):
  probe = str(tmp_path / 'probe')
  state = loop.train(probe_config(vae_run), probe)
  encoder = _encoder_params(vae_run)
  _assert_equal(state.model_state[state_lib.PARTS]['encoder'], encoder)  # the VAE's step-4 EMA params, untouched
  ckpts = checkpoint.Checkpoints(os.path.join(probe, 'checkpoints'), 3)
  record = ckpts.run_info()['parts']['encoder']
  ckpts.close()
  assert record['workdir'] == os.path.abspath(vae_run) and record['step'] == 4 and record['config']['method'] == 'vae'

  # The probe's held-out loss, computed independently: encode with the VAE's own params, then the head.
  result = loop.evaluate(probe_config(vae_run), probe)
  config = probe_config(vae_run)
  from aigc_jax.data import images
  x, y = images.load(config.data, 'test')
  x = x[:16].astype(np.float32) / 127.5 - 1.0
  vae_model = methods.get_method(tiny_vae_config(), parallel.AXIS).model
  mean_BZ, _ = vae_model.apply({'params': encoder}, x, method=VAEModel.encode)
  head = jax.device_get(state.ema_params)
  logits = np.asarray(mean_BZ) @ head['kernel'] + head['bias']
  want = np.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y[:16]))
  np.testing.assert_allclose(result['eval/loss'], want, rtol=1e-5)


def test_a_resumed_or_evaluated_run_uses_the_part_it_trained_with_after_that_run_is_gone(vae_run, tmp_path):
  source = str(tmp_path / 'vae')
  shutil.copytree(vae_run, source)
  probe = str(tmp_path / 'probe')
  loop.train(probe_config(source), probe)
  shutil.rmtree(source)  # the part's run is deleted (or trains on)
  config = probe_config('')  # sampling or resuming needs no part setting: the checkpoint has it
  config.training.num_train_steps = 6
  state = loop.train(config, probe)
  assert int(state.step) == 6
  _assert_equal(state.model_state[state_lib.PARTS]['encoder'], _encoder_params(vae_run))
  assert np.isfinite(loop.evaluate(probe_config(source), probe)['eval/loss'])
  with pytest.raises(UserError, match=r'parts.encoder=.*other, but this run trained with .*vae@4 \(saved with its '
                                      r'checkpoints\): set parts.encoder back to it'):
    loop.evaluate(probe_config(str(tmp_path / 'other')), probe)


def test_bad_parts_are_one_clear_line_before_anything_compiles(vae_run, tmp_path, monkeypatch):
  def fails(encoder, message, **changes):
    config = probe_config(encoder)
    for key, value in changes.items():
      section, name = key.split('.')
      config[section][name] = value
    with pytest.raises(UserError, match=message):
      loop.train(config, str(tmp_path / 'w'))
  monkeypatch.setattr(jax, 'jit', lambda *a, **k: pytest.fail('compiled before the error'))
  fails('', r"parts.encoder is not set: method 'latent_probe' builds on a trained vae run: give its workdir, "
            r'--config.parts.encoder=DIR \(or DIR@STEP\)')
  fails(str(tmp_path / 'nowhere'), r'parts.encoder=.*nowhere: no run there \(.*config.json is missing\)')
  fails(f'{vae_run}@3', r'parts.encoder=.*@3: that run has no checkpoint of step 3 \(it has \[2, 4\]\)')
  fails(f'{vae_run}@x', r"a part is <workdir> or <workdir>@<step>, not '.*@x'")
  ddpm = str(tmp_path / 'ddpm')
  os.makedirs(ddpm)
  with open(os.path.join(ddpm, 'config.json'), 'w') as f:
    json.dump(one_level_ddpm_config().to_dict(), f)
  fails(ddpm, r"parts.encoder=.*ddpm is a method='ddpm' run, but this part must be a 'vae' run")
  fails(vae_run, r'data.image_size=16, but the encoder part was trained on images of size 8', **{
      'data.image_size': 16, 'data.pad': 4})
  config = probe_config(vae_run)
  config.parts.decoder = vae_run
  with pytest.raises(UserError, match=r"config.parts.decoder: method 'latent_probe' takes no part of that name "
                                      r'\(it takes: encoder\)'):
    loop.train(config, str(tmp_path / 'w'))


def _one_shot(eps_fn, schedule, shape, rng, settings):
  """A toy sampler: x_0 predicted from pure noise at the last timestep, in one network call."""
  del settings
  x = jax.random.normal(rng, shape)
  t_B = jnp.full((shape[0],), schedule.num_timesteps - 1, jnp.int32)
  return jnp.clip(process.predict_x0(schedule, x, t_B, eps_fn(x, t_B)), -1.0, 1.0)


def register_one_shot():
  samplers.register('one_shot')(_one_shot)


def test_a_sampler_registered_in_a_few_lines_samples_through_sample_mode(tmp_path, monkeypatch):
  config = one_level_ddpm_config()
  config.training.sample_every = 0
  workdir = str(tmp_path / 'w')
  state = jax.device_get(loop.train(config, workdir))
  script = tmp_path / 'run_with_one_shot.py'
  script.write_text('import sys\n'
                    f'sys.path.insert(0, {str(ROOT)!r})\n'
                    'from absl import app\n'
                    'import run\n'
                    'from aigc_jax import cli\n'
                    'from tests.test_seams import register_one_shot\n'
                    'register_one_shot()\n'
                    'app.run(run.main, flags_parser=cli.parse_flags)\n')
  shape_flags = [f'--config.model.{k}={v}' for k, v in config.model.items()] + [
      f'--config.diffusion.num_timesteps={config.diffusion.num_timesteps}']
  result = subprocess.run([sys.executable, str(script), '--config=configs/ddpm_digits.py', f'--workdir={workdir}',
                           '--mode=sample', '--config.sample.method=one_shot', '--config.sample.num=6',
                           *shape_flags], cwd=ROOT, env=process_env(4), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert '6 samples from step 4' in result.stdout
  with np.load(os.path.join(workdir, 'samples', 'step_4.npz')) as z:  # training drew none
    written = z['images']

  monkeypatch.setitem(samplers.REGISTRY, 'one_shot', samplers.Sampler(_one_shot, ()))
  config.sample.update(method='one_shot', num=6)
  method = methods.get_method(config, parallel.AXIS)
  want = parallel.sampler(method.sample, parallel.devices(), 6)(state, jax.random.PRNGKey(config.seed + 2))
  np.testing.assert_array_equal(written, want['images'])
  config.sample.method = 'ddim'
  other = parallel.sampler(methods.get_method(config, parallel.AXIS).sample, parallel.devices(), 6)(
      state, jax.random.PRNGKey(config.seed + 2))
  assert not np.array_equal(written, other['images'])
  unknown = ml_collections.ConfigDict(config.to_dict())
  unknown.sample.method = 'two_shot'
  with pytest.raises(UserError, match=r"sample.method='two_shot' is unknown: use one of 'ancestral', 'ddim', "
                                      r"'one_shot'"):
    methods.check_config(unknown)
