r"""Looks inside a trained checkpoint: attention maps, training curves, parameter statistics, and how the parameters
moved between two checkpoints. Works for every model family.

  python experiments/analyze.py --workdir=workdirs/quickstart
  python experiments/analyze.py --workdir=workdirs/quickstart --input='three hundred and twelve' --target=312
  python experiments/analyze.py --workdir=workdirs/quickstart --compare_workdir=workdirs/quickstart_scan

Writes into --output_dir (default <workdir>/analysis) one PNG per attention layer, per logged metric, of the
per-layer parameter norms and of the per-layer change between the checkpoints, and summary.md with every table
and figure; prints the tables. Read top to bottom, it is a notebook: each step is a few calls of
`research.analysis` and `research.plots`.
"""

import numpy as np
from absl import app, flags, logging

from research import analysis, config as config_lib, decoding, evaluation, files, inference, plots
from research.data import sources

_WORKDIR = flags.DEFINE_string('workdir', 'workdirs/quickstart', 'The training (or imported) workdir to analyse.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step to analyse (default: the latest).')
_INPUT = flags.DEFINE_string('input', None, 'Text to read (default: the first example of the eval split).')
_TARGET = flags.DEFINE_string('target', None, 'Target text the decoder reads, teacher-forced (default: with --input, '
                              "the model's greedy output; else the example's target).")
_COMPARE_STEP = flags.DEFINE_integer('compare_step', None, 'Compare with this checkpoint step (default: the earliest '
                                     'checkpoint kept, if the workdir has two).')
_COMPARE_WORKDIR = flags.DEFINE_string('compare_workdir', None, 'Compare with this workdir (at --compare_step, '
                                       'default its latest) instead; it must have the same architecture.')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Where figures and summary.md go (default: <workdir>/analysis).')

STAT_COLUMNS = ['name', 'tensors', 'size', 'norm', 'rms', 'max_abs', 'sparsity']
CHANGE_COLUMNS = ['name', 'norm_a', 'norm_b', 'relative_difference', 'cosine', 'max_abs_difference']


class Report:
  """What the walkthrough shows: printed as it goes, and collected into summary.md next to the figures."""

  def __init__(self, output_dir):
    self.directory = files.path(output_dir)
    self.directory.mkdir(parents=True, exist_ok=True)
    self.lines = []
    self.figures = []

  def write(self, text: str = '') -> None:
    print(text)
    self.lines.append(text)

  def figure(self, name: str):
    """The path of a new figure, linked from the summary."""
    self.figures.append(self.directory / name)
    self.lines.append(f'![{name}]({name})')
    return self.figures[-1]

  def save(self):
    path = self.directory / 'summary.md'
    files.write_atomic(path, ('\n'.join(self.lines) + '\n').encode())
    return path


def example(exp: analysis.LoadedExperiment) -> tuple[str, str, str]:
  """(input, target, where they come from): the flags, the model's own output, or the eval split's first example."""
  if _INPUT.value is None:
    record = sources.open_split(exp.config.data, 'eval')[0]
    return record['input'], record['target'], f'the first example of the {exp.config.data.eval_split!r} split'
  if _TARGET.value is not None or exp.config.model.family == 'encoder_only':
    return _INPUT.value, _TARGET.value or '', 'given'
  options = decoding.Options(max_new_tokens=exp.config.data.max_target_length)
  (record,) = inference.TextDecoder(exp, options, batch_size=1).decode(inference.read_prompts([_INPUT.value]))
  if 'error' in record:
    raise config_lib.ConfigError(f'--input cannot be decoded: {record["error"]}')
  return _INPUT.value, record['output'], "the model's greedy output"


@config_lib.exit_on_config_error
def main(argv):
  if len(argv) > 1:
    raise config_lib.ConfigError(f'unexpected arguments {argv[1:]}')
  if _TARGET.value is not None and _INPUT.value is None:
    raise config_lib.ConfigError('--target needs --input')
  logging.set_verbosity(logging.WARNING)
  workdir = _WORKDIR.value
  report = Report(_OUTPUT_DIR.value or files.path(workdir) / 'analysis')

  # 1. Load the experiment: its config, model, parameters at one step, and its metrics history; and the checkpoint
  #    to compare with (another workdir, another step, or by default the earliest one kept), if any.
  exp = analysis.load_experiment(workdir, _STEP.value)
  steps = evaluation.checkpoint_steps(workdir, all_steps=True)
  other_step = _COMPARE_STEP.value
  if _COMPARE_WORKDIR.value is None and other_step is None and steps[0] != exp.step:
    other_step = steps[0]
  other = None
  if _COMPARE_WORKDIR.value is not None or other_step is not None:
    other = analysis.load_experiment(_COMPARE_WORKDIR.value or workdir, other_step)
  report.write(f'# Analysis of {workdir}\n')
  report.write(f'{exp.config.model.family} model trained on {exp.config.objective.name}, '
               f'{exp.experiment.param_count:,} parameters; checkpoint step {exp.step} '
               f'(kept: {", ".join(map(str, steps))}).\n')

  # 2. Attention: read one example (teacher-forced on its target) and draw every layer's heads.
  text, target, source = example(exp)
  attention = analysis.attention_weights(exp, [text], [target])
  report.write('## Attention\n')
  read = f'input {text!r}' if exp.config.model.family == 'encoder_only' else f'input {text!r}, target {target!r}'
  report.write(f'Reading {read} ({source}). Mean entropy of each head\'s attention in nats '
               '(0: one key; log(keys): uniform):\n')
  rows = []
  for name in attention.weights:
    weights, queries, keys = attention.example(name)
    entropy = -np.sum(weights * np.log(np.maximum(weights, 1e-12)), axis=-1).mean(axis=-1)
    rows.append({'name': name, 'queries': len(queries), 'keys': len(keys),
                 'entropy': ' '.join(f'{e:.2f}' for e in entropy)})
  report.write(evaluation.markdown_table(rows, ['name', 'queries', 'keys', 'entropy']))
  for name in attention.weights:
    weights, queries, keys = attention.example(name)
    plots.attention_maps(weights, queries, keys, report.figure(f'attention_{name.replace("/", "_")}.png'),
                         f'{name}, step {exp.step}')

  # 3. Training curves: the loss and every evaluation metric against the step.
  report.write('\n## Training curves\n')
  logged = sorted({key for record in exp.metrics for key in record if key.startswith('eval/')} - {'eval/examples'})
  for metric in ['train/loss', 'train/accuracy'] + logged:
    name = f'curve_{metric.replace("/", "_")}.png'
    if plots.training_curves({workdir: exp.metrics}, metric, report.directory / name, metric):
      report.figure(name)
  if not exp.metrics:
    report.write(f'{workdir} holds no metrics.jsonl.')

  # 4. Parameters: norms, RMS, largest values and sparsity, per layer (and per tensor in the summary).
  report.write('\n## Parameters\n')
  layers = analysis.parameter_stats(exp.params, by_layer=True)
  report.write(evaluation.markdown_table(layers, STAT_COLUMNS))
  plots.per_layer(layers, 'norm', report.figure('parameter_norms.png'), f'parameter L2 norm per layer, step {exp.step}')
  tensors = analysis.parameter_stats(exp.params)
  report.lines += ['\n### Per tensor\n', evaluation.markdown_table(tensors, ['shape' if c == 'tensors' else c
                                                                             for c in STAT_COLUMNS])]

  # 5. Comparison: how far each layer moved from the other checkpoint (a = that one, b = this one).
  if other is None:
    report.write(f'\n{workdir} keeps no checkpoint before step {exp.step}: nothing to compare with (give '
                 '--compare_step or --compare_workdir).')
  else:
    label = f'{_COMPARE_WORKDIR.value} at step {other.step}' if _COMPARE_WORKDIR.value else f'step {other.step}'
    report.write(f'\n## Comparison with {label}\n')
    report.write(f'a = {label}, b = step {exp.step}; relative difference ||b - a|| / ||a||:\n')
    changes = analysis.compare(other.params, exp.params, by_layer=True)
    report.write(evaluation.markdown_table(changes, CHANGE_COLUMNS))
    plots.per_layer(changes, 'relative_difference', report.figure('comparison.png'),
                    f'relative change per layer: {label} -> step {exp.step}')
    moved = sorted(analysis.compare(other.params, exp.params), key=lambda row: -row['relative_difference'])[:5]
    report.write('\nThe tensors that moved most:\n')
    report.write(evaluation.markdown_table(moved, CHANGE_COLUMNS))

  # 6. The summary, with every figure linked.
  path = report.save()
  print('\n'.join(f'wrote {figure}' for figure in report.figures) + f'\nwrote {path}')


if __name__ == '__main__':
  app.run(main)
