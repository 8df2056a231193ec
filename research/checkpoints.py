"""Checkpoints with Orbax: train state and data-iterator state, saved together per step.

Orbax writes each step into a temporary directory and renames it only once every process has
finished writing, so an interrupted save is never listed as a step and never restored.
"""

from __future__ import annotations

import json
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from research import files
from research.config import ConfigError


def path_keys(path) -> tuple[str, ...]:
  """A pytree path as plain names, the same for dict keys, attributes and sequence indices."""
  return tuple(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)


def path_name(path) -> str:
  return '/'.join(path_keys(path))


class Checkpointer:
  """Keeps the last `keep` steps of `directory`; saves are asynchronous (training continues)."""

  def __init__(self, directory: str, keep: int = 2, asynchronous: bool = True):
    self.directory = files.path(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=asynchronous,
                                             create=True),
        item_handlers={'state': ocp.StandardCheckpointHandler(), 'data': grain.checkpoint.CheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, data_iterator=None, force: bool = False) -> None:
    items = {'state': ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
    self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, abstract_state: Any, data_iterator=None, elastic: bool = False) -> Any:
    """Restores the state onto the shardings of `abstract_state` (ShapeDtypeStructs, any mesh), and
    the data iterator in place; refuses a checkpoint whose tensors do not match by name and shape.

    `elastic`: the iterator state is the same in every process (it is the global step), so a
    checkpoint written by another number of processes restores from any process's file.
    """
    self.check_shapes(step, abstract_state)
    state = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    data = self.directory / str(step) / 'data'
    if data_iterator is not None and data.is_dir():  # an imported checkpoint has no data position
      own = data / f'process_{jax.process_index()}-of-{jax.process_count()}.json'
      written = sorted(f.name for f in data.iterdir() if f.name.startswith('process_'))
      if own.exists():
        path = own
      elif elastic and written:
        path = data / written[0]
      else:
        raise ConfigError(f'checkpoint {data} was written by another number of processes ({", ".join(written)}); '
                          f'with data.pack=True the data position cannot move to {jax.process_count()} processes')
      data_iterator.set_state(json.loads(path.read_text()))
    return state['state']

  def param_shapes(self, step: int) -> dict[str, tuple[int, ...]]:
    """{'encoder/layers_0/mlp/wi/kernel': shape, ...} of the parameters saved at `step` (read from metadata)."""
    saved = self.manager.item_metadata(step)['state']['params']
    return {path_name(p): tuple(m.shape) for p, m in jax.tree_util.tree_leaves_with_path(saved)}

  def restore_params(self, step: int, abstract_params: dict) -> dict:
    """Only the parameters named in `abstract_params` (nested dicts of ShapeDtypeStructs with shardings, any
    subset of the saved ones), read onto those shardings; the optimizer state is not read at all."""
    item = {'params': abstract_params}
    args = ocp.args.PyTreeRestore(item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                                  partial_restore=True)
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as reader:
      return reader.restore(self.directory / str(step) / 'state', args=args)['params']

  def check_shapes(self, step: int, abstract_state: Any) -> None:
    saved = self.manager.item_metadata(step)['state']
    saved_leaves = {path_name(p): tuple(m.shape) for p, m in jax.tree_util.tree_leaves_with_path(saved)}
    wanted = {path_name(p): tuple(np.shape(x)) for p, x in jax.tree_util.tree_leaves_with_path(abstract_state)}
    where = self.directory / str(step)
    for name, shape in wanted.items():
      if name not in saved_leaves:
        raise ConfigError(f'checkpoint {where} has no tensor {name}; it was written by a different model')
      if saved_leaves[name] != shape:
        raise ConfigError(f'checkpoint {where}: tensor {name} has shape {saved_leaves[name]} but the model '
                          f'expects {shape}; it was written by a different config')

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
