"""Load a finished (or running) experiment from its workdir and look inside it, for notebooks and scripts.

  exp = analysis.load_experiment('workdirs/quickstart')
  attention = analysis.attention_weights(exp, ['three hundred and twelve'], ['312'])
  weights, queries, keys = attention.example('decoder/layers_1/cross_attention')  # [heads, q, k], token labels
  layers = analysis.parameter_stats(exp.params, by_layer=True)  # norms, RMS, max |w|, sparsity
  changes = analysis.compare(analysis.load_experiment('workdirs/quickstart', step=500).params, exp.params)

Tensors are named by their path ('encoder/layers_0/self_attention/query'); scanned layers (model.scan_layers)
are split into the same per-layer names, so scanned and unscanned checkpoints read and compare alike.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from research import checkpoints, config as config_lib, files, mesh as mesh_lib, metrics as metrics_lib, models
from research import train
from research.data import pipeline
from research.data.tokenizer import EOS_ID, PAD_ID, UNK_ID, Tokenizer


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


# ----------------------------------------------------------------------------- attention


@dataclasses.dataclass(frozen=True)
class Attention:
  """Every attention sublayer's weights by name ('encoder/layers_0/self_attention', 'decoder/layers_1/
  cross_attention', ...), each [batch, heads, queries, keys] including padding, in reading order; and each stack's
  tokens ('encoder', 'decoder'): per example, the labels of the real tokens it read."""
  weights: dict[str, np.ndarray]
  tokens: dict[str, list[list[str]]]

  def example(self, name: str, index: int = 0) -> tuple[np.ndarray, list[str], list[str]]:
    """Example `index`'s weights [heads, queries, keys] at `name` without padding, its query and key tokens."""
    if name not in self.weights:
      raise config_lib.unknown_key_error(name, self.weights, 'attention layer')
    stack = name.split('/')[0]
    queries = self.tokens[stack][index]
    keys = self.tokens['encoder' if name.endswith('cross_attention') else stack][index]
    return self.weights[name][index, :, :len(queries), :len(keys)], queries, keys


def attention_weights(exp: LoadedExperiment, inputs: Sequence[str], targets: Sequence[str] | None = None) -> Attention:
  """The attention weights of `exp`'s model reading `inputs`, teacher-forced on `targets`.

  The texts are laid out as in training: input -> encoder and target -> decoder, or input + target as one
  decoder sequence (decoder-only); encoder-only models read the inputs alone (`targets` is then ignored).
  """
  family = exp.config.model.family
  if not inputs:
    raise config_lib.ConfigError('give at least one input text')
  if family == 'encoder_only':
    targets = [''] * len(inputs)
  elif targets is None:
    raise config_lib.ConfigError(f'a {family} model reads a target too: give the target texts to teacher-force')
  if len(targets) != len(inputs):
    raise config_lib.ConfigError(f'{len(inputs)} inputs but {len(targets)} targets: give one target per input')
  batch = _batch(exp, inputs, targets)
  weights = _sown_weights(exp, batch)
  tokens = {stack: [[token_label(exp.tokenizer, t) for t, s in zip(row, segments) if s > 0]
                    for row, segments in zip(batch[f'{stack}_input_tokens'], batch[f'{stack}_segment_ids'])]
            for stack in ('encoder', 'decoder') if f'{stack}_input_tokens' in batch}
  count = len(inputs)  # the rest of the batch is padding that fills the mesh
  return Attention({name: w[:count] for name, w in weights.items()},
                   {stack: rows[:count] for stack, rows in tokens.items()})


_SPECIAL_TOKENS = {PAD_ID: '<s>', EOS_ID: '</s>', UNK_ID: '<unk>'}  # id 0 is read only as the decoder's start


def token_label(tokenizer: Tokenizer, token: int) -> str:
  """A token as text, for axis labels: whitespace as '▁', ids past the tokenizer's vocabulary (sentinels,
  [MASK]) by number."""
  token = int(token)
  if token in _SPECIAL_TOKENS:
    return _SPECIAL_TOKENS[token]
  if token >= tokenizer.vocab_size:
    return f'<id {token}>'
  text = tokenizer.decode([token])
  return text if text.strip() else '▁'


def _batch(exp: LoadedExperiment, inputs: Sequence[str], targets: Sequence[str]) -> dict:
  """Model features of the texts, padded to the longest and to a multiple of the data-parallel size."""
  # The texts as given: no class label to look up, no span corruption.
  layout = dataclasses.replace(exp.objective.layout, classes=(), noise_density=0.0)
  encode = pipeline.Encode(exp.tokenizer, layout)
  examples = [encode.map({'input': i, 'target': t}) for i, t in zip(inputs, targets)]
  data_parallel = mesh_lib.data_parallel_size(exp.experiment.mesh)
  examples += [layout.empty()] * (-len(examples) % data_parallel)
  lengths = {key: max(len(example[key]) for example in examples) for key in layout.lengths()}
  padded = [pipeline.pad_example(example, lengths) for example in examples]
  return layout.features({key: np.stack([example[key] for example in padded]) for key in padded[0]})


def _sown_weights(exp: LoadedExperiment, batch: dict) -> dict[str, np.ndarray]:
  """The weights the attention layers sow into 'intermediates', by layer name (scanned layers split)."""
  def forward(params, batch):
    _, state = exp.model.apply({'params': params}, batch, deterministic=True, mutable=['intermediates'])
    return state['intermediates']
  with jax.set_mesh(exp.experiment.mesh), nn.logical_axis_rules(exp.experiment.rules):
    sown = jax.device_get(jax.jit(forward)(exp.params, batch))
  weights = {}
  for path, value in jax.tree_util.tree_leaves_with_path(sown):
    keys = checkpoints.path_keys(path)  # (..., 'self_attention', 'attention_weights', '0'): sow keeps a tuple
    if keys[-2] != 'attention_weights':
      continue
    module = list(keys[:-2])
    if 'layers' in module:  # nn.scan stacks the layers' values on a leading axis
      at = module.index('layers')
      for i, layer in enumerate(value):
        weights['/'.join(module[:at] + [f'layers_{i}'] + module[at + 1:])] = layer
    else:
      weights['/'.join(module)] = value
  return {name: weights[name] for name in sorted(weights, key=_reading_order)}


_FIRST = {'token_embed': 0, 'encoder': 1, 'decoder': 2, 'self_attention': 3}  # before any other name, in this order


def _reading_order(name: str) -> list[tuple]:
  """Sort key: embeddings, encoder, decoder; layers by number (layers_2 before layers_10); self- before
  cross-attention."""
  return [(_FIRST.get(part, len(_FIRST)), *[int(t) if t.isdigit() else t for t in re.split(r'(\d+)', part)])
          for part in name.split('/')]


# ----------------------------------------------------------------------------- parameters


def layer_of(name: str) -> str:
  """The layer a tensor belongs to ('encoder/layers_0'), or for tensors outside the layers their module
  ('token_embed', 'decoder/final_norm')."""
  parts = name.split('/')
  for i, part in enumerate(parts):
    if re.fullmatch(r'layers_\d+', part):
      return '/'.join(parts[:i + 1])
  return '/'.join(parts[:-1]) or name


def parameter_stats(params: Any, by_layer: bool = False) -> list[dict]:
  """Per tensor (or per layer with `by_layer`), in reading order: name, shape (or number of tensors), size, L2 norm,
  RMS, largest absolute value, and sparsity (the fraction of exact zeros)."""
  tensors = _tensors(params)
  rows = []
  for name, members in _grouped(tensors, by_layer).items():
    arrays = [tensors[member].astype(np.float64) for member in members]
    size = sum(a.size for a in arrays)
    norm = math.sqrt(sum(float(np.sum(np.square(a))) for a in arrays))
    rows.append({'name': name, **({'tensors': len(arrays)} if by_layer else {'shape': arrays[0].shape}),
                 'size': size, 'norm': norm, 'rms': norm / math.sqrt(max(size, 1)),
                 'max_abs': max((float(np.max(np.abs(a))) for a in arrays if a.size), default=0.0),
                 'sparsity': sum(int(np.sum(a == 0)) for a in arrays) / max(size, 1)})
  return rows


def compare(params_a: Any, params_b: Any, by_layer: bool = False) -> list[dict]:
  """How `params_b` differs from `params_a`, per tensor (or per layer with `by_layer`): both norms, the relative
  difference ||b - a|| / ||a||, the cosine similarity and the largest absolute difference.

  Refuses (ConfigError) trees whose tensors differ in name or shape, naming the first such tensor.
  """
  a, b = _tensors(params_a), _tensors(params_b)
  for name in sorted(a.keys() | b.keys(), key=_reading_order):
    if name not in a or name not in b:
      raise config_lib.ConfigError(f'the checkpoints hold different tensors: {name} is only in the '
                                   f'{"first" if name in a else "second"}; compare checkpoints of one architecture')
    if a[name].shape != b[name].shape:
      raise config_lib.ConfigError(f'the checkpoints differ in tensor {name}: shape {a[name].shape} in the first, '
                                   f'{b[name].shape} in the second; compare checkpoints of one architecture')
  rows = []
  for name, members in _grouped(a, by_layer).items():
    pairs = [(a[member].astype(np.float64), b[member].astype(np.float64)) for member in members]
    aa, bb = (sum(float(np.sum(np.square(p[i]))) for p in pairs) for i in (0, 1))
    ab = sum(float(np.sum(x * y)) for x, y in pairs)
    difference = math.sqrt(sum(float(np.sum(np.square(y - x))) for x, y in pairs))
    rows.append({'name': name, 'size': sum(x.size for x, _ in pairs), 'norm_a': math.sqrt(aa),
                 'norm_b': math.sqrt(bb),
                 'relative_difference': difference / math.sqrt(aa) if aa else (0.0 if difference == 0 else math.inf),
                 'cosine': ab / math.sqrt(aa * bb) if aa and bb else float(difference == 0),
                 'max_abs_difference': max((float(np.max(np.abs(y - x))) for x, y in pairs if x.size), default=0.0)})
  return rows


def _tensors(params: Any) -> dict[str, np.ndarray]:
  """Every tensor as numpy by path name, scanned layers split into `layers_<i>`, in reading order."""
  flat = {checkpoints.path_name(path): np.asarray(value)
          for path, value in jax.tree_util.tree_leaves_with_path(models.unstack_layers(params))}
  return {name: flat[name] for name in sorted(flat, key=_reading_order)}


def _grouped(names: Sequence[str], by_layer: bool) -> dict[str, list[str]]:
  groups = {}
  for name in names:
    groups.setdefault(layer_of(name) if by_layer else name, []).append(name)
  return groups
