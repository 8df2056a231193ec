"""Int8 weight-only quantization of the matmul weights, with one scale per output channel.

Each weight that feeds a matrix multiplication (attention projections, MLP, the token embedding / output
projection) is stored as int8 values and float32 scales: w ~ values * scale, scale = max|w| / 127 over
the weight's input (contracted) axes, so each output channel keeps its own range. Everything else (norms,
biases, position tables, LoRA adapters: small, and each has only one of 'embed' and an output axis) stays in
float. `dequantize` restores float weights inside the jitted computation; storage, host-to-device transfer
and checkpoint-to-device memory are about a quarter of float32. Which axes a weight contracts comes from its
logical axis names.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

Array = jax.Array
_OUTPUT_NAMES = ('mlp', 'heads', 'kv_heads', 'kv', 'vocab')


@flax.struct.dataclass
class Int8:
  """A quantized weight: `values * scale`; `scale` has size 1 on the contracted axes."""
  values: Array
  scale: Array


def contracted_axes(names: tuple) -> tuple[int, ...] | None:
  """The input axes of a matmul weight, from its logical axis names; None for a weight that is not one.

  [embed, heads, kv] (query/key/value), [embed, mlp], [embed, vocab]: 'embed' is the input. [heads, kv, embed]
  (attention output), [mlp, embed]: everything but 'embed' is. The embedding table [vocab, embed] gets one
  scale per token (it is looked up by row, and contracts 'embed' as the tied output projection).
  """
  names = tuple(names)
  if 'embed' not in names or not any(n in _OUTPUT_NAMES for n in names):
    return None
  if names[-1] == 'embed' and 'vocab' not in names:
    return tuple(i for i, n in enumerate(names) if n not in ('embed', 'layers'))
  return tuple(i for i, n in enumerate(names) if n == 'embed')


def quantize_array(weight: Array, axes: tuple[int, ...]) -> Int8:
  weight = jnp.asarray(weight, jnp.float32)
  scale = jnp.max(jnp.abs(weight), axis=axes, keepdims=True) / 127.0
  scale = jnp.where(scale > 0, scale, 1.0)
  return Int8(jnp.clip(jnp.round(weight / scale), -127, 127).astype(jnp.int8), scale)


def quantize(params: Any, logical_axes: Any) -> Any:
  """`params` with every matmul weight replaced by its `Int8` form (`logical_axes`: the PartitionSpec tree
  of the parameters' logical names, as `nn.get_partition_spec` gives it)."""
  def one(weight, names):
    axes = contracted_axes(tuple(names))
    return weight if axes is None else quantize_array(weight, axes)
  return jax.tree.map(one, params, logical_axes, is_leaf=lambda x: isinstance(x, PartitionSpec))


def dequantize(params: Any, dtype=jnp.float32) -> Any:
  """Float weights again (a no-op for a tree without `Int8` leaves)."""
  return jax.tree.map(lambda x: (x.values.astype(dtype) * x.scale.astype(dtype)) if isinstance(x, Int8) else x,
                      params, is_leaf=lambda x: isinstance(x, Int8))


def is_quantized(params: Any) -> bool:
  return any(isinstance(x, Int8) for x in jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, Int8)))


def nbytes(params: Any) -> int:
  return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(params))


def shardings(quantized: Any, param_shardings: Any) -> Any:
  """Shardings for a quantized tree: values as their float weight, scales the same except along contracted axes."""
  def one(leaf, sharding):
    if not isinstance(leaf, Int8):
      return sharding
    spec = tuple(sharding.spec) + (None,) * (leaf.scale.ndim - len(sharding.spec))
    scale_spec = PartitionSpec(*(None if n == 1 else s for n, s in zip(leaf.scale.shape, spec)))
    return Int8(sharding, NamedSharding(sharding.mesh, scale_spec))
  return jax.tree.map(one, quantized, param_shardings, is_leaf=lambda x: isinstance(x, Int8))
