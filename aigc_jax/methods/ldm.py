"""Latent diffusion (Rombach et al. 2022): text-to-image as Stable Diffusion does it.

A frozen KL autoencoder from another run (`config.parts.autoencoder`, methods/autoencoder.py)
maps images to latents, scaled by 1 / (their std on its training data, saved with it) to about
unit variance. A diffusion model of the `aigc_jax.diffusion` package (schedule, parameterization,
any registered sampler) is trained in that latent space: a UNet with cross-attention blocks
(models/unet.py) attends to the caption's token states from a bidirectional Transformer text
encoder (models/transformer.py, `causal=False`, with the captions' padding mask), both trained
jointly. Each caption is replaced by the empty one (the start token alone) with probability
`model.caption_dropout`, so the same networks learn the unconditional model that classifier-free
guidance needs: eps = (1 + w) eps(z, caption) - w eps(z, empty), w = `sample.guidance_scale`.
Samples are decoded by the frozen autoencoder.

Prompts: `sample.prompt`, else the lines of `sample.prompts_file`, else `sample.prompts`; each is
drawn `sample.num_per_prompt` times, in prompt order.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from aigc_jax.data import captions
from aigc_jax.data import tokenizers
from aigc_jax.diffusion import guidance
from aigc_jax.diffusion import prediction
from aigc_jax.diffusion import samplers
from aigc_jax.diffusion import schedules
from aigc_jax.methods import autoencoder
from aigc_jax.methods import ddpm
from aigc_jax.methods import precision
from aigc_jax.methods.base import Batch
from aigc_jax.methods.base import Method
from aigc_jax.methods.base import Metrics
from aigc_jax.methods.base import PartSpec
from aigc_jax.methods.pixels import to_uint8
from aigc_jax.models.transformer import Transformer
from aigc_jax.models.unet import UNet
from aigc_jax.randomness import Rng
from aigc_jax.rules import Rule
from aigc_jax.rules import one_of
from aigc_jax.train.state import PARTS
from aigc_jax.train.state import TrainState

AE = 'autoencoder'


def _latent_levels(c: Any) -> list[int]:
  """The resolutions of the UNet's levels on the part's latents."""
  side = autoencoder.latent_shape(c.part)[0]
  return [side // 2**i for i in range(len(c.run.model.ch_mult))]


def _widths(c: Any) -> list[int]:
  return sorted({c.model.ch * k for k in c.model.ch_mult})


AUTOENCODER_FITS = (
    Rule('data.image_size', lambda c: (c.run.data.image_size, c.run.data.channels) == (
        c.part.data.image_size, c.part.data.channels),
         'data.image_size={run.data.image_size} and data.channels={run.data.channels}, but the autoencoder part was '
         'trained on {part.data.image_size}x{part.data.image_size} images of {part.data.channels} channels'),
    Rule('model.ch_mult', lambda c: autoencoder.latent_shape(c.part)[0] % 2 ** (len(c.run.model.ch_mult) - 1) == 0,
         lambda c: f'the autoencoder part makes {autoencoder.latent_shape(c.part)[0]}x'
                   f'{autoencoder.latent_shape(c.part)[0]} latents, which model.ch_mult={tuple(c.run.model.ch_mult)} '
                   f'cannot halve {len(c.run.model.ch_mult) - 1} times: use fewer levels'),
    Rule('model.cross_attn_resolutions', lambda c: set(c.run.model.cross_attn_resolutions) | set(
        c.run.model.attn_resolutions) <= set(_latent_levels(c)),
         lambda c: f'model.attn_resolutions and model.cross_attn_resolutions must be UNet level resolutions on the '
                   f'latents, {_latent_levels(c)}'),
)


class LDM(Method):
  """Text-to-image latent diffusion: `config.model` sizes the UNet, `config.text` the text encoder."""

  DATA_KIND = 'captioned'
  PARTS = {AE: PartSpec(methods=('autoencoder',), fits=AUTOENCODER_FITS)}
  RULES = (
      Rule('model.num_groups', lambda c: all(w % c.model.num_groups == 0 and w % c.model.cross_attn_heads == 0
                                             for w in _widths(c)),
           lambda c: f'model.num_groups={c.model.num_groups} and model.cross_attn_heads={c.model.cross_attn_heads} '
                     f'must divide every level width {_widths(c)}'),
      Rule('model.ch', lambda c: c.model.ch >= 4, 'model.ch={model.ch} must be >= 4 (the time embedding)'),
      Rule('model.caption_dropout', lambda c: 0.0 <= c.model.caption_dropout < 1.0,
           'model.caption_dropout={model.caption_dropout} must be in [0, 1)'),
      Rule('sample.guidance_scale', lambda c: c.sample.guidance_scale == 0 or c.model.caption_dropout > 0,
           'sample.guidance_scale={sample.guidance_scale} needs the unconditional model, which training teaches only '
           'with model.caption_dropout > 0 (e.g. 0.1): set it, or sample.guidance_scale=0'),
      Rule('sample.guidance_scale', lambda c: c.sample.guidance_scale >= -1.0,
           'sample.guidance_scale={sample.guidance_scale} must be >= -1 (0: the conditional model alone)'),
      Rule('sample.num_per_prompt', lambda c: c.sample.num_per_prompt >= 1,
           'sample.num_per_prompt={sample.num_per_prompt} must be >= 1'),
      Rule('text.width', lambda c: c.text.width % c.text.num_heads == 0,
           'text.num_heads={text.num_heads} must divide text.width={text.width}'),
      # each sampler call starts again at the first prompt: judge samples of one call
      Rule('eval.sample_batch', lambda c: c.eval.sample_batch >= max(c.eval.num_samples, c.eval.num_samples_in_training),
           'eval.sample_batch={eval.sample_batch} must be at least eval.num_samples={eval.num_samples} (and '
           'eval.num_samples_in_training): every sampler call starts again at the first prompt'),
      Rule('model.dtype', lambda c: c.model.dtype in precision.CHOICES,
           lambda c: f'model.dtype={c.model.dtype!r} is unknown: use one of {", ".join(precision.CHOICES)}'),
      one_of('diffusion.schedule', schedules.SCHEDULES), one_of('diffusion.prediction', prediction.PREDICTIONS),
      samplers.rules,
  )

  def __init__(self, config: ml_collections.ConfigDict, axis_name: str, data_info: dict[str, Any] | None = None,
               parts: dict[str, Any] | None = None):
    super().__init__(config, axis_name, data_info, parts)
    self.autoencoder = self.parts[AE].method
    self.latent_shape = self.autoencoder.latent_shape
    m, t = config.model, config.text
    self.tokenizer = tokenizers.from_info(data_info)
    self.caption_length = config.data.caption_length
    self.text = Transformer(vocab_size=captions.vocab_size(self.tokenizer), block_size=self.caption_length,
                            num_layers=t.num_layers, num_heads=t.num_heads, width=t.width, dropout=t.dropout,
                            causal=False)
    self.unet = UNet(ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
                     attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout, num_groups=m.num_groups,
                     out_ch=self.latent_shape[-1], cross_attn_resolutions=tuple(m.cross_attn_resolutions),
                     cross_attn_heads=m.cross_attn_heads, dtype=precision.compute_dtype(m.dtype))
    self.caption_dropout = m.caption_dropout
    self.prediction = config.diffusion.prediction
    self.schedule = schedules.from_config(config.diffusion)
    self.sampler = samplers.get(config.sample.method)
    self.sample_cfg = config.sample
    self.null_tokens_T, self.null_mask_T = (a[0] for a in captions.encode(self.tokenizer, [''], self.caption_length))
    self.prompts = captions.prompts(config.sample)
    self.prompt_tokens_PT, self.prompt_mask_PT = captions.encode(self.tokenizer, self.prompts, self.caption_length,
                                                                 what='sample prompt')

  def init(self, rng: jax.Array) -> tuple[Any, Any]:
    rng_unet, rng_text = jax.random.split(rng)
    tokens = jnp.zeros((1, self.caption_length), jnp.int32)
    mask = jnp.ones((1, self.caption_length), bool)
    text = self.text.init(rng_text, tokens, mask, method=Transformer.encode)['params']
    context = self.text.apply({'params': text}, tokens, mask, method=Transformer.encode)
    unet = self.unet.init(rng_unet, jnp.zeros((1,) + self.latent_shape), jnp.zeros((1,), jnp.int32), train=False,
                          context_BSF=context, context_mask_BS=mask)['params']
    return {'unet': unet, 'text': text}, {}

  def sample_count(self, requested: int) -> int:
    """Every prompt `sample.num_per_prompt` times."""
    del requested
    return len(self.prompts) * self.sample_cfg.num_per_prompt

  def latents(self, model_state: Any, x_BHWC: jax.Array, keys_B: jax.Array) -> jax.Array:
    """Scaled latents of images: a draw from the frozen encoder's q(z|x), times 1 / (the training latents' std)."""
    ae = model_state[PARTS][AE]
    mean, logvar = self.autoencoder.encode(ae, x_BHWC)
    eps = jax.vmap(lambda k: jax.random.normal(k, self.latent_shape))(keys_B)
    return (mean + jnp.exp(0.5 * logvar) * eps) / ae['latent_std']

  def decode(self, model_state: Any, z: jax.Array) -> jax.Array:
    """uint8 images of scaled latents, by the frozen decoder."""
    ae = model_state[PARTS][AE]
    return to_uint8(self.autoencoder.decode(ae, z * ae['latent_std']))

  def encode_text(self, params: Any, tokens_BT: jax.Array, mask_BT: jax.Array, train: bool = False,
                  rng: jax.Array | None = None) -> jax.Array:
    """The text encoder's token states [B, T, D]."""
    return self.text.apply({'params': params['text']}, tokens_BT, mask_BT, train, method=Transformer.encode,
                           rngs={'dropout': rng} if train else {})

  def _eps_fn(self, params: Any, context: tuple[jax.Array, jax.Array]) -> prediction.Denoiser:
    """eps(z_t, t_B) given the text states and their mask."""
    return prediction.denoiser(self.prediction, self.schedule, lambda z, t_B: self.unet.apply(
        {'params': params['unet']}, z, t_B, train=False, context_BSF=context[0], context_mask_BS=context[1]))

  def caption_dropped(self, batch: Batch, keys_B: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The batch's caption tokens and mask, each caption replaced by the empty one with probability caption_dropout."""
    drop_B1 = jax.vmap(lambda k: jax.random.bernoulli(k, self.caption_dropout))(keys_B)[:, None]
    return (jnp.where(drop_B1, self.null_tokens_T, batch['captions']),
            jnp.where(drop_B1, self.null_mask_T, batch['caption_mask']))

  def loss(self, params: Any, batch: Batch, rng: Rng, model_state: Any) -> tuple[jax.Array, tuple[Metrics, Any]]:
    """The MSE of the UNet's output against its target at one random timestep per example's latents."""
    B = batch['images'].shape[0]
    z0 = self.latents(model_state, batch['images'], rng.fold_in(1).examples(B))
    zt, t_B, noise = ddpm.noised(self.schedule, z0, rng.fold_in(2).examples(B))
    tokens, mask = self.caption_dropped(batch, rng.fold_in(3).examples(B))
    text_rng, unet_rng = jax.random.split(rng.fold_in(4).device())
    context = self.encode_text(params, tokens, mask, train=True, rng=text_rng)
    out = self.unet.apply({'params': params['unet']}, zt, t_B, train=True, context_BSF=context,
                          context_mask_BS=mask, rngs={'dropout': unet_rng})
    target = prediction.target(self.prediction, self.schedule, z0, t_B, noise)
    return jnp.mean(jnp.square(out - target)), ({}, model_state)

  def eval_step(self, state: TrainState, batch: Batch, rng: Rng) -> Metrics:
    """The denoising loss of the EMA params on held-out images given their captions, per example."""
    B = batch['images'].shape[0]
    z0 = self.latents(state.model_state, batch['images'], rng.fold_in(1).examples(B))
    zt, t_B, noise = ddpm.noised(self.schedule, z0, rng.fold_in(2).examples(B))
    mask = batch['caption_mask']
    eps_fn = self._eps_fn(state.ema_params, (self.encode_text(state.ema_params, batch['captions'], mask), mask))
    return {'loss': jnp.mean(jnp.square(eps_fn(zt, t_B) - noise), axis=(1, 2, 3))}

  def guided_eps(self, params: Any, tokens_BT: jax.Array, mask_BT: jax.Array, scale: float) -> prediction.Denoiser:
    """The classifier-free guided denoiser of these captions (both halves in one pass over the doubled batch)."""
    B = tokens_BT.shape[0]
    null_tokens = jnp.broadcast_to(self.null_tokens_T, (B, self.caption_length))
    null_mask = jnp.broadcast_to(self.null_mask_T, (B, self.caption_length))
    cond = (self.encode_text(params, tokens_BT, mask_BT), mask_BT)
    null = (self.encode_text(params, null_tokens, null_mask), null_mask)
    return guidance.mixed(lambda z, t_B, c: self._eps_fn(params, c)(z, t_B), cond, null, scale)

  def sample(self, state: TrainState, rng: jax.Array, num: int) -> dict[str, jax.Array]:
    """`num` images on this device: global sample g shows prompt (g // num_per_prompt) % prompts."""
    g_B = jax.lax.axis_index(self.axis_name) * num + jnp.arange(num)
    prompt_B = (g_B // self.sample_cfg.num_per_prompt) % len(self.prompts)
    eps_fn = self.guided_eps(state.ema_params, jnp.asarray(self.prompt_tokens_PT)[prompt_B],
                             jnp.asarray(self.prompt_mask_PT)[prompt_B], self.sample_cfg.guidance_scale)
    z = self.sampler(eps_fn, self.schedule, (num,) + self.latent_shape, rng, self.sample_cfg)
    return {'images': self.decode(state.model_state, z), 'prompt_index': prompt_B}

  def decode_samples(self, samples: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The images and, in their order, the prompt each shows."""
    return {'images': samples['images'], 'prompts': np.asarray([self.prompts[i] for i in samples['prompt_index']])}
