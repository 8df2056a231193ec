"""Load a finished (or running) experiment from its workdir, for notebooks and analysis scripts.

  exp = research.load_experiment('workdirs/quickstart')
  logits = exp.model.apply({'params': exp.params}, batch)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from research import checkpoints, config as config_lib, files, metrics as metrics_lib, train
from research.data.tokenizer import Tokenizer


@dataclasses.dataclass
class LoadedExperiment:
  config: ml_collections.ConfigDict
  model: nn.Module
  params: Any
  metrics: list[dict]  # every record of metrics.jsonl, in order
  tokenizer: Tokenizer
  step: int
  objective: Any
  experiment: train.Experiment  # the mesh, rules and parameter shardings the parameters were restored onto


def load_experiment(workdir: str, step: int | None = None, mesh: dict[str, int] | None = None) -> LoadedExperiment:
  """Config, model, parameters and metrics history of `workdir` at `step` (default: latest).

  The parameters are restored onto one device, or sharded over a mesh of all devices with the axis sizes in
  `mesh` (e.g. {'fsdp': 4, 'tensor': 2}; unnamed axes are 1, -1 takes the remaining devices).
  """
  config = train.saved_config(workdir)
  tokenizer = train.tokenizer_for_workdir(config, workdir)
  config.mesh.update({'data': 1, 'fsdp': 1, 'tensor': 1, **(mesh or {})})
  config.mesh.dcn = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1))
  # Batch sizes only need to fit the mesh here (a multiple of every data-parallel size).
  config.train.batch_size = config.eval.batch_size = jax.device_count() if mesh else 1
  config.train.grad_accum_steps = 1
  exp = train.setup(config, devices=None if mesh else jax.devices()[:1], tokenizer=tokenizer)
  checkpointer = checkpoints.Checkpointer(files.path(workdir) / 'checkpoints')
  steps = checkpointer.all_steps()
  if not steps:
    raise config_lib.ConfigError(f'{workdir} holds no complete checkpoint yet')
  step = steps[-1] if step is None else step
  if step not in steps:
    raise config_lib.ConfigError(f'{workdir} has no checkpoint at step {step}; it has steps {steps}')
  state = checkpointer.restore(step, exp.abstract_state)
  checkpointer.close()
  return LoadedExperiment(config, exp.model, state.params, metrics_lib.read_metrics(workdir), tokenizer, step,
                          exp.objective, exp)
