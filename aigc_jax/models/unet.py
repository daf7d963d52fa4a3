"""The DDPM UNet of Ho et al. (2020), as in their CIFAR-10 model (35.7M parameters).

Wide ResNet blocks with GroupNorm and swish, a sinusoidal time embedding added in every
block, single-head self-attention at the chosen resolutions, skip connections from every
down-path block to the up path. Residual branches end in zero-initialised layers, so
each block starts as the identity.

Given a context (text token states [B, S, F] and their padding mask), transformer blocks as Stable
Diffusion's follow every ResBlock at `cross_attn_resolutions` (and the middle block's, at its
resolution): self-attention over the H*W positions, cross-attention from them to the context's
unmasked positions, an MLP. Without a context the UNet and its numerics are those of DDPM.
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
  args_BF = t_B.astype(jnp.float32)[:, None] * freqs[None, :]
  emb_BD = jnp.concatenate([jnp.sin(args_BF), jnp.cos(args_BF)], axis=1)
  if dim % 2:
    emb_BD = jnp.pad(emb_BD, ((0, 0), (0, 1)))
  return emb_BD


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
  def __call__(self, x_BHWC: jax.Array, temb_BD: jax.Array, train: bool) -> jax.Array:
    h = nn.swish(nn.GroupNorm(self.num_groups, dtype=self.dtype)(x_BHWC))
    h = _conv(self.out_ch, self.dtype)(h)
    h = h + nn.Dense(self.out_ch, kernel_init=_default_init, dtype=self.dtype)(
        nn.swish(temb_BD))[:, None, None, :]
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
    h_BT1C = nn.GroupNorm(self.num_groups, dtype=self.dtype)(x_BHWC).reshape(B, H * W, 1, C)  # T = H * W positions
    q_BT1C, k_BT1C, v_BT1C = (nn.Dense(C, kernel_init=_default_init, dtype=self.dtype)(h_BT1C) for _ in range(3))
    h_BHWC = jax.nn.dot_product_attention(q_BT1C, k_BT1C, v_BT1C).reshape(B, H, W, C)
    return x_BHWC + nn.Dense(C, kernel_init=_zero_init, dtype=self.dtype)(h_BHWC)


def multi_head_attention(q_BTD: jax.Array, k_BSD: jax.Array, v_BSD: jax.Array, num_heads: int,
                         mask_BS: jax.Array | None = None) -> jax.Array:
  """softmax(Q K^T / sqrt(E)) V per head over the keys that `mask_BS` (bool [B, S]) keeps, heads concatenated."""
  B, T, D = q_BTD.shape
  heads = lambda x: x.reshape(x.shape[0], x.shape[1], num_heads, D // num_heads)
  y_BTNE = jax.nn.dot_product_attention(heads(q_BTD), heads(k_BSD), heads(v_BSD),
                                        mask=None if mask_BS is None else mask_BS[:, None, None, :])
  return y_BTNE.reshape(B, T, D)


class CrossAttnBlock(nn.Module):
  """SD's spatial transformer: GN, project in, x + self-attn(LN x), x + cross-attn(LN x, context), x + MLP(LN x),
  project out (zero-initialised), residual."""
  num_heads: int
  num_groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, context_BSF: jax.Array, mask_BS: jax.Array) -> jax.Array:
    B, H, W, C = x_BHWC.shape
    dense = lambda features, **kw: nn.Dense(features, kernel_init=_default_init, dtype=self.dtype, **kw)
    h_BTC = dense(C)(nn.GroupNorm(self.num_groups, dtype=self.dtype)(x_BHWC).reshape(B, H * W, C))
    n = nn.LayerNorm(dtype=self.dtype)(h_BTC)
    h_BTC = h_BTC + dense(C)(multi_head_attention(dense(C)(n), dense(C)(n), dense(C)(n), self.num_heads))
    n = nn.LayerNorm(dtype=self.dtype)(h_BTC)
    h_BTC = h_BTC + dense(C)(multi_head_attention(dense(C)(n), dense(C)(context_BSF), dense(C)(context_BSF),
                                                  self.num_heads, mask_BS))
    n = nn.LayerNorm(dtype=self.dtype)(h_BTC)
    h_BTC = h_BTC + dense(C)(nn.gelu(dense(4 * C)(n)))
    return x_BHWC + nn.Dense(C, kernel_init=_zero_init, dtype=self.dtype)(h_BTC).reshape(B, H, W, C)


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
    cross_attn_resolutions: spatial sizes (H) at which a CrossAttnBlock follows each block, given a context.
    cross_attn_heads: attention heads of the CrossAttnBlocks (must divide the level widths there).
  """
  ch: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  num_groups: int = 32
  out_ch: int = 3
  num_classes: int = 0
  cross_attn_resolutions: Sequence[int] = ()
  cross_attn_heads: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, t_B: jax.Array, train: bool, labels_B: jax.Array | None = None,
               context_BSF: jax.Array | None = None, context_mask_BS: jax.Array | None = None) -> jax.Array:
    """`labels_B` (int32 [B], num_classes for the null class) is required when num_classes > 0; `context_BSF`
    (with its bool padding mask [B, S]) is what the CrossAttnBlocks attend to."""
    temb_BD = timestep_embedding(t_B, self.ch)
    temb_BD = nn.Dense(4 * self.ch, kernel_init=_default_init, dtype=self.dtype)(temb_BD)
    temb_BD = nn.Dense(4 * self.ch, kernel_init=_default_init, dtype=self.dtype)(nn.swish(temb_BD))
    if self.num_classes:
      temb_BD = temb_BD + nn.Embed(self.num_classes + 1, 4 * self.ch, dtype=self.dtype, name='label_embed')(labels_B)

    def res(h_BHWC, out_ch):
      return ResBlock(out_ch, self.dropout, self.num_groups, self.dtype)(h_BHWC, temb_BD, train)

    def cross_if(h_BHWC):
      if context_BSF is not None and h_BHWC.shape[1] in self.cross_attn_resolutions:
        return CrossAttnBlock(self.cross_attn_heads, self.num_groups, self.dtype)(h_BHWC, context_BSF,
                                                                                   context_mask_BS)
      return h_BHWC

    def attn_if(h_BHWC):
      if h_BHWC.shape[1] in self.attn_resolutions:
        h_BHWC = AttnBlock(self.num_groups, self.dtype)(h_BHWC)
      return cross_if(h_BHWC)

    skips_BHWC = [_conv(self.ch, self.dtype)(x_BHWC)]
    for level, mult in enumerate(self.ch_mult):
      for _ in range(self.num_res_blocks):
        skips_BHWC.append(attn_if(res(skips_BHWC[-1], self.ch * mult)))
      if level != len(self.ch_mult) - 1:
        skips_BHWC.append(_conv(skips_BHWC[-1].shape[-1], self.dtype, strides=2)(skips_BHWC[-1]))

    h_BHWC = res(skips_BHWC[-1], skips_BHWC[-1].shape[-1])
    h_BHWC = cross_if(AttnBlock(self.num_groups, self.dtype)(h_BHWC))
    h_BHWC = res(h_BHWC, h_BHWC.shape[-1])

    for level, mult in reversed(list(enumerate(self.ch_mult))):
      for _ in range(self.num_res_blocks + 1):
        h_BHWC = attn_if(res(jnp.concatenate([h_BHWC, skips_BHWC.pop()], axis=-1), self.ch * mult))
      if level != 0:
        B, H, W, C = h_BHWC.shape
        h_BHWC = jax.image.resize(h_BHWC, (B, 2 * H, 2 * W, C), 'nearest')
        h_BHWC = _conv(C, self.dtype)(h_BHWC)
    assert not skips_BHWC, 'every down-path activation is consumed by a skip connection'

    h_BHWC = nn.swish(nn.GroupNorm(self.num_groups, dtype=self.dtype)(h_BHWC))
    return _conv(self.out_ch, self.dtype, init=_zero_init)(h_BHWC).astype(jnp.float32)
