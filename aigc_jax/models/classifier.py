"""A small CNN image classifier whose penultimate activations serve as FID features.

A space-to-depth stem (each `patch` x `patch` block of pixels becomes one pixel with patch²
times the channels: full-resolution convolutions over 1 or 3 channels are what XLA:CPU runs
least efficiently), stages of `depth` 3x3 convolutions (each GroupNorm, or none, then ReLU)
with a 2x2 max pool between stages, global average pooling, a hidden Dense+ReLU layer (the
features) and the class logits. GroupNorm, not BatchNorm: an image's features must not
depend on the other images in its batch.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class CNN(nn.Module):
  """Images [B, H, W, C] in [-1, 1] -> (logits [B, num_classes], features [B, features])."""
  num_classes: int
  patch: int = 1                         # space-to-depth block size of the stem (1: none)
  widths: Sequence[int] = (32, 64, 128)  # one stage each, halving the resolution between them
  depth: int = 2                         # convolutions per stage
  features: int = 128
  num_groups: int = 8                    # GroupNorm groups; 0: no normalization
  dropout: float = 0.0                   # on the features, before the logits

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    B, H, W, C = x_BHWC.shape
    p = self.patch
    h = jnp.pad(x_BHWC, ((0, 0), (0, -H % p), (0, -W % p), (0, 0)))
    h = h.reshape(B, -(-H // p), p, -(-W // p), p, C).transpose(0, 1, 3, 2, 4, 5)
    h = h.reshape(h.shape[:3] + (p * p * C,))
    for i, width in enumerate(self.widths):
      if i:
        h = nn.max_pool(h, (2, 2), strides=(2, 2), padding='SAME')
      for _ in range(self.depth):
        h = nn.Conv(width, (3, 3), padding='SAME', use_bias=not self.num_groups)(h)
        if self.num_groups:
          h = nn.GroupNorm(self.num_groups)(h)
        h = nn.relu(h)
    features_BF = nn.relu(nn.Dense(self.features)(jnp.mean(h, axis=(1, 2))))
    h = nn.Dropout(self.dropout)(features_BF, deterministic=not train)
    return nn.Dense(self.num_classes)(h), features_BF
