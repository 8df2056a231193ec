"""Start from another experiment: restore all or some of its parameters, and train all or only some of them.

`config.init` names the source (a training workdir, or one written by experiments/convert_checkpoint.py) and
which of its parameters to restore (`include`: regexes over names such as 'encoder/layers_0/mlp/wi/kernel');
parameters it does not restore keep their fresh initialisation (a new classifier head, LoRA adapters).
`config.train.trainable` / `freeze` choose what trains. A frozen parameter gets no gradient (it is
`stop_gradient`-ed inside the loss, so XLA drops its weight-gradient matmuls), no optimizer state and no
weight decay: it stays bit-identical.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

import jax
import ml_collections
import numpy as np
import optax

from research import checkpoints, files
from research.config import ConfigError, nearest


def source_workdir(config: ml_collections.ConfigDict) -> str:
  """`init.workdir`, '' when the run starts fresh (also for configs saved before `init` existed)."""
  return config.get('init', {}).get('workdir', '')


def names(tree: Any) -> list[str]:
  return [checkpoints.path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


def _matches(patterns: Iterable[str], name: str) -> bool:
  return any(re.fullmatch(p, name) for p in patterns)


def _check_each_matches(patterns: Sequence[str], candidates: Sequence[str], key: str, what: str) -> None:
  """Refuses a pattern that matches none of `candidates`, naming the nearest ones."""
  for pattern in patterns:
    try:
      re.compile(pattern)
    except re.error as e:
      raise ConfigError(f'{key}: {pattern!r} is not a regular expression ({e})') from None
    if not any(re.fullmatch(pattern, c) for c in candidates):
      close = nearest(pattern, candidates) or list(candidates[:3])
      raise ConfigError(f'{key}: {pattern!r} matches no parameter of {what} (patterns match whole names); '
                        f'names there include {", ".join(close)}')


# ----------------------------------------------------------------------------- which parameters train


def trainable_mask(params: Any, train: ml_collections.ConfigDict) -> Any:
  """True for each parameter that trains: it matches a `train.trainable` pattern and no `train.freeze` pattern."""
  trainable, freeze = tuple(train.get('trainable', ('.*',))), tuple(train.get('freeze', ()))
  all_names = names(params)
  _check_each_matches(trainable, all_names, 'train.trainable', 'this model')
  _check_each_matches(freeze, all_names, 'train.freeze', 'this model')
  mask = jax.tree_util.tree_map_with_path(
      lambda p, _: _matches(trainable, checkpoints.path_name(p)) and not _matches(freeze, checkpoints.path_name(p)),
      params)
  if not any(jax.tree.leaves(mask)):
    raise ConfigError('train.trainable and train.freeze leave no parameter to train')
  return mask


def count(params: Any, mask: Any = None) -> int:
  """Number of parameter values (only those where `mask` is True, given a mask)."""
  mask = jax.tree.map(lambda _: True, params) if mask is None else mask
  return sum(int(np.prod(p.shape)) for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if m)


def optimizer_for(base: optax.GradientTransformation, mask: Any) -> optax.GradientTransformation:
  """`base` for the trainable parameters; frozen ones get zero updates and no state. With nothing frozen this is
  `base` itself, so the optimizer state (and so checkpoints) keep their layout."""
  if all(jax.tree.leaves(mask)):
    return base
  labels = jax.tree.map(lambda trains: 'train' if trains else 'frozen', mask)
  return optax.multi_transform({'train': base, 'frozen': optax.set_to_zero()}, labels)


def stop_frozen(params: Any, mask: Any) -> Any:
  """Inside the loss: frozen parameters as constants, so no gradient (and no matmul for one) is computed."""
  return jax.tree.map(lambda p, trains: p if trains else jax.lax.stop_gradient(p), params, mask)


# ----------------------------------------------------------------------------- restoring from another run


def check_vocabulary(data: ml_collections.ConfigDict, source_data: ml_collections.ConfigDict, tokenizer: Any,
                     workdir: str) -> None:
  """Refuses a data config whose tokenizer would give token ids other than the source run's (`tokenizer`)."""
  if data.tokenizer != source_data.tokenizer:
    raise ConfigError(f'data.tokenizer={data.tokenizer!r}, but init.workdir={workdir} was trained with '
                      f'{source_data.tokenizer!r}; token ids must mean the same: set data.tokenizer='
                      f'{source_data.tokenizer!r}')
  vocab_file = data.get('vocab_file') if data.tokenizer == 'sentencepiece' else ''
  if vocab_file and not files.path(vocab_file).exists():
    raise ConfigError(f'data.vocab_file={vocab_file} does not exist')
  if vocab_file and files.path(vocab_file).read_bytes() != tokenizer.serialized:
    raise ConfigError(f'data.vocab_file={vocab_file} is not the vocabulary of init.workdir={workdir}; leave '
                      'data.vocab_file empty (the run uses the source\'s vocabulary)')


def _source_checkpoint(init: ml_collections.ConfigDict) -> tuple[checkpoints.Checkpointer, int]:
  directory = files.path(init.workdir) / 'checkpoints'
  if not directory.is_dir():
    raise ConfigError(f'init.workdir={init.workdir} holds no checkpoints/; name a training workdir or one '
                      'written by experiments/convert_checkpoint.py')
  checkpointer = checkpoints.Checkpointer(directory)
  steps = checkpointer.all_steps()
  step = init.step or (steps[-1] if steps else None)
  if step not in steps:
    checkpointer.close()
    raise ConfigError(f'init.step={init.step}: {init.workdir} has checkpoints at steps {steps}')
  return checkpointer, step


def select(include: Sequence[str], saved: dict[str, tuple], wanted: dict[str, tuple], workdir: str) -> list[str]:
  """The names to restore: the saved parameters matching `include` (all when empty), each of which the new model
  must have with the same shape."""
  saved_names = sorted(saved)
  _check_each_matches(include, saved_names, 'init.include', f'init.workdir={workdir}')
  chosen = [n for n in saved_names if not include or _matches(include, n)]
  for name in chosen:
    if name not in wanted:
      close = ', '.join(nearest(name, wanted)) or 'none'
      hint = 'list the ones to restore in init.include' if not include else 'narrow init.include'
      raise ConfigError(f'init.workdir={workdir} has parameter {name}, which this model lacks (nearest: {close}); '
                        f'{hint}')
    if tuple(saved[name]) != tuple(wanted[name]):
      raise ConfigError(f'init.workdir={workdir}: parameter {name} has shape {tuple(saved[name])} there but '
                        f'{tuple(wanted[name])} in this model; change the model or leave it out of init.include')
  return chosen


def restore(init: ml_collections.ConfigDict, params: Any) -> Any:
  """`params` (arrays in their shardings, any mesh) with the tensors `init` selects read from its source checkpoint
  onto the same shardings; the others are returned as they are."""
  checkpointer, step = _source_checkpoint(init)
  try:
    leaves = {checkpoints.path_name(p): x for p, x in jax.tree_util.tree_leaves_with_path(params)}
    chosen = select(tuple(init.include), checkpointer.param_shapes(step),
                    {n: x.shape for n, x in leaves.items()}, init.workdir)
    abstract: dict = {}
    for name in chosen:
      *parents, last = name.split('/')
      node = abstract
      for key in parents:
        node = node.setdefault(key, {})
      node[last] = jax.ShapeDtypeStruct(leaves[name].shape, leaves[name].dtype, sharding=leaves[name].sharding)
    restored = {checkpoints.path_name(p): x
                for p, x in jax.tree_util.tree_leaves_with_path(checkpointer.restore_params(step, abstract))}
  finally:
    checkpointer.close()
  return jax.tree_util.tree_map_with_path(lambda p, x: restored.get(checkpoints.path_name(p), x), params)


def initialise_from(init: ml_collections.ConfigDict, state: Any, optimizer: optax.GradientTransformation,
                    opt_shardings: Any) -> Any:
  """A fresh train state with the parameters `init` selects taken from its source, and optimizer state for them."""
  params = restore(init, state.params)
  opt_state = jax.jit(optimizer.init, out_shardings=opt_shardings)(params)
  return state.replace(params=params, opt_state=opt_state)
