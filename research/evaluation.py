"""Evaluation of a workdir's checkpoints on any split of its data, as experiments/evaluate.py runs it.

The numbers come from `train.evaluate`, the code that evaluates periodically during training, so a step
evaluated here on the config's eval split reproduces that step's `eval/` record in metrics.jsonl. The workdir
is read through `analysis.load_experiment`, onto a mesh of all devices. Results are one record per checkpoint
step, written as JSON and as a Markdown table.
"""

from __future__ import annotations

import dataclasses
import json
import re

import jax

from research import analysis, checkpoints, config as config_lib, files, mesh as mesh_lib, quantize, train
from research.data import sources

OUTPUT_DIR = 'eval'  # inside the workdir, by default
_NOT_METRICS = ('step', 'split', 'int8')


def checkpoint_steps(workdir: str, step: int | None = None, all_steps: bool = False) -> list[int]:
  """The steps to evaluate: `step`, every kept checkpoint, or (default) the latest."""
  if step is not None and all_steps:
    raise config_lib.ConfigError('give --step or --all_steps, not both')
  directory = files.path(workdir) / 'checkpoints'
  steps = []
  if directory.exists():  # the Checkpointer would create it
    checkpointer = checkpoints.Checkpointer(directory)
    steps = checkpointer.all_steps()
    checkpointer.close()
  if not steps:
    raise config_lib.ConfigError(f'{workdir} holds no complete checkpoint yet')
  if step is not None and step not in steps:
    raise config_lib.ConfigError(f'{workdir} has no checkpoint at step {step}; it has steps {steps}')
  return steps if all_steps else [steps[-1] if step is None else step]


def evaluate_workdir(workdir: str, *, step: int | None = None, all_steps: bool = False, split: str | None = None,
                     num_examples: int | None = None, batch_size: int | None = None, int8: bool = False,
                     mesh: str = 'data=-1') -> tuple[list[dict], list[tuple[str, str, str]]]:
  """One record per evaluated step (step, split, int8, every metric, examples, parameter bytes), and decoded
  (input, target, prediction) examples of the last step.

  `split` defaults to the config's data.eval_split, `num_examples` and `batch_size` to its eval section; the
  batch size is rounded up to a multiple of the data-parallel size (padding rows weigh nothing in any metric).
  `mesh` gives axis sizes over all devices. Inputs are checked before any checkpoint is read.
  """
  layout = mesh_lib.parse_layout(mesh)
  saved = train.saved_config(workdir)
  steps = checkpoint_steps(workdir, step, all_steps)
  batch_size = saved.eval.batch_size if batch_size is None else batch_size
  if batch_size < 1:
    raise config_lib.ConfigError(f'--batch_size={batch_size} must be positive')
  split = split or saved.data.eval_split
  records = sources.open_named_split(saved.data, split)
  loaded = analysis.load_experiment(workdir, steps[0], layout)
  exp = dataclasses.replace(loaded.experiment, eval_records=records)
  data_parallel = mesh_lib.data_parallel_size(exp.mesh)
  exp.config.eval.update(batch_size=-(-batch_size // data_parallel) * data_parallel,
                         num_examples=saved.eval.num_examples if num_examples is None else num_examples)
  param_shardings = exp.state_shardings.params
  if int8:
    def quantized(params):
      return quantize.quantize(params, exp.param_axes)
    param_shardings = quantize.shardings(jax.eval_shape(quantized, exp.abstract_state.params), param_shardings)
    to_int8 = jax.jit(quantized, out_shardings=param_shardings)
  eval_step = train.make_eval_step(exp, param_shardings)
  checkpointer = checkpoints.Checkpointer(files.path(workdir) / 'checkpoints')
  results = []
  for checkpoint_step in steps:
    params = loaded.params if checkpoint_step == loaded.step else checkpointer.restore(
        checkpoint_step, exp.abstract_state).params
    sizes = {'param_bytes': quantize.nbytes(params)}
    if int8:
      params = to_int8(params)
      sizes = {'param_bytes': quantize.nbytes(params), 'float_param_bytes': sizes['param_bytes']}
    metrics, examples = train.evaluate(exp, eval_step, params)
    count = int(metrics.pop('examples'))
    results.append({'step': checkpoint_step, 'split': split, 'int8': int8, **metrics, 'examples': count, **sizes})
  checkpointer.close()
  return results, examples


def markdown_table(results: list[dict], columns: list[str] | None = None) -> str:
  """One row per record; a column per metric, or per key in `columns` (floats to 4 significant digits; counts and
  text in full)."""
  columns = columns or ['step'] + [k for k in results[0] if k not in _NOT_METRICS]
  rows = [[f'{r[k]:.4g}' if isinstance(r[k], float) else str(r[k]) for k in columns] for r in results]
  lines = [columns, ['---'] * len(columns)] + rows
  return '\n'.join('| ' + ' | '.join(line) + ' |' for line in lines) + '\n'


def output_name(split: str, int8: bool) -> str:
  """`<split>[_int8]`, with characters of TFDS slices ('test[:500]') made safe for a file name."""
  return re.sub(r'[^\w.-]+', '_', split).strip('_') + ('_int8' if int8 else '')


def write_results(results: list[dict], output_dir: str) -> tuple[str, str]:
  """Writes `<output_dir>/<split>[_int8].json` (the records) and `.md` (the table); returns both paths."""
  directory = files.path(output_dir)
  directory.mkdir(parents=True, exist_ok=True)
  name = output_name(results[0]['split'], results[0]['int8'])
  paths = directory / f'{name}.json', directory / f'{name}.md'
  files.write_atomic(paths[0], (json.dumps(results, indent=2) + '\n').encode())
  files.write_atomic(paths[1], markdown_table(results).encode())
  return str(paths[0]), str(paths[1])
