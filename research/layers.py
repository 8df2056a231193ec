"""Transformer building blocks in flax.linen, with a logical axis name on every parameter.

Logical names ('vocab', 'embed', 'mlp', 'heads', 'kv') say what a dimension *is*; the mesh rules in
the config decide how each is sharded, so no layer hard-codes a parallelism layout.
Activations are constrained at block boundaries with the names ('batch', 'length', 'embed').
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
_NEG_INF = -1e10  # finite, so fully masked rows (padding queries) give a uniform softmax, not NaN

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {'relu': nn.relu, 'gelu': nn.gelu, 'silu': nn.silu}


def logical(init: Callable, *names: str | None) -> Callable:
  return nn.with_logical_partitioning(init, names)


def constrain(x: Array, *names: str | None) -> Array:
  return nn.with_logical_constraint(x, names)


# ----------------------------------------------------------------------------- masks


def segment_mask(query_segments: Array, key_segments: Array) -> Array:
  """[batch, 1, q, k]: True where query and key are in the same (non-padding) segment."""
  same = query_segments[:, :, None] == key_segments[:, None, :]
  valid = (query_segments[:, :, None] > 0) & (key_segments[:, None, :] > 0)
  return (same & valid)[:, None]


def causal_mask(length: int) -> Array:
  """[1, 1, length, length]: True where the key is not after the query."""
  return jnp.tril(jnp.ones((length, length), bool))[None, None]


# ----------------------------------------------------------------------------- embeddings


class Embed(nn.Module):
  """Token embedding table; `attend` reuses it as the output projection when embeddings are tied."""
  num_embeddings: int
  features: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.embedding = self.param('embedding', logical(nn.initializers.normal(1.0), 'vocab', 'embed'),
                                (self.num_embeddings, self.features), self.param_dtype)

  def __call__(self, ids: Array) -> Array:
    # Gather the table's 'embed' shards first: the lookup's output is batch-sharded over the same axes.
    table = constrain(self.embedding, 'vocab', None)
    return jnp.take(table, ids, axis=0).astype(self.dtype)

  def attend(self, x: Array) -> Array:
    return jnp.einsum('...e,ve->...v', x, self.embedding.astype(self.dtype))


def sinusoidal(positions: Array, features: int) -> Array:
  """The original Transformer's fixed position encoding, for arbitrary (packed) positions."""
  half = features // 2
  freq = np.exp(-np.log(10_000.0) * np.arange(half) / max(half - 1, 1))
  angles = positions[..., None].astype(jnp.float32) * freq
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class PositionEmbedding(nn.Module):
  """Absolute position information added to token embeddings: 'learned' or 'sinusoidal'."""
  kind: str
  max_length: int
  features: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, positions: Array) -> Array:
    if self.kind == 'sinusoidal':
      return sinusoidal(positions, self.features).astype(self.dtype)
    table = self.param('embedding', logical(nn.initializers.normal(0.02), None, 'embed'),
                       (self.max_length, self.features), self.param_dtype)
    return jnp.take(table, positions, axis=0).astype(self.dtype)


# ----------------------------------------------------------------------------- normalisation


class Norm(nn.Module):
  """LayerNorm (scale and bias) or RMSNorm (scale only), computed in float32."""
  kind: str = 'layernorm'
  epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    features = x.shape[-1]
    x = x.astype(jnp.float32)
    if self.kind == 'layernorm':
      x = x - jnp.mean(x, axis=-1, keepdims=True)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
    x = x * self.param('scale', logical(nn.initializers.ones, 'embed'), (features,), self.param_dtype)
    if self.kind == 'layernorm':
      x = x + self.param('bias', logical(nn.initializers.zeros, 'embed'), (features,), self.param_dtype)
    return x.astype(self.dtype)


# ----------------------------------------------------------------------------- attention and MLP


class MultiHeadAttention(nn.Module):
  """Scaled dot-product attention with separate query/key/value/output projections."""
  num_heads: int
  head_dim: int
  dropout_rate: float = 0.0
  use_bias: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, mask: Array, deterministic: bool) -> Array:
    features = inputs_q.shape[-1]
    query = self._project('query', inputs_q) / np.sqrt(self.head_dim).astype(self.dtype)
    key = self._project('key', inputs_kv)
    value = self._project('value', inputs_kv)
    weights = attention_weights(query, key, mask)
    self.sow('intermediates', 'attention_weights', weights)
    weights = nn.Dropout(self.dropout_rate, broadcast_dims=())(weights, deterministic=deterministic)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights.astype(self.dtype), value)
    kernel = self.param('out', logical(_fan_in((0, 1)), 'heads', 'kv', 'embed'),
                        (self.num_heads, self.head_dim, features), self.param_dtype)
    out = jnp.einsum('bqhd,hde->bqe', out, kernel.astype(self.dtype))
    if self.use_bias:
      out = out + self.param('out_bias', logical(nn.initializers.zeros, 'embed'), (features,), self.param_dtype)
    return out.astype(self.dtype)

  def _project(self, name: str, x: Array) -> Array:
    """x [batch, length, embed] -> [batch, length, heads, head_dim]."""
    kernel = self.param(name, logical(_fan_in((0,)), 'embed', 'heads', 'kv'),
                        (x.shape[-1], self.num_heads, self.head_dim), self.param_dtype)
    y = jnp.einsum('ble,ehd->blhd', x, kernel.astype(self.dtype))
    if self.use_bias:
      y = y + self.param(f'{name}_bias', logical(nn.initializers.zeros, 'heads', 'kv'),
                         (self.num_heads, self.head_dim), self.param_dtype)
    return constrain(y.astype(self.dtype), 'batch', 'length', 'heads', 'kv')


def _fan_in(in_axes: tuple[int, ...]) -> Callable:
  return nn.initializers.variance_scaling(1.0, 'fan_in', 'normal', in_axis=in_axes, out_axis=-1)


def attention_weights(query: Array, key: Array, mask: Array) -> Array:
  """softmax(q k^T) over keys, in float32; query is already scaled. Shapes [b,q,h,d], [b,k,h,d] -> [b,h,q,k]."""
  logits = jnp.einsum('bqhd,bkhd->bhqk', query, key).astype(jnp.float32)
  return jax.nn.softmax(jnp.where(mask, logits, _NEG_INF), axis=-1)


class Mlp(nn.Module):
  """Position-wise feed-forward block: dense -> activation -> dropout -> dense."""
  hidden_dim: int
  activation: str = 'relu'
  dropout_rate: float = 0.0
  use_bias: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    features = x.shape[-1]
    init = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')
    h = nn.Dense(self.hidden_dim, use_bias=self.use_bias, kernel_init=logical(init, 'embed', 'mlp'),
                 bias_init=logical(nn.initializers.zeros, 'mlp'), dtype=self.dtype,
                 param_dtype=self.param_dtype, name='wi')(x)
    h = ACTIVATIONS[self.activation](constrain(h, 'batch', 'length', 'mlp'))
    h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    return nn.Dense(features, use_bias=self.use_bias, kernel_init=logical(init, 'mlp', 'embed'),
                    bias_init=logical(nn.initializers.zeros, 'embed'), dtype=self.dtype,
                    param_dtype=self.param_dtype, name='wo')(h)
