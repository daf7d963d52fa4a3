"""A decoder-only Transformer language model (GPT-2 style), with a key/value cache for decoding.

Token and learned position embeddings, pre-LayerNorm blocks of causal multi-head
self-attention and a GELU MLP, a final LayerNorm, and logits from the token embedding
(tied weights). GPT-2 initialisation: N(0, 0.02) weights and zero biases, with the two
residual projections of every block drawn from N(0, 0.02 / sqrt(2 * num_layers)) so the
residual stream does not grow with depth. Dropout after the embeddings, on the attention
weights and on each residual branch, as in nanoGPT. With `use_bias` and the tanh GELU this is
GPT-2 exactly (Hugging Face's `GPT2LMHeadModel`, `interop/gpt2.py`). Decoding takes prompts
left-padded to one length: `start_B` says where each row's text begins, and positions count from there.
With `causal=False` every position attends to every other: the bidirectional encoder of a masked-token
model, or, with a key padding mask (`encode`), the text encoder of latent diffusion (methods/ldm.py).

Shapes: B batch, T query positions, S cached positions (= block_size), D width, N heads,
E head width (D / N), V vocabulary.
"""

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from aigc_jax.models import layers

# Per layer, the keys and values of every position so far: ([B, S, N, E], [B, S, N, E]).
Cache = tuple[tuple[jax.Array, jax.Array], ...]

_init = nn.initializers.normal(0.02)

# model.activation: the MLP's nonlinearity. 'gelu_tanh' is GPT-2's tanh approximation (jax.nn.gelu's
# default, and what this model always used); 'gelu' the exact erf form (PyTorch's nn.GELU, nanoGPT).
ACTIVATIONS = {'gelu_tanh': lambda x: nn.gelu(x, approximate=True), 'gelu': lambda x: nn.gelu(x, approximate=False)}


def causal_attention(q_BTNE: jax.Array, k_BTNE: jax.Array, v_BTNE: jax.Array,
                     dropout: Callable[[jax.Array], jax.Array], causal: bool = True,
                     mask_BS: jax.Array | None = None) -> jax.Array:
  """softmax(QK^T / sqrt(E)) V over earlier positions (all of them if not `causal`; only the keys `mask_BS`
  keeps), with `dropout` on the attention weights.

  `jax.nn.dot_product_attention` has no dropout on the weights; this spelled-out form is
  used only when training with dropout.
  """
  T, E = q_BTNE.shape[1], q_BTNE.shape[3]
  logits_BNTS = jnp.einsum('btne,bsne->bnts', q_BTNE, k_BTNE).astype(jnp.float32) / math.sqrt(E)
  visible_TS = jnp.tril(jnp.ones((T, T), bool)) if causal else jnp.ones((T, T), bool)
  visible = visible_TS if mask_BS is None else visible_TS & mask_BS[:, None, None, :]
  w_BNTS = jax.nn.softmax(jnp.where(visible, logits_BNTS, -jnp.inf), axis=-1)
  return jnp.einsum('bnts,bsne->btne', dropout(w_BNTS).astype(v_BTNE.dtype), v_BTNE)


class SelfAttention(nn.Module):
  """Causal (or bidirectional) multi-head self-attention: heads concatenated, then projected back to D."""
  num_heads: int
  dropout: float
  residual_init: Callable
  use_bias: bool
  dtype: Any
  causal: bool = True

  @nn.compact
  def __call__(self, x_BTD: jax.Array, train: bool, cache: tuple[jax.Array, jax.Array] | None = None,
               pos: jax.Array | int = 0, start_B: jax.Array | None = None, mask_BS: jax.Array | None = None
               ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    """With `cache`, x holds positions pos..pos+T-1, which attend to the cache and themselves.

    With `start_B` (and a cache) row b attends to no position before start_B[b] (its left padding)
    other than itself, so that a padding position's output stays finite. `mask_BS` (bool [B, T], no
    cache) hides the keys of padding positions (False) from every query.
    """
    B, T, D = x_BTD.shape
    N = self.num_heads
    qkv_BT3NE = layers.Dense(3 * D, use_bias=self.use_bias, kernel_init=_init, dtype=self.dtype, name='qkv')(
        x_BTD).reshape(B, T, 3, N, D // N)
    q_BTNE, k_BTNE, v_BTNE = qkv_BT3NE[:, :, 0], qkv_BT3NE[:, :, 1], qkv_BT3NE[:, :, 2]
    if cache is not None:
      k_BSNE = jax.lax.dynamic_update_slice(cache[0], k_BTNE.astype(cache[0].dtype), (0, pos, 0, 0))
      v_BSNE = jax.lax.dynamic_update_slice(cache[1], v_BTNE.astype(cache[1].dtype), (0, pos, 0, 0))
      S = k_BSNE.shape[1]
      query_T1 = pos + jnp.arange(T)[:, None]
      visible = jnp.arange(S)[None, :] <= query_T1
      if start_B is not None:  # [B, T, S]
        visible = visible & ((jnp.arange(S) >= start_B[:, None, None]) | (jnp.arange(S) == query_T1))
      mask = visible[:, None] if start_B is not None else visible[None, None]
      y_BTNE = jax.nn.dot_product_attention(q_BTNE, k_BSNE, v_BSNE, mask=mask)
      cache = (k_BSNE, v_BSNE)
    elif train and self.dropout > 0:
      y_BTNE = causal_attention(q_BTNE, k_BTNE, v_BTNE,
                                lambda w: nn.Dropout(self.dropout)(w, deterministic=False), self.causal, mask_BS)
    else:
      y_BTNE = jax.nn.dot_product_attention(q_BTNE, k_BTNE, v_BTNE, is_causal=self.causal,
                                            mask=None if mask_BS is None else mask_BS[:, None, None, :])
    y_BTD = layers.Dense(D, use_bias=self.use_bias, kernel_init=self.residual_init, dtype=self.dtype,
                         name='out')(y_BTNE.reshape(B, T, D))
    return nn.Dropout(self.dropout)(y_BTD, deterministic=not train), cache


class Block(nn.Module):
  """x + attention(LN(x)), then x + MLP(LN(x)); the MLP is D -> 4D -> GELU -> D."""
  num_heads: int
  dropout: float
  residual_init: Callable
  use_bias: bool
  dtype: Any
  activation: str = 'gelu_tanh'
  causal: bool = True

  @nn.compact
  def __call__(self, x_BTD: jax.Array, train: bool, cache: tuple[jax.Array, jax.Array] | None = None,
               pos: jax.Array | int = 0, start_B: jax.Array | None = None, mask_BS: jax.Array | None = None
               ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    D = x_BTD.shape[-1]
    h_BTD = layers.LayerNorm(epsilon=1e-5, use_bias=self.use_bias, dtype=self.dtype, name='attn_norm')(x_BTD)
    h_BTD, cache = SelfAttention(self.num_heads, self.dropout, self.residual_init, self.use_bias,
                                 self.dtype, causal=self.causal, name='attn')(h_BTD, train, cache, pos, start_B,
                                                                              mask_BS)
    x_BTD = x_BTD + h_BTD
    mlp_norm = layers.LayerNorm(epsilon=1e-5, use_bias=self.use_bias, dtype=self.dtype, name='mlp_norm')
    mlp_in = layers.Dense(4 * D, use_bias=self.use_bias, kernel_init=_init, dtype=self.dtype, name='mlp_in')
    mlp_out = layers.Dense(D, use_bias=self.use_bias, kernel_init=self.residual_init, dtype=self.dtype,
                           name='mlp_out')
    h_BTD = mlp_out(ACTIVATIONS[self.activation](mlp_in(mlp_norm(x_BTD))))
    return x_BTD + nn.Dropout(self.dropout)(h_BTD, deterministic=not train), cache


class Transformer(nn.Module):
  """Next-token logits of a decoder-only Transformer.

  Attributes:
    vocab_size: number of token ids V.
    block_size: the longest context S (rows of the position embedding).
    num_layers: Transformer blocks.
    num_heads: attention heads per block; must divide `width`.
    width: model width D.
    dropout: dropout rate (train only).
    use_bias: biases in the Dense and LayerNorm layers (nanoGPT's `bias`).
    dtype: computation dtype; parameters and logits are float32.
    activation: the MLP's nonlinearity, a key of ACTIVATIONS.
    causal: each position attends to itself and earlier ones (a next-token model); False: to every
      position (an encoder, which has no key/value cache: `decode` is for causal models).
  """
  vocab_size: int
  block_size: int
  num_layers: int
  num_heads: int
  width: int
  dropout: float = 0.0
  use_bias: bool = False
  dtype: Any = jnp.float32
  activation: str = 'gelu_tanh'
  causal: bool = True

  def setup(self):
    residual_init = nn.initializers.normal(0.02 / math.sqrt(2 * self.num_layers))
    self.token_embed = layers.Embed(self.vocab_size, self.width, embedding_init=_init, dtype=self.dtype)
    self.pos_embed = nn.Embed(self.block_size, self.width, embedding_init=_init, dtype=self.dtype)
    self.embed_dropout = nn.Dropout(self.dropout)
    self.blocks = [Block(self.num_heads, self.dropout, residual_init, self.use_bias, self.dtype, self.activation,
                         causal=self.causal)
                   for _ in range(self.num_layers)]
    self.final_norm = layers.LayerNorm(epsilon=1e-5, use_bias=self.use_bias, dtype=self.dtype)

  def _embed(self, tok_BT: jax.Array, pos: jax.Array | int, train: bool,
             start_B: jax.Array | None = None) -> jax.Array:
    pos_T = pos + jnp.arange(tok_BT.shape[1])
    if start_B is None:
      x_BTD = self.token_embed(tok_BT) + self.pos_embed(pos_T)[None]
    else:  # row b's text starts at start_B[b]: its padding takes position 0
      x_BTD = self.token_embed(tok_BT) + self.pos_embed(jnp.maximum(pos_T[None] - start_B[:, None], 0))
    return self.embed_dropout(x_BTD, deterministic=not train)

  def _logits(self, x_BTD: jax.Array) -> jax.Array:
    return self.token_embed.attend(self.final_norm(x_BTD)).astype(jnp.float32)

  def __call__(self, tok_BT: jax.Array, train: bool = False) -> jax.Array:
    """float32 logits [B, T, V] of the token after each of the T <= block_size positions (causal), or at it."""
    x_BTD = self._embed(tok_BT, 0, train)
    for block in self.blocks:
      x_BTD, _ = block(x_BTD, train)
    return self._logits(x_BTD)

  def encode(self, tok_BT: jax.Array, mask_BT: jax.Array, train: bool = False) -> jax.Array:
    """The final-normed hidden states [B, T, D] of every position, padding positions (mask False) hidden as keys."""
    x_BTD = self._embed(tok_BT, 0, train)
    for block in self.blocks:
      x_BTD, _ = block(x_BTD, train, mask_BS=mask_BT)
    return self.final_norm(x_BTD)

  def decode(self, tok_BT: jax.Array, cache: Cache, pos: jax.Array | int,
             start_B: jax.Array | None = None) -> tuple[jax.Array, Cache]:
    """Logits [B, T, V] of tokens at positions pos..pos+T-1 given the cache of positions < pos.

    Returns the cache with these positions' keys and values added; pos + T <= block_size.
    `start_B` (int32 [B], optional): row b is left-padded up to start_B[b], which the other
    positions do not see; its text's positions count from there (Hugging Face's left padding).
    """
    if not self.causal:
      raise ValueError('a bidirectional Transformer has no key/value cache: call it on the whole sequence')
    x_BTD = self._embed(tok_BT, pos, False, start_B)
    new_cache = []
    for block, kv in zip(self.blocks, cache):
      x_BTD, kv = block(x_BTD, False, kv, pos, start_B)
      new_cache.append(kv)
    return self._logits(x_BTD), tuple(new_cache)


def empty_cache(model: Transformer, batch: int) -> Cache:
  """An all-zero cache for `batch` sequences of up to `model.block_size` positions."""
  shape = (batch, model.block_size, model.num_heads, model.width // model.num_heads)
  return tuple((jnp.zeros(shape, model.dtype), jnp.zeros(shape, model.dtype)) for _ in range(model.num_layers))
