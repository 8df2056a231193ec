"""Magnitude pruning on a schedule: the smallest weights of each targeted matrix are set to zero and stay zero.

The target sparsity rises from 0 at `prune.start_step` to `prune.sparsity` at `prune.end_step` along Zhu &
Gupta's cubic (2017, "To prune, or not to prune"); every `prune.every` steps each matrix is re-thresholded
by magnitude. In between, a weight that is zero stays zero: the train step drops updates to it, so no mask
is stored (kernels are never exactly zero otherwise). Scanned layers (a leading `layers` axis) are pruned
layer by layer, like unscanned ones.

Pruning saves nothing at dense compute: the zeros are still multiplied. It makes the weights compressible
and measures how much of a model can go.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from research import checkpoints
from research.config import ConfigError


def _targeted(name: str, targets: tuple[str, ...]) -> bool:
  """Whether the parameter at `name` ('decoder/layers_0/mlp/wi/kernel') is a matrix named in `targets`."""
  parts = name.split('/')
  module = parts[-2] if parts[-1] == 'kernel' and len(parts) > 1 else parts[-1]
  return module in targets


def _stacked(name: str) -> bool:
  return 'layers' in name.split('/')


def target_mask(params: Any, prune: ml_collections.ConfigDict) -> Any:
  """A pytree of bools: which parameters are pruned. Refuses targets that name no parameter."""
  named = jax.tree_util.tree_map_with_path(lambda p, _: checkpoints.path_name(p), params)
  mask = jax.tree.map(lambda name: _targeted(name, tuple(prune.targets)), named)
  if not any(jax.tree.leaves(mask)):
    modules = sorted({n.split('/')[-2] if n.endswith('/kernel') else n.split('/')[-1] for n in jax.tree.leaves(named)})
    raise ConfigError(f'prune.targets={tuple(prune.targets)} names no parameter; matrices are named '
                      f'{", ".join(modules)}')
  return mask


def check(prune: ml_collections.ConfigDict | None, num_steps: int) -> None:
  if prune is None:  # a config saved before pruning existed
    return
  if not 0 <= prune.sparsity < 1:
    raise ConfigError(f'prune.sparsity must be in [0, 1), got {prune.sparsity}')
  if prune.sparsity and prune.every < 1:
    raise ConfigError(f'prune.every must be >= 1, got {prune.every}')
  end = end_step(prune, num_steps)
  if prune.sparsity and not 0 <= prune.start_step < end <= num_steps:
    raise ConfigError(f'pruning needs 0 <= prune.start_step ({prune.start_step}) < prune.end_step ({end}) <= '
                      f'train.num_steps ({num_steps})')


def end_step(prune: ml_collections.ConfigDict, num_steps: int) -> int:
  return prune.end_step or (3 * num_steps) // 4


def sparsity_at(step: jax.Array, prune: ml_collections.ConfigDict, num_steps: int) -> jax.Array:
  """The scheduled fraction of zeros after `step` updates: s (1 - (1 - progress)^3), progress clipped to [0, 1]."""
  start, end = prune.start_step, end_step(prune, num_steps)
  progress = jnp.clip((step - start) / (end - start), 0.0, 1.0)
  return prune.sparsity * (1.0 - (1.0 - progress) ** 3)


def _prune_matrix(weights: jax.Array, sparsity: jax.Array) -> jax.Array:
  """Zeroes the floor(sparsity * size) smallest-magnitude entries (ties broken by position)."""
  flat = weights.reshape(-1)
  count = jnp.floor(sparsity * flat.size).astype(jnp.int32)
  ranks = jnp.argsort(jnp.argsort(jnp.abs(flat)))
  return jnp.where(ranks < count, 0, flat).reshape(weights.shape).astype(weights.dtype)


def apply(params: Any, previous: Any, step: jax.Array, mask: Any, prune: ml_collections.ConfigDict,
          num_steps: int) -> Any:
  """`params` after update number `step`: weights that were zero in `previous` stay zero, and on a
  re-thresholding step each targeted matrix is pruned to the scheduled sparsity."""
  kept = jax.tree.map(lambda new, old, m: jnp.where(old == 0, jnp.zeros_like(new), new) if m else new,
                      params, previous, mask)
  sparsity = sparsity_at(step, prune, num_steps)
  names = jax.tree_util.tree_map_with_path(lambda p, _: checkpoints.path_name(p), params)

  def rethreshold(tree):
    def one(weights, m, name):
      if not m:
        return weights
      if _stacked(name):
        return jax.vmap(_prune_matrix, in_axes=(0, None))(weights, sparsity)
      return _prune_matrix(weights, sparsity)
    return jax.tree.map(one, tree, mask, names)
  due = (step % prune.every == 0) & (step >= prune.start_step) & (step <= end_step(prune, num_steps))
  return jax.lax.cond(due, rethreshold, lambda tree: tree, kept)


def sparsity(params: Any, mask: Any) -> jax.Array:
  """Fraction of exact zeros over the targeted parameters."""
  leaves = [x for x, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if m]
  zeros = sum(jnp.sum(x == 0) for x in leaves)
  return zeros / sum(x.size for x in leaves)
