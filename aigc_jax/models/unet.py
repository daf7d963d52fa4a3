"""The DDPM UNet of Ho et al. (2020), as in their CIFAR-10 model (35.7M parameters).

Wide ResNet blocks with GroupNorm and swish, a sinusoidal time embedding added in every
block, single-head self-attention at the chosen resolutions, skip connections from every
down-path block to the up path. Residual branches end in zero-initialised layers, so
each block starts as the identity.
"""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

_default_init = nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform')
_zero_init = nn.initializers.zeros


def timestep_embedding(t_B: jax.Array, dim: int) -> jax.Array:
  """Sinusoidal embedding of (integer) timesteps, [B] -> [B, dim] (Transformer style)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
  args_BH = t_B.astype(jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(args_BH), jnp.cos(args_BH)], axis=1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def _conv(features: int, dtype: Any, strides: int = 1, init=_default_init) -> nn.Conv:
  return nn.Conv(features, (3, 3), strides=(strides, strides), padding='SAME',
                 kernel_init=init, dtype=dtype)


class ResBlock(nn.Module):
  """GN-swish-conv, + time embedding, GN-swish-dropout-conv(zero), 1x1 shortcut if widths differ."""
  out_ch: int
  dropout: float
  num_groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, temb_BE: jax.Array, train: bool) -> jax.Array:
    h = nn.swish(nn.GroupNorm(self.num_groups, dtype=self.dtype)(x_BHWC))
    h = _conv(self.out_ch, self.dtype)(h)
    h = h + nn.Dense(self.out_ch, kernel_init=_default_init, dtype=self.dtype)(
        nn.swish(temb_BE))[:, None, None, :]
    h = nn.swish(nn.GroupNorm(self.num_groups, dtype=self.dtype)(h))
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    h = _conv(self.out_ch, self.dtype, init=_zero_init)(h)
    if x_BHWC.shape[-1] != self.out_ch:
      x_BHWC = nn.Dense(self.out_ch, kernel_init=_default_init, dtype=self.dtype)(x_BHWC)
    return x_BHWC + h


class AttnBlock(nn.Module):
  """Single-head self-attention over all H*W positions, residual, zero-initialised output."""
  num_groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    B, H, W, C = x_BHWC.shape
    h = nn.GroupNorm(self.num_groups, dtype=self.dtype)(x_BHWC).reshape(B, H * W, 1, C)
    q, k, v = (nn.Dense(C, kernel_init=_default_init, dtype=self.dtype)(h) for _ in range(3))
    h = jax.nn.dot_product_attention(q, k, v).reshape(B, H, W, C)
    return x_BHWC + nn.Dense(C, kernel_init=_zero_init, dtype=self.dtype)(h)


class UNet(nn.Module):
  """Predicts the noise eps in x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps.

  Attributes:
    ch: base width; level i has ch * ch_mult[i] channels.
    ch_mult: width multipliers, one per resolution level (each but the last halves H, W).
    num_res_blocks: ResBlocks per level on the down path (one more on the up path).
    attn_resolutions: spatial sizes (H) at which self-attention follows each block.
    dropout: dropout rate inside the ResBlocks (train only).
    num_groups: GroupNorm groups.
    out_ch: output channels (the image's).
    num_classes: > 0 makes the model class-conditional: a learned embedding of the label
      (num_classes + 1 rows, the last the "null" class of no label) is added to the time
      embedding. 0 adds no parameters and takes no label.
  """
  ch: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  num_groups: int = 32
  out_ch: int = 3
  num_classes: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, t_B: jax.Array, train: bool,
               label_B: jax.Array | None = None) -> jax.Array:
    """`label_B` (int32 [B], num_classes for the null class) is required when num_classes > 0."""
    temb = timestep_embedding(t_B, self.ch)
    temb = nn.Dense(4 * self.ch, kernel_init=_default_init, dtype=self.dtype)(temb)
    temb = nn.Dense(4 * self.ch, kernel_init=_default_init, dtype=self.dtype)(nn.swish(temb))
    if self.num_classes:
      temb = temb + nn.Embed(self.num_classes + 1, 4 * self.ch, dtype=self.dtype, name='label_embed')(label_B)

    def res(h, out_ch):
      return ResBlock(out_ch, self.dropout, self.num_groups, self.dtype)(h, temb, train)

    def attn_if(h):
      if h.shape[1] in self.attn_resolutions:
        return AttnBlock(self.num_groups, self.dtype)(h)
      return h

    hs = [_conv(self.ch, self.dtype)(x_BHWC)]
    for level, mult in enumerate(self.ch_mult):
      for _ in range(self.num_res_blocks):
        hs.append(attn_if(res(hs[-1], self.ch * mult)))
      if level != len(self.ch_mult) - 1:
        hs.append(_conv(hs[-1].shape[-1], self.dtype, strides=2)(hs[-1]))

    h = res(hs[-1], hs[-1].shape[-1])
    h = AttnBlock(self.num_groups, self.dtype)(h)
    h = res(h, h.shape[-1])

    for level, mult in reversed(list(enumerate(self.ch_mult))):
      for _ in range(self.num_res_blocks + 1):
        h = attn_if(res(jnp.concatenate([h, hs.pop()], axis=-1), self.ch * mult))
      if level != 0:
        B, H, W, C = h.shape
        h = jax.image.resize(h, (B, 2 * H, 2 * W, C), 'nearest')
        h = _conv(C, self.dtype)(h)
    assert not hs, 'every down-path activation is consumed by a skip connection'

    h = nn.swish(nn.GroupNorm(self.num_groups, dtype=self.dtype)(h))
    return _conv(self.out_ch, self.dtype, init=_zero_init)(h).astype(jnp.float32)
