"""Transformer building blocks in flax.linen, with a logical axis name on every parameter.

Logical names ('vocab', 'embed', 'mlp', 'heads', 'kv_heads', 'kv') say what a dimension *is*; the mesh rules in
the config decide how each is sharded, so no layer hard-codes a parallelism layout.
Activations are constrained at block boundaries with the names ('batch', 'length', 'embed').
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
_NEG_INF = -1e10  # finite, so fully masked rows (padding queries) give a uniform softmax, not NaN

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    'relu': nn.relu,
    'gelu': lambda x: nn.gelu(x, approximate=False),  # BERT
    'gelu_tanh': lambda x: nn.gelu(x, approximate=True),  # GPT-2, T5 v1.1 ("gelu_new")
    'silu': nn.silu,
}
# Gated variants (Shazeer 2020): activation(x W0) * (x W1); the value names the gate's activation.
GATED_ACTIVATIONS = {'gated-gelu': 'gelu_tanh', 'swiglu': 'silu'}


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


def prefix_lm_mask(length: int, prefix: Array) -> Array:
  """[batch, 1, length, length]: causal, plus full attention among prefix positions (prefix [batch, length])."""
  both_in_prefix = (prefix[:, :, None] > 0) & (prefix[:, None, :] > 0)
  return causal_mask(length) | both_in_prefix[:, None]


# ----------------------------------------------------------------------------- relative positions


def t5_relative_bucket(relative_position: Array, bidirectional: bool, num_buckets: int, max_distance: int) -> Array:
  """T5's bucketing of (key position - query position): exact for small distances, logarithmic beyond."""
  buckets = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    buckets += (relative_position > 0).astype(relative_position.dtype) * num_buckets
    distance = jnp.abs(relative_position)
  else:
    distance = -jnp.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  scaled = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact) / np.log(max_distance / max_exact)
  large = max_exact + (scaled * (num_buckets - max_exact)).astype(relative_position.dtype)
  large = jnp.minimum(large, num_buckets - 1)
  return buckets + jnp.where(distance < max_exact, distance, large)


class RelativePositionBias(nn.Module):
  """T5's learned per-head bias from bucketed relative positions; computed once per stack, shared by its layers."""
  num_heads: int
  bidirectional: bool
  num_buckets: int = 32
  max_distance: int = 128
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, query_positions: Array, key_positions: Array) -> Array:
    """[batch, heads, q, k] from positions [batch, q] and [batch, k] (packed positions work)."""
    table = self.param('rel_embedding', logical(nn.initializers.normal(1.0), None, 'heads'),
                       (self.num_buckets, self.num_heads), self.param_dtype)
    relative = key_positions[:, None, :] - query_positions[:, :, None]
    buckets = t5_relative_bucket(relative, self.bidirectional, self.num_buckets, self.max_distance)
    return jnp.transpose(jnp.take(table, buckets, axis=0), (0, 3, 1, 2)).astype(self.dtype)


def rotary(x: Array, positions: Array, base: float = 10_000.0) -> Array:
  """Rotary position embedding (RoFormer; GPT-NeoX half-split layout) of x [batch, length, heads, dim]."""
  half = x.shape[-1] // 2
  freq = base ** (-np.arange(half, dtype=np.float32) / half)
  angles = positions[..., None].astype(jnp.float32) * freq
  sin, cos = jnp.sin(angles)[:, :, None], jnp.cos(angles)[:, :, None]
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


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


# ----------------------------------------------------------------------------- low-rank adapters


# The projections LoRA can adapt: attention's query/key/value/out kernels and the MLP's dense layers.
LORA_TARGETS = ('query', 'key', 'value', 'out', 'wi', 'wi_0', 'wi_1', 'wo')


@dataclasses.dataclass(frozen=True)
class LoRA:
  """Low-rank adapters (Hu et al. 2021, arXiv:2106.09685): a kernel W named in `targets` acts as
  W + (alpha / rank) A B, where only A and B need training; B starts at zero, so the adapted model
  starts as exactly its base model."""
  rank: int
  alpha: float
  targets: tuple[str, ...]

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


def lora_delta(module: nn.Module, lora: LoRA | None, name: str, x: Array, in_names: tuple[str, ...],
               out_names: tuple[str | None, ...], out_shape: tuple[int, ...]) -> Array | float:
  """The adapter's term (alpha / rank) (x A) B of projection `name` for x [..., *in] (0 when `name` is not adapted).

  A [*in, rank] (random, scaled like the kernel) and B [rank, *out] (zeros) are the parameters `<name>_lora_a`
  and `<name>_lora_b` of `module`, with the kernel's logical axis names on their kernel-sized axes.
  """
  if lora is None or name not in lora.targets:
    return 0.0
  in_axes = tuple(range(len(in_names)))
  a = module.param(f'{name}_lora_a', logical(_fan_in(in_axes), *in_names, None),
                   (*x.shape[x.ndim - len(in_names):], lora.rank), module.param_dtype)
  b = module.param(f'{name}_lora_b', logical(nn.initializers.zeros, None, *out_names), (lora.rank, *out_shape),
                   module.param_dtype)
  low_rank = jnp.tensordot(x, a.astype(module.dtype), axes=len(in_names))
  return jnp.tensordot(low_rank, b.astype(module.dtype), axes=1) * lora.scale


# ----------------------------------------------------------------------------- attention and MLP


class MultiHeadAttention(nn.Module):
  """Dot-product attention; multi-head, multi-query (num_kv_heads=1) or grouped-query (num_kv_heads < num_heads).

  Optional rotary embedding of queries and keys, an additive bias (T5 relative positions), and
  `scale_queries=False` for T5, whose initialisation folds the 1/sqrt(head_dim) into the query weights.
  """
  num_heads: int
  head_dim: int
  num_kv_heads: int = 0  # 0: same as num_heads
  dropout_rate: float = 0.0
  use_bias: bool = False
  use_rotary: bool = False
  scale_queries: bool = True
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  lora: LoRA | None = None

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array | None, mask: Array, deterministic: bool,
               bias: Array | None = None, query_positions: Array | None = None, key_positions: Array | None = None,
               decode: bool = False) -> Array:
    """With `decode`, keys and values are kept in the 'cache' collection (see `_cached`); `mask` then
    spans the whole cache [batch, 1, new tokens, cache length]."""
    features = inputs_q.shape[-1]
    kv_heads = self.num_kv_heads or self.num_heads
    if self.num_heads % kv_heads:
      raise ValueError(f'num_heads={self.num_heads} is not a multiple of num_kv_heads={kv_heads}')
    # Key/value heads shard like query heads only when there are as many of them.
    kv_name = 'heads' if kv_heads == self.num_heads else 'kv_heads'
    query = self._project('query', inputs_q, self.num_heads, 'heads')
    if self.use_rotary:
      query = rotary(query, query_positions)
    if inputs_kv is None:  # cached cross-attention: the encoder's keys and values were stored at prefill
      key, value = self.get_variable('cache', 'key'), self.get_variable('cache', 'value')
    else:
      key = self._project('key', inputs_kv, kv_heads, kv_name)
      value = self._project('value', inputs_kv, kv_heads, kv_name)
      if self.use_rotary:
        key = rotary(key, key_positions)
      if decode:
        key, value = self._cached(key, value, key_positions if inputs_kv is inputs_q else None, kv_name)
    if self.scale_queries:
      query = query / np.sqrt(self.head_dim).astype(self.dtype)
    weights = attention_weights(query, key, mask, bias)
    self.sow('intermediates', 'attention_weights', weights)
    weights = nn.Dropout(self.dropout_rate, broadcast_dims=())(weights, deterministic=deterministic)
    batch, q_len, k_len = weights.shape[0], weights.shape[2], weights.shape[3]
    grouped = weights.reshape(batch, kv_heads, self.num_heads // kv_heads, q_len, k_len).astype(self.dtype)
    out = jnp.einsum('bkgqs,bskd->bqkgd', grouped, value).reshape(batch, q_len, self.num_heads, self.head_dim)
    kernel = self.param('out', logical(_fan_in((0, 1)), 'heads', 'kv', 'embed'),
                        (self.num_heads, self.head_dim, features), self.param_dtype)
    out = jnp.einsum('bqhd,hde->bqe', out, kernel.astype(self.dtype)) + lora_delta(
        self, self.lora, 'out', out, ('heads', 'kv'), ('embed',), (features,))
    if self.use_bias:
      out = out + self.param('out_bias', logical(nn.initializers.zeros, 'embed'), (features,), self.param_dtype)
    return out.astype(self.dtype)

  def _cached(self, key: Array, value: Array, slots: Array | None, kv_name: str) -> tuple[Array, Array]:
    """Incremental decoding: the keys and values every query of this call attends to.

    Self-attention (`slots` = the new tokens' positions) writes the new keys and values at those
    slots of a [batch, cache length, kv heads, head dim] cache and returns the whole cache; one new
    token per row may go to a different slot in each row, several tokens go to the same slots in all
    rows (prefill). Cross-attention (`slots` None) stores the projected encoder output once. The first
    call (the cache does not exist yet) only creates the cache, sized by its inputs.
    """
    created = not self.has_variable('cache', 'key')
    cached_key = self.variable('cache', 'key', jnp.zeros, key.shape, key.dtype)
    cached_value = self.variable('cache', 'value', jnp.zeros, value.shape, value.dtype)
    if created:
      return key, value
    if slots is not None:
      if key.shape[1] == 1:
        write = (jnp.arange(cached_key.value.shape[1])[None, :] == slots)[:, :, None, None]
        key, value = jnp.where(write, key, cached_key.value), jnp.where(write, value, cached_value.value)
      else:
        start = (0, slots[0, 0], 0, 0)
        key = jax.lax.dynamic_update_slice(cached_key.value, key.astype(cached_key.value.dtype), start)
        value = jax.lax.dynamic_update_slice(cached_value.value, value.astype(cached_value.value.dtype), start)
    cached_key.value = constrain(key, 'batch', 'length', kv_name, 'kv')
    cached_value.value = constrain(value, 'batch', 'length', kv_name, 'kv')
    return cached_key.value, cached_value.value

  def _project(self, name: str, x: Array, heads: int, heads_name: str) -> Array:
    """x [batch, length, embed] -> [batch, length, heads, head_dim]."""
    kernel = self.param(name, logical(_fan_in((0,)), 'embed', heads_name, 'kv'),
                        (x.shape[-1], heads, self.head_dim), self.param_dtype)
    y = jnp.einsum('ble,ehd->blhd', x, kernel.astype(self.dtype))
    y = y + lora_delta(self, self.lora, name, x, ('embed',), (heads_name, 'kv'), (heads, self.head_dim))
    if self.use_bias:
      y = y + self.param(f'{name}_bias', logical(nn.initializers.zeros, heads_name, 'kv'),
                         (heads, self.head_dim), self.param_dtype)
    return constrain(y.astype(self.dtype), 'batch', 'length', heads_name, 'kv')


def _fan_in(in_axes: tuple[int, ...]) -> Callable:
  return nn.initializers.variance_scaling(1.0, 'fan_in', 'normal', in_axis=in_axes, out_axis=-1)


def attention_weights(query: Array, key: Array, mask: Array, bias: Array | None = None) -> Array:
  """softmax(q k^T + bias) over keys, in float32; query is already scaled.

  query [b, q, heads, d], key [b, k, kv_heads, d] (heads a multiple of kv_heads) -> [b, heads, q, k].
  """
  batch, q_len, heads, dim = query.shape
  kv_heads = key.shape[2]
  grouped = query.reshape(batch, q_len, kv_heads, heads // kv_heads, dim)
  logits = jnp.einsum('bqkgd,bskd->bkgqs', grouped, key).reshape(batch, heads, q_len, key.shape[1])
  logits = logits.astype(jnp.float32)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  return jax.nn.softmax(jnp.where(mask, logits, _NEG_INF), axis=-1)


class Mlp(nn.Module):
  """Position-wise feed-forward block: dense -> activation (or gated activation) -> dropout -> dense."""
  hidden_dim: int
  activation: str = 'relu'
  dropout_rate: float = 0.0
  use_bias: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  lora: LoRA | None = None

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    features = x.shape[-1]
    init = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')

    def dense(name, size, names, inputs):
      y = nn.Dense(size, use_bias=self.use_bias, kernel_init=logical(init, *names),
                   bias_init=logical(nn.initializers.zeros, names[-1]), dtype=self.dtype,
                   param_dtype=self.param_dtype, name=name)(inputs)
      return y + lora_delta(self, self.lora, name, inputs, names[:1], names[1:], (size,))
    if self.activation in GATED_ACTIVATIONS:
      gate = ACTIVATIONS[GATED_ACTIVATIONS[self.activation]](dense('wi_0', self.hidden_dim, ('embed', 'mlp'), x))
      h = gate * dense('wi_1', self.hidden_dim, ('embed', 'mlp'), x)
    else:
      h = ACTIVATIONS[self.activation](dense('wi', self.hidden_dim, ('embed', 'mlp'), x))
    h = nn.Dropout(self.dropout_rate)(constrain(h, 'batch', 'length', 'mlp'), deterministic=deterministic)
    return dense('wo', features, ('mlp', 'embed'), h)
