"""VAE encoders and decoders: an MLP pair for small (e.g. 28x28 binarized) images, a convolutional pair for 32x32 RGB.

An encoder maps images [B, H, W, C] to the mean and log-variance of a diagonal Gaussian
q(z|x) over `latents` dimensions; a decoder maps latents [B, Z] to the parameters of p(x|z)
per pixel, [B, H, W, out_ch] (Bernoulli logits, or a logistic's mean and log-scale). What
those parameters mean is the method's business.
"""

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class MLPEncoder(nn.Module):
  """Flattened pixels -> `hidden` ReLU units -> (mean, log-variance) of `latents` (the Flax example's encoder)."""
  hidden: int
  latents: int

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> tuple[jax.Array, jax.Array]:
    h_BD = nn.relu(nn.Dense(self.hidden)(x_BHWC.reshape(x_BHWC.shape[0], -1)))
    return nn.Dense(self.latents)(h_BD), nn.Dense(self.latents)(h_BD)


class MLPDecoder(nn.Module):
  """Latents -> `hidden` ReLU units -> H*W*out_ch parameters, shaped [B, H, W, out_ch]."""
  hidden: int
  out_shape: tuple[int, int, int]

  @nn.compact
  def __call__(self, z_BZ: jax.Array) -> jax.Array:
    h_BD = nn.relu(nn.Dense(self.hidden)(z_BZ))
    return nn.Dense(math.prod(self.out_shape))(h_BD).reshape((-1,) + self.out_shape)


class ConvEncoder(nn.Module):
  """Per level: a 3x3 conv, then a 4x4 stride-2 conv that halves H and W; flattened -> (mean, log-variance)."""
  ch: int
  ch_mult: Sequence[int]
  latents: int

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = x_BHWC
    for mult in self.ch_mult:
      h = nn.swish(nn.Conv(self.ch * mult, (3, 3))(h))
      h = nn.swish(nn.Conv(self.ch * mult, (4, 4), strides=(2, 2))(h))
    h_BD = h.reshape(h.shape[0], -1)
    return nn.Dense(self.latents)(h_BD), nn.Dense(self.latents)(h_BD)


class ConvDecoder(nn.Module):
  """The encoder mirrored: latents -> a (H/2^L, W/2^L) feature map -> per level a nearest 2x
  upsampling, then two 3x3 convs -> a 3x3 conv to out_ch parameters per pixel.

  Upsample-then-conv rather than a transposed conv: as good, and its gradient runs about 10x
  faster on XLA:CPU.
  """
  ch: int
  ch_mult: Sequence[int]
  out_shape: tuple[int, int, int]

  @nn.compact
  def __call__(self, z_BZ: jax.Array) -> jax.Array:
    H, W, out_ch = self.out_shape
    down = 2 ** len(self.ch_mult)
    width = self.ch * self.ch_mult[-1]
    h = nn.swish(nn.Dense((H // down) * (W // down) * width)(z_BZ))
    h = h.reshape(-1, H // down, W // down, width)
    for mult in reversed(self.ch_mult):
      B, h_, w_, c = h.shape
      h = jax.image.resize(h, (B, 2 * h_, 2 * w_, c), 'nearest')
      h = nn.swish(nn.Conv(self.ch * mult, (3, 3))(h))
      h = nn.swish(nn.Conv(self.ch * mult, (3, 3))(h))
    return nn.Conv(out_ch, (3, 3))(h)


class VAE(nn.Module):
  """An encoder and a decoder; calling it runs both, with z = mean + exp(logvar / 2) * eps (reparameterized)."""
  encoder: nn.Module
  decoder: nn.Module

  def __call__(self, x_BHWC: jax.Array, eps_BZ: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(mean, logvar) of q(z|x) [B, Z] and the decoder's output [B, H, W, out_ch] at the drawn z."""
    mean_BZ, logvar_BZ = self.encode(x_BHWC)
    return mean_BZ, logvar_BZ, self.decode(mean_BZ + jnp.exp(0.5 * logvar_BZ) * eps_BZ)

  def encode(self, x_BHWC: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.encoder(x_BHWC)

  def decode(self, z_BZ: jax.Array) -> jax.Array:
    return self.decoder(z_BZ)
