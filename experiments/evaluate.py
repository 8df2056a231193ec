r"""Evaluates a workdir's checkpoints on a split of its data, with the code of training's periodic evaluation.

  python experiments/evaluate.py --workdir=workdirs/quickstart                # latest checkpoint, eval split
  python experiments/evaluate.py --workdir=workdirs/quickstart --all_steps --split=test --num_examples=0
  python experiments/evaluate.py --workdir=workdirs/t5_small --int8 --mesh=fsdp=4,tensor=2

Reports the objective's metrics (loss, accuracy, exact match, and BLEU/chrF for objectives that generate text;
accuracy and macro precision/recall/F1 for classifiers) and the parameter bytes. Writes
<output_dir>/<split>[_int8].json (one record per step) and <split>[_int8].md (the same as a Markdown table),
prints the table and a few decoded examples.
"""

from absl import app, flags, logging

from research import config as config_lib, evaluation, files

_WORKDIR = flags.DEFINE_string('workdir', None, 'The training (or imported) workdir to evaluate.', required=True)
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step to evaluate (default: the latest).')
_ALL_STEPS = flags.DEFINE_boolean('all_steps', False, 'Evaluate every checkpoint kept in the workdir.')
_SPLIT = flags.DEFINE_string('split', None, "Split of the config's data source (default: data.eval_split).")
_NUM_EXAMPLES = flags.DEFINE_integer('num_examples', None, 'Examples from the start of the split; 0 = all '
                                     '(default: the config\'s eval.num_examples).')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', None, "Global batch size (default: the config's eval.batch_size), "
                                   'rounded up to a multiple of the data-parallel size.')
_INT8 = flags.DEFINE_boolean('int8', False, 'Evaluate int8-quantized weights (one scale per output channel).')
_MESH = flags.DEFINE_string('mesh', 'data=-1', 'Mesh axis sizes over all local devices, e.g. fsdp=4,tensor=2 '
                            '(unnamed axes 1).')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Where the JSON and Markdown results go (default: '
                                  f'<workdir>/{evaluation.OUTPUT_DIR}).')


@config_lib.exit_on_config_error
def main(argv):
  if len(argv) > 1:
    raise config_lib.ConfigError(f'unexpected arguments {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  results, examples = evaluation.evaluate_workdir(
      _WORKDIR.value, step=_STEP.value, all_steps=_ALL_STEPS.value, split=_SPLIT.value,
      num_examples=_NUM_EXAMPLES.value, batch_size=_BATCH_SIZE.value, int8=_INT8.value, mesh=_MESH.value)
  output_dir = _OUTPUT_DIR.value or str(files.path(_WORKDIR.value) / evaluation.OUTPUT_DIR)
  paths = evaluation.write_results(results, output_dir)
  last = results[-1]
  print(f"{_WORKDIR.value} on {last['split']!r} ({last['examples']} examples"
        f"{', int8 weights' if last['int8'] else ''}):\n")
  print(evaluation.markdown_table(results))
  if last['int8']:
    print(f"parameters: {last['param_bytes']:,} bytes in int8, {last['float_param_bytes']:,} in float "
          f"({last['param_bytes'] / last['float_param_bytes']:.2f}x)")
  print(f"step {last['step']} examples:" + ''.join(f'\n  {source!r} -> {prediction!r} (target {target!r})'
                                                   for source, target, prediction in examples))
  print(f'wrote {paths[0]} and {paths[1]}')


if __name__ == '__main__':
  app.run(main)
