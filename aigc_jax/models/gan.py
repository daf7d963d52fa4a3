"""GAN generators and discriminators: the MLP pair for 28x28 digits, and DCGAN (Radford et al. 2015) for 32x32 images.

A generator maps noise z [B, Z] to images [B, H, W, C] in [-1, 1] (tanh); a discriminator maps
images to one logit per image, [B]. Every module takes `train`: the DCGAN's BatchNorm then
normalizes with the statistics of the batch (averaged over the devices of `axis_name`) and
updates its running averages, which it uses otherwise. The MLPs have no normalization and
ignore `train`.
"""

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

LEAK = 0.2                              # LeakyReLU slope of every discriminator (and the MLP generator)
DCGAN_INIT = nn.initializers.normal(0.02)  # Radford et al.: all weights from N(0, 0.02)


class MLPGenerator(nn.Module):
  """z -> Dense layers of `hidden` widths, LeakyReLU(0.2) -> H*W*C tanh outputs, shaped [B, H, W, C]."""
  out_shape: tuple[int, int, int]
  hidden: Sequence[int] = (256, 512, 1024)

  @nn.compact
  def __call__(self, z_BZ: jax.Array, train: bool) -> jax.Array:
    h = z_BZ
    for width in self.hidden:
      h = nn.leaky_relu(nn.Dense(width)(h), LEAK)
    return jnp.tanh(nn.Dense(math.prod(self.out_shape))(h)).reshape((-1,) + self.out_shape)


class MLPDiscriminator(nn.Module):
  """Flattened pixels -> Dense layers of `hidden` widths, LeakyReLU(0.2) -> one logit."""
  hidden: Sequence[int] = (1024, 512, 256)

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, train: bool) -> jax.Array:
    h = x_BHWC.reshape(x_BHWC.shape[0], -1)
    for width in self.hidden:
      h = nn.leaky_relu(nn.Dense(width)(h), LEAK)
    return nn.Dense(1)(h)[:, 0]


# (output phase r, 3x3 tap d) -> the 4x4 kernel tap p linking them: in y[o] += x[i] k[p] with o = 2i + p - 1,
# output 2m + r sees input m + d - 1 through p = 3 + r - 2d, for the d that put p in 0..3.
_PHASE_TAPS = {(0, 0): 3, (0, 1): 1, (1, 1): 2, (1, 2): 0}


class ConvTranspose2x(nn.Module):
  """A 4x4 stride-2 transposed convolution, PyTorch's ConvTranspose2d(kernel 4, stride 2, padding 1):
  [B, H, W, I] -> [B, 2H, 2W, features].

  Computed as one 3x3 convolution whose 4 * features outputs are the 4 output phases (output
  (2m + ry, 2n + rx) sees the 2x2 inputs around (m, n) through 4 of the 16 taps), then
  interleaved. The same function as `lax.conv_transpose` (with the kernel flipped), but its
  input-dilated convolutions make the whole DCGAN step about 1.6x slower on XLA:CPU.
  """
  features: int
  use_bias: bool = True
  kernel_init: nn.initializers.Initializer = DCGAN_INIT

  @nn.compact
  def __call__(self, x_BHWI: jax.Array) -> jax.Array:
    B, H, W, I = x_BHWI.shape
    O = self.features
    k_44IO = self.param('kernel', self.kernel_init, (4, 4, I, O))
    k_33I22O = jnp.zeros((3, 3, I, 2, 2, O), k_44IO.dtype)
    for (ry, dy), py in _PHASE_TAPS.items():
      for (rx, dx), px in _PHASE_TAPS.items():
        k_33I22O = k_33I22O.at[dy, dx, :, ry, rx].set(k_44IO[py, px])
    y = jax.lax.conv_general_dilated(x_BHWI, k_33I22O.reshape(3, 3, I, 4 * O), (1, 1), 'SAME',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    y_BHWO = y.reshape(B, H, W, 2, 2, O).transpose(0, 1, 3, 2, 4, 5).reshape(B, 2 * H, 2 * W, O)
    if self.use_bias:
      y_BHWO = y_BHWO + self.param('bias', nn.initializers.zeros, (O,))
    return y_BHWO


def _batch_norm(train: bool, axis_name: str | None) -> nn.BatchNorm:
  """PyTorch's BatchNorm2d defaults (momentum 0.1 of the new statistics, eps 1e-5); batch statistics over `axis_name`."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, axis_name=axis_name)


class DCGANGenerator(nn.Module):
  """z -> a 4x4 map of width * 2^(L-1) channels -> L levels of 4x4 stride-2 transposed convs, each doubling
  H and W and halving the channels -> a last one to C channels, tanh.

  Each layer but the last is followed by BatchNorm and ReLU; L = log2(H) - 3 (2 for 32x32:
  4x4x256 -> 8x8x128 -> 16x16x64 -> 32x32xC at width 64). The first layer, a Dense on z reshaped
  to 4x4, is a 4x4 transposed conv of z seen as a 1x1 image.
  """
  out_shape: tuple[int, int, int]
  width: int = 64
  axis_name: str | None = None

  @nn.compact
  def __call__(self, z_BZ: jax.Array, train: bool) -> jax.Array:
    H, _, C = self.out_shape
    levels = int(math.log2(H)) - 3
    ch = self.width * 2 ** levels
    h = nn.Dense(4 * 4 * ch, use_bias=False, kernel_init=DCGAN_INIT)(z_BZ).reshape(-1, 4, 4, ch)
    h = nn.relu(_batch_norm(train, self.axis_name)(h))
    for _ in range(levels):
      ch //= 2
      h = ConvTranspose2x(ch, use_bias=False)(h)
      h = nn.relu(_batch_norm(train, self.axis_name)(h))
    h = ConvTranspose2x(C)(h)
    return jnp.tanh(h)


class DCGANDiscriminator(nn.Module):
  """Images -> 4x4 stride-2 convs of width, 2 width, 4 width, ... channels down to 4x4, LeakyReLU(0.2)
  -> one logit (a 4x4 valid conv, as a Dense on the flattened map).

  BatchNorm after every conv but the first, as in Radford et al.
  """
  width: int = 64
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, train: bool) -> jax.Array:
    h, ch, first = x_BHWC, self.width, True
    while h.shape[1] > 4:
      h = nn.Conv(ch, (4, 4), strides=(2, 2), padding='SAME', use_bias=first, kernel_init=DCGAN_INIT)(h)
      if not first:
        h = _batch_norm(train, self.axis_name)(h)
      h = nn.leaky_relu(h, LEAK)
      ch, first = ch * 2, False
    return nn.Dense(1, kernel_init=DCGAN_INIT)(h.reshape(h.shape[0], -1))[:, 0]
