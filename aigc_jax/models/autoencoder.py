"""The KL autoencoder of latent diffusion (Rombach et al. 2022, the KL-f models) and its patch discriminator.

The encoder maps images [B, H, W, C] to the mean and log-variance of a diagonal Gaussian over
latents [B, H/f, W/f, Z] (f = 2**(len(ch_mult) - 1)); the decoder maps latents back to images.
Both are convolutional: per level `num_res_blocks` ResNet blocks (GroupNorm, swish), a stride-2
conv down (encoder) or a nearest 2x upsampling and a conv up (decoder, faster than a transposed
conv on XLA:CPU). The discriminator is pix2pix's PatchGAN, one logit per overlapping patch.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class ResBlock(nn.Module):
  """x + conv(swish(GN(conv(swish(GN(x)))))), a 1x1 projection of x where the width changes."""
  out_ch: int
  num_groups: int

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    h = nn.Conv(self.out_ch, (3, 3))(nn.swish(nn.GroupNorm(self.num_groups)(x_BHWC)))
    h = nn.Conv(self.out_ch, (3, 3))(nn.swish(nn.GroupNorm(self.num_groups)(h)))
    if x_BHWC.shape[-1] != self.out_ch:
      x_BHWC = nn.Dense(self.out_ch)(x_BHWC)
    return x_BHWC + h


class Encoder(nn.Module):
  """Images -> (mean, log-variance) of q(z|x), each [B, H/f, W/f, z_channels]."""
  ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  z_channels: int
  num_groups: int

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = nn.Conv(self.ch, (3, 3))(x_BHWC)
    for level, mult in enumerate(self.ch_mult):
      for _ in range(self.num_res_blocks):
        h = ResBlock(self.ch * mult, self.num_groups)(h)
      if level != len(self.ch_mult) - 1:
        h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2))(h)
    h = nn.Conv(2 * self.z_channels, (3, 3))(nn.swish(nn.GroupNorm(self.num_groups)(h)))
    mean, logvar = jnp.split(h, 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)  # as SD's DiagonalGaussianDistribution


class Decoder(nn.Module):
  """Latents [B, H/f, W/f, Z] -> images [B, H, W, out_ch] (unbounded; the data are in [-1, 1])."""
  ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  out_ch: int
  num_groups: int

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    h = nn.Conv(self.ch * self.ch_mult[-1], (3, 3))(z)
    for level, mult in reversed(list(enumerate(self.ch_mult))):
      for _ in range(self.num_res_blocks):
        h = ResBlock(self.ch * mult, self.num_groups)(h)
      if level != 0:
        B, H, W, C = h.shape
        h = nn.Conv(C, (3, 3))(jax.image.resize(h, (B, 2 * H, 2 * W, C), 'nearest'))
    return nn.Conv(self.out_ch, (3, 3))(nn.swish(nn.GroupNorm(self.num_groups)(h)))


class Autoencoder(nn.Module):
  """An encoder and a decoder; calling it reconstructs from z = mean + exp(logvar / 2) * eps."""
  encoder: Encoder
  decoder: Decoder

  def __call__(self, x_BHWC: jax.Array, eps: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(mean, logvar, z, reconstruction) at the drawn z."""
    mean, logvar = self.encode(x_BHWC)
    z = mean + jnp.exp(0.5 * logvar) * eps
    return mean, logvar, z, self.decode(z)

  def encode(self, x_BHWC: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.encoder(x_BHWC)

  def decode(self, z: jax.Array) -> jax.Array:
    return self.decoder(z)


class PatchDiscriminator(nn.Module):
  """PatchGAN (Isola et al. 2017): 4x4 stride-2 convs with LeakyReLU 0.2, then a 4x4 conv to one logit per patch.

  No normalization layer, so that a patch's logit depends on its own image alone.
  """
  ch: int
  num_layers: int

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    h = x_BHWC
    for i in range(self.num_layers):
      h = nn.leaky_relu(nn.Conv(self.ch * 2**i, (4, 4), strides=(2, 2))(h), 0.2)
    return nn.Conv(1, (4, 4))(h)[..., 0]
