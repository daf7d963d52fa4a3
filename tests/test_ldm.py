"""Text-to-image: the KL autoencoder, cross-attention that ignores padding, and latent diffusion on a frozen part."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aigc_jax.data import captions
from aigc_jax.models.transformer import Transformer
from aigc_jax.models.unet import UNet
from aigc_jax.train import loop
from aigc_jax.train import parallel
from aigc_jax.train import parts as parts_lib
from aigc_jax.train import state as state_lib
from configs import autoencoder_scenes
from configs import ldm_scenes
from tests.conftest import build
from tests.conftest import restore_newest
from tests.conftest import shrink_training

WORDS = ('red cat', 'dog', 'big ship', 'a b c', 'cat dog', 'sun')


@pytest.fixture(scope='module')
def captioned_npz(tmp_path_factory):
  """24 random 8x8 RGB images with short captions; the last 8 held out."""
  path = str(tmp_path_factory.mktemp('data') / 'captioned.npz')
  x = np.random.default_rng(0).integers(0, 256, (24, 8, 8, 3), np.uint8)
  np.savez(path, images=x, captions=np.array([WORDS[i % len(WORDS)] for i in range(24)]))
  return path


def tiny_autoencoder_config(npz: str, disc_weight: float = 0.0):
  config = shrink_training(autoencoder_scenes.get_config())
  config.data.update({'image_folder': '', 'npz_path': npz, 'npz_holdout': 8, 'image_size': 8})
  config.model.update({'ch': 8, 'ch_mult': (1, 2), 'num_groups': 4, 'disc_ch': 8, 'disc_layers': 1})
  config.autoencoder.update({'disc_weight': disc_weight, 'disc_start': 1})
  config.training.update({'sample_every': 0, 'ema_rate': 0.5})
  config.sample.num_examples = 4
  return config


def tiny_ldm_config(npz: str, autoencoder: str):
  config = shrink_training(ldm_scenes.get_config())
  config.data.update({'image_folder': '', 'npz_path': npz, 'npz_holdout': 8, 'image_size': 8,
                      'caption_length': 10})
  config.parts.autoencoder = autoencoder
  config.model.update({'ch': 8, 'ch_mult': (1,), 'cross_attn_resolutions': (4,), 'cross_attn_heads': 2,
                       'num_groups': 4, 'caption_dropout': 0.25})
  config.text.update({'num_layers': 1, 'num_heads': 2, 'width': 8})
  config.diffusion.num_timesteps = 10
  config.sample.update({'steps': 2, 'prompts': ('cat', 'red cat'), 'num_per_prompt': 2})
  config.training.update({'sample_every': 4, 'ema_rate': 0.5})
  config.eval.update({'batch_size': 8, 'num_batches': 1})
  return config


@pytest.fixture(scope='module')
def autoencoder_run(tmp_path_factory, captioned_npz):
  workdir = str(tmp_path_factory.mktemp('ae'))
  loop.train(tiny_autoencoder_config(captioned_npz), workdir)
  return workdir


@pytest.fixture(scope='module')
def ldm_run(tmp_path_factory, captioned_npz, autoencoder_run):
  workdir = str(tmp_path_factory.mktemp('ldm'))
  state = loop.train(tiny_ldm_config(captioned_npz, autoencoder_run), workdir)
  return workdir, jax.device_get(state)


def _batch(x_uint8, devices):
  x = x_uint8.astype(np.float32) / 127.5 - 1.0
  return x.reshape((devices, -1) + x.shape[1:])


def _one_and_four_devices(train_step, state, batch_fn):
  results = []
  for devs in (parallel.devices(jax.devices()[:1]), parallel.devices()):
    step = parallel.train_step(train_step, devs, donate=False)
    results.append(jax.device_get(step(state, [batch_fn(len(devs.local))])))
  assert len(parallel.devices().local) == 4
  for one, four in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
    np.testing.assert_allclose(one, four, atol=1e-5, rtol=1e-5)
  return results[0]


def test_autoencoder_with_discriminator_steps_alike_on_4_devices_and_tracks_the_latent_std(captioned_npz):
  config = tiny_autoencoder_config(captioned_npz, disc_weight=0.5)
  config.autoencoder.latent_std_rate = 0.0  # the std of this batch's latents alone
  method, train_step, state = build(config)
  x = np.random.default_rng(1).integers(0, 256, (8, 8, 8, 3), np.uint8)
  new, metrics = _one_and_four_devices(train_step, state, lambda d: {'images': _batch(x, d)})
  # step 0 is before disc_start: the discriminator's gradient is 0, so Adam leaves it as it was
  for a, b in zip(jax.tree.leaves(jax.device_get(state.params['discriminator'])),
                  jax.tree.leaves(new.params['discriminator'])):
    np.testing.assert_array_equal(a, b)
  assert 'd_loss' in metrics and 'g_loss' in metrics
  # the std of the latents the step drew, recomputed from the params it started from and its keys
  rng = jax.random.fold_in(jax.device_get(state.rng), 0)
  keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.split(rng, 2)[0], jnp.arange(8))
  eps = jax.vmap(lambda k: jax.random.normal(k, method.latent_shape))(keys)
  mean, logvar = method.encode({'params': state.params['autoencoder']}, _batch(x, 1)[0])
  z = mean + jnp.exp(0.5 * logvar) * eps
  np.testing.assert_allclose(method.latent_std(new.model_state), np.std(np.asarray(z)), rtol=1e-4)


def test_cross_attention_and_the_text_encoder_ignore_padded_positions():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 4, 4, 8)), jnp.float32)
  t = jnp.array([3, 7])
  mask = jnp.array([[True, True, False, False, False], [True, False, False, False, False]])
  context = jnp.asarray(rng.normal(size=(2, 5, 6)), jnp.float32)
  garbage = jnp.where(mask[..., None], context, 100.0 * rng.normal(size=(2, 5, 6)))
  unet = UNet(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), num_groups=4, out_ch=8,
              cross_attn_resolutions=(4,), cross_attn_heads=2, dropout=0.0)
  params = unet.init(jax.random.PRNGKey(0), x, t, train=False, context_BSF=context, context_mask_BS=mask)['params']
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params)  # no zero
  out = unet.apply({'params': params}, x, t, train=False, context_BSF=context, context_mask_BS=mask)
  np.testing.assert_array_equal(out, unet.apply({'params': params}, x, t, train=False, context_BSF=garbage,
                                                context_mask_BS=mask))
  changed = context.at[0, 1].add(1.0)  # a real position
  assert not np.allclose(out, unet.apply({'params': params}, x, t, train=False, context_BSF=changed,
                                         context_mask_BS=mask))
  # without a context the UNet is DDPM's: the same params and outputs as one built without cross-attention
  plain = UNet(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), num_groups=4, out_ch=8, dropout=0.0)
  plain_params = plain.init(jax.random.PRNGKey(0), x, t, train=False)['params']
  assert jax.tree.structure(plain_params) == jax.tree.structure(
      unet.init(jax.random.PRNGKey(0), x, t, train=False)['params'])
  np.testing.assert_array_equal(plain.apply({'params': plain_params}, x, t, train=False),
                                unet.apply({'params': plain_params}, x, t, train=False))

  text = Transformer(vocab_size=11, block_size=5, num_layers=1, num_heads=2, width=8, causal=False)
  tokens = jnp.array([[10, 3, 0, 0, 0], [10, 0, 0, 0, 0]])
  tp = text.init(jax.random.PRNGKey(2), tokens, mask, method=Transformer.encode)['params']
  h = text.apply({'params': tp}, tokens, mask, method=Transformer.encode)
  h2 = text.apply({'params': tp}, jnp.where(mask, tokens, 7), mask, method=Transformer.encode)
  np.testing.assert_allclose(jnp.where(mask[..., None], h, 0), jnp.where(mask[..., None], h2, 0), atol=1e-6)
  h3 = text.apply({'params': tp}, tokens.at[0, 1].set(4), mask, method=Transformer.encode)
  assert not np.allclose(h[0, 0], h3[0, 0])  # bidirectional: position 0 sees position 1


def test_the_latent_method_reads_its_frozen_autoencoder_from_the_part_and_never_updates_it(
    ldm_run, autoencoder_run, captioned_npz):
  workdir, state = ldm_run
  ae_method, ae_state = restore_newest(tiny_autoencoder_config(captioned_npz), autoencoder_run)
  want = ae_method.part_variables(ae_state)
  got = state.model_state[state_lib.PARTS]['autoencoder']
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b)
  assert 0.0 < float(got['latent_std']) != 1.0
  with np.load(os.path.join(workdir, 'samples', 'step_4.npz')) as f:
    assert f['images'].shape == (4, 8, 8, 3) and f['images'].dtype == np.uint8
    assert list(f['prompts']) == ['cat', 'cat', 'red cat', 'red cat']
  assert os.path.isfile(os.path.join(workdir, 'samples', 'step_4.png'))


def test_ldm_step_on_4_devices_equals_1_device_and_guidance_0_is_the_conditional_model(
    ldm_run, autoencoder_run, captioned_npz):
  config = tiny_ldm_config(captioned_npz, autoencoder_run)
  ds = loop.train_data(config, parallel.devices(jax.devices()[:1]))
  method, train_step, state = loop.build(config, ds.info, parts_lib.resolve(config, parallel.AXIS))
  batch = {k: v[0] for k, v in ds.batch(0).items()}
  _one_and_four_devices(train_step, state, lambda d: jax.tree.map(lambda a: a.reshape((d, -1) + a.shape[1:]), batch))

  # the trained params perturbed: after 4 steps the zero-initialised output layers still hide the captions
  leaves, tree = jax.tree.flatten(ldm_run[1].ema_params)
  keys = jax.random.split(jax.random.PRNGKey(4), len(leaves))
  params = jax.tree.unflatten(tree, [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
  tokens, mask = jnp.asarray(batch['captions'][:4]), jnp.asarray(batch['caption_mask'][:4])
  shape = (4,) + method.latent_shape
  key = jax.random.PRNGKey(3)
  guided = method.sampler(method.guided_eps(params, tokens, mask, 0.0), method.schedule, shape, key, config.sample)
  conditional = method.sampler(method._eps_fn(params, (method.encode_text(params, tokens, mask), mask)),
                               method.schedule, shape, key, config.sample)
  np.testing.assert_allclose(guided, conditional, atol=1e-5)
  strong = method.sampler(method.guided_eps(params, tokens, mask, 3.0), method.schedule, shape, key, config.sample)
  assert not np.allclose(strong, conditional, atol=1e-3)


def test_prompts_file_gives_the_npz_in_prompt_order(ldm_run, autoencoder_run, captioned_npz, tmp_path):
  workdir, state = ldm_run
  prompts = tmp_path / 'prompts.txt'
  prompts.write_text('dog\n\nbig ship\nsun\n')
  config = tiny_ldm_config(captioned_npz, autoencoder_run)
  config.sample.update({'prompts_file': str(prompts), 'num_per_prompt': 2, 'guidance_scale': 1.5})
  devs = jax.devices()[:1]
  out = loop.sample(config, workdir, devices=devs)
  assert list(out['prompts']) == ['dog', 'dog', 'big ship', 'big ship', 'sun', 'sun']
  with np.load(os.path.join(workdir, 'samples', 'step_4_1.npz')) as f:
    np.testing.assert_array_equal(f['images'], out['images'])
    assert list(f['prompts']) == list(out['prompts'])
  # the images are those of the prompts in that order, drawn with the sampler's key by hand
  info = loop.train_data(config, parallel.devices(devs)).info
  method = loop.build(config, info, parts_lib.resolve(config, parallel.AXIS)).method
  tokens, mask = captions.encode(method.tokenizer, list(out['prompts']), 10)
  key = jax.random.split(jax.random.PRNGKey(config.seed + 2), 1)[0]
  z = method.sampler(method.guided_eps(state.ema_params, jnp.asarray(tokens), jnp.asarray(mask), 1.5),
                     method.schedule, (6,) + method.latent_shape, key, config.sample)
  by_hand = np.asarray(method.decode(state.model_state, z)).astype(int)
  assert np.abs(out['images'].astype(int) - by_hand).max() <= 1  # jit vs pmap rounding of uint8 at most
  assert np.abs(by_hand[0] - by_hand[2]).max() > 8  # and other prompts make other images
