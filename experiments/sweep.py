r"""Runs a sweep: configs (a base and its ablations) x a grid of field values x seeds, one workdir per trial.

  python experiments/sweep.py --workdir=workdirs/sweeps/ablations --sweep=configs/sweeps/quickstart_ablations.py
  python experiments/sweep.py --workdir=workdirs/sweeps/lr \
      --config=configs/quickstart.py,configs/ablations/quickstart_rmsnorm.py \
      --grid=optimizer.learning_rate=1e-3,3e-3 --seeds=0,1 --set=train.num_steps=1000
  python experiments/sweep.py --workdir=workdirs/sweeps/lr ... --dry_run   # the plan; trains nothing
  python experiments/sweep.py --workdir=workdirs/sweeps/lr --report        # the tables again from the workdirs

Every trial is checked before the first trains. Trials train one after another into <workdir>/<trial name>
(ordinary training workdirs: evaluate.py, decode.py and load_experiment read them); after each, the comparison
is rebuilt: <workdir>/results.md, results.csv, results.json and curve_<metric>.png (a line per trial).
Rerunning the same command skips finished trials and resumes the others; SIGTERM/SIGINT stops the running trial
with a checkpoint. Exit status 1 if a trial failed.
"""

import os
import sys

from absl import app, flags, logging

from research import config as config_lib, mesh as mesh_lib, sweep

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'configs', 'quickstart.py')
_WORKDIR = flags.DEFINE_string('workdir', None, 'The sweep directory: one workdir per trial, and the results.',
                               required=True)
_SWEEP = flags.DEFINE_string('sweep', None, 'A sweep file (configs/sweeps/*.py) whose get_sweep() gives configs, '
                             'grid, trials, seeds, overrides and metric.')
_CONFIG = flags.DEFINE_list('config', [], 'Config files (path.py[:arg]), comma-separated: each is a baseline or '
                            'ablation crossed with the grid (default: the sweep file\'s, else configs/quickstart.py).')
_GRID = flags.DEFINE_multi_string('grid', [], 'An axis of the grid, key=v1,v2,... (repeat for more axes; the '
                                  'trials are their product). Values holding commas: key=[(1, 2), (3,)].')
_SEEDS = flags.DEFINE_list('seeds', [], 'Values of the top-level seed (data order and initialisation) to repeat '
                           'each setting with, e.g. 0,1,2.')
_SET = flags.DEFINE_multi_string('set', [], 'key=value set in every trial (repeat), e.g. train.num_steps=1000.')
_METRIC = flags.DEFINE_string('metric', None, 'The metric that marks the best trial (default: the sweep file\'s, '
                              'with --report the last one used, else eval/loss; loss and perplexity: lowest, others: '
                              'highest).')
_SHARD = flags.DEFINE_string('shard', '0/1', 'i/n: run trials i, i+n, i+2n, ... (to share a sweep between machines '
                             'writing to one sweep directory).')
_DRY_RUN = flags.DEFINE_boolean('dry_run', False, 'Check every trial and print the plan; train nothing.')
_REPORT = flags.DEFINE_boolean('report', False, 'Rebuild and print the results from the trial workdirs; train nothing.')


def _shard(text: str) -> tuple[int, int]:
  index, sep, count = text.partition('/')
  try:
    index, count = int(index), int(count)
  except ValueError:
    index, count = -1, 0
  if not sep or count < 1 or not 0 <= index < count:
    raise config_lib.ConfigError(f'--shard={text!r} is not i/n with 0 <= i < n')
  return index, count


def _seeds(values):
  try:
    return [int(v) for v in values]
  except ValueError:
    raise config_lib.ConfigError(f'--seeds={",".join(values)} must be integers') from None


@config_lib.exit_on_config_error
def main(argv):
  if len(argv) > 1:
    raise config_lib.ConfigError(f'unexpected arguments {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  workdir = _WORKDIR.value
  if _REPORT.value:
    metric = _METRIC.value or sweep.saved_metric(workdir) or 'eval/loss'
    _, _, text = sweep.write_results(workdir, metric, strict=True)
    print(text + f'\nwrote {os.path.join(workdir, sweep.RESULTS_MARKDOWN)}')
    return
  index, count = _shard(_SHARD.value)
  definition = sweep.definition(_SWEEP.value, _CONFIG.value, _GRID.value, _seeds(_SEEDS.value), _SET.value,
                                _METRIC.value, default_config=None if _SWEEP.value else _DEFAULT_CONFIG)
  trials = sweep.expand(definition)
  if 'distributed' in trials[0].config:  # several processes run the same trials together
    mesh_lib.initialize_distributed(trials[0].config.distributed)
  trials = trials[index::count]
  if not trials:
    raise config_lib.ConfigError(f'shard {index}/{count} of this sweep has no trials')
  print(f'sweep {workdir}: checking {len(trials)} trial(s)', flush=True)
  params = sweep.check(trials, workdir)
  print(sweep.describe(trials, workdir, params), flush=True)
  if _DRY_RUN.value:
    return
  outcome = sweep.run(trials, workdir, params, metric=definition.metric)
  _, _, text = sweep.write_results(workdir, definition.metric)
  print('\n' + text + f'\nwrote {os.path.join(workdir, sweep.RESULTS_MARKDOWN)}')
  summary = ', '.join(f'{len(names)} {state}' for state, names in outcome.items() if names)
  print(f'trials: {summary}')
  if outcome['failed']:
    print('failed: ' + ', '.join(outcome['failed']), file=sys.stderr)
    sys.exit(1)
  if outcome['stopped']:
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
