"""Sweeps: trial expansion and names, checks before training, failures and stops, the results tables, and a real
sweep through experiments/sweep.py (trained, rerun, reported, compared with config_diff)."""

import csv
import json
import os
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest

from research import config as config_lib, metrics as metrics_lib, sweep
from research.config import ConfigError
from tests.conftest import REPO, tiny_config

QUICKSTART = os.path.join(REPO, 'configs', 'quickstart.py')
RMSNORM = os.path.join(REPO, 'configs', 'ablations', 'quickstart_rmsnorm.py')


def test_expansion_order_names_and_typed_values():
  definition = sweep.definition(configs=[QUICKSTART, RMSNORM], grid=['optimizer.learning_rate=1e-3,3e-3'],
                                seeds=[0, 1], overrides=['train.num_steps=100'])
  trials = sweep.expand(definition)
  assert [t.name for t in trials] == [
      f'{label},learning_rate={lr},seed={seed}'
      for label in ('quickstart', 'quickstart_rmsnorm') for lr in ('0.001', '0.003') for seed in (0, 1)]
  last = trials[-1]
  assert last.assignments == {'optimizer.learning_rate': 0.003, 'seed': 1}  # parsed by the fields' types
  assert (last.config.optimizer.learning_rate, last.config.seed, last.config.train.num_steps) == (0.003, 1, 100)
  assert (last.config.model.norm, trials[0].config.model.norm) == ('rmsnorm', 'layernorm')
  assert last.source == RMSNORM and [t.index for t in trials] == list(range(8))
  # One config and nothing swept: the trial is the config. One seed: set, not named.
  assert [t.name for t in sweep.expand(sweep.definition(configs=[QUICKSTART]))] == ['quickstart']
  (only,) = sweep.expand(sweep.definition(configs=[QUICKSTART], seeds=[7]))
  assert (only.name, only.config.seed) == ('quickstart', 7)


def test_explicit_points_lists_and_ambiguous_short_names():
  definition = sweep.definition(configs=[QUICKSTART], grid=['train.batch_size=32,64', 'eval.batch_size=[128]'])
  definition.points = [{'model.norm': 'rmsnorm', 'model.activation': 'silu'}, {'model.position_embedding': 'none'}]
  names = [t.name for t in sweep.expand(definition)]
  assert names == ['norm=rmsnorm,activation=silu,train.batch_size=32,eval.batch_size=128',
                   'norm=rmsnorm,activation=silu,train.batch_size=64,eval.batch_size=128',
                   'position_embedding=none,train.batch_size=32,eval.batch_size=128',
                   'position_embedding=none,train.batch_size=64,eval.batch_size=128']
  assert sweep.parse_grid_flag("data.classes=[('a', 'b'), ('c',)]") == ('data.classes', [('a', 'b'), ('c',)])
  assert sweep.name_value(('a', 'b')) == 'a+b' and sweep.name_value(3e-5) == '3e-05'
  assert sweep.name_value('x/y z') == 'x_y_z'


def test_bad_definitions_are_refused_with_what_to_change(tmp_path):
  with pytest.raises(ConfigError, match=r"unknown config key 'optimizer.learning_rte'; nearest valid keys: "
                     r'optimizer.learning_rate.*\(in .*quickstart.py with optimizer.learning_rte=.1e-3.\)'):
    sweep.expand(sweep.definition(configs=[QUICKSTART], grid=['optimizer.learning_rte=1e-3']))
  with pytest.raises(ConfigError, match="model.num_heads='four' is not a valid int"):
    sweep.expand(sweep.definition(configs=[QUICKSTART], grid=['model.num_heads=2,four']))
  with pytest.raises(ConfigError, match="two configs share the label 'quickstart'"):
    sweep.definition(configs=[QUICKSTART, QUICKSTART])
  with pytest.raises(ConfigError, match="two trials would share the directory 'learning_rate=0.001'"):
    sweep.expand(sweep.definition(configs=[QUICKSTART], grid=['optimizer.learning_rate=1e-3,0.001']))
  with pytest.raises(ConfigError, match='gives no values'):
    sweep.definition(configs=[QUICKSTART], grid=['model.norm='])
  with pytest.raises(ConfigError, match="not of the form section.key=value"):
    sweep.definition(configs=[QUICKSTART], overrides=['train.num_steps'])
  bad = tmp_path / 'bad_sweep.py'
  bad.write_text('def get_sweep():\n  return dict(grids={})\n')
  with pytest.raises(ConfigError, match=r"unknown key of the sweep in .*bad_sweep.py 'grids'; nearest valid keys: "
                     'grid'):
    sweep.definition(str(bad))


def test_the_example_sweep_file():
  path = os.path.join(REPO, 'configs', 'sweeps', 'quickstart_ablations.py')
  definition = sweep.definition(path)
  trials = sweep.expand(definition)
  assert definition.metric == 'eval/exact_match'
  assert [t.name for t in trials] == ['baseline', 'rmsnorm_silu', 'pruned80']
  assert trials[0].source == f'{path}:baseline' and trials[0].config.prune.sparsity == 0
  assert trials[1].config.model.norm == 'rmsnorm' and trials[2].config.prune.sparsity == 0.8
  # The command line replaces the configs and seeds, and adds to the grid and overrides.
  definition = sweep.definition(path, configs=[QUICKSTART], seeds=[5],
                                grid=['optimizer.learning_rate=1e-3,3e-3', 'model.norm=rmsnorm'],
                                overrides=['train.num_steps=50'])
  names = [t.name for t in sweep.expand(definition)]
  assert names == ['learning_rate=0.001,norm=rmsnorm', 'learning_rate=0.003,norm=rmsnorm']


def test_check_builds_every_trial_and_reports_all_problems_at_once(data_dir, tmp_path):
  base = tiny_config(data_dir)
  definition = sweep.Definition([('tiny', 'tiny', base)], grid={'model.num_heads': [2, 3, 5]})
  trials = sweep.expand(definition)
  with pytest.raises(ConfigError, match=r'^2 of 3 trials cannot run: num_heads=3: .*divisible.* \| num_heads=5: '):
    sweep.check(trials, str(tmp_path))
  params = sweep.check(trials[:1], str(tmp_path))
  assert params == {'num_heads=2': pytest.approx(params['num_heads=2'])} and params['num_heads=2'] > 10_000
  assert not os.listdir(tmp_path)  # checking writes nothing
  # A trial whose workdir holds another config is refused before anything trains, naming the field.
  saved = tmp_path / 'num_heads=2'
  saved.mkdir()
  (saved / 'config.json').write_text(config_lib.to_json(config_lib.override(base, {'model.mlp_dim': 96})))
  with pytest.raises(ConfigError, match=r'^1 of 1 trials cannot run: num_heads=2: workdir .* holds a run with a '
                     r'different config \(model.mlp_dim: 96 \(saved\) vs 64 \(now\)\)'):
    sweep.check(trials[:1], str(tmp_path))


def _fake_training(monkeypatch, fail=(), stop=()):
  """train_and_evaluate replaced by one that writes a metrics history (two evaluations: eval/loss = half the
  learning rate, then the learning rate; 100 then 200 tokens/s) and a 'checkpoint' step; trials named in `fail`
  raise, those in `stop` end early as on SIGTERM."""
  steps, calls = {}, []

  def train_and_evaluate(config, workdir, devices=None):
    name = os.path.basename(workdir)
    calls.append(name)
    if name in fail:
      raise RuntimeError('boom\nsecond line')
    writer = metrics_lib.MetricWriter(workdir, resume_step=None)
    rate, half_way = config.optimizer.learning_rate, config.train.num_steps // 2
    writer.write(half_way, {'train/loss': 2.0, 'train/tokens_per_sec': 100.0, 'eval/loss': rate / 2,
                            'eval/accuracy': 1 - rate / 2, 'eval/examples': 64})
    writer.write(config.train.num_steps, {'train/loss': 1.0, 'train/tokens_per_sec': 200.0, 'eval/loss': rate,
                                          'eval/accuracy': 1 - rate, 'eval/examples': 64})
    writer.close()
    steps[workdir] = config.train.num_steps // 2 if name in stop else config.train.num_steps
    return {}
  monkeypatch.setattr(sweep.train, 'train_and_evaluate', train_and_evaluate)
  monkeypatch.setattr(sweep, 'latest_step', lambda workdir: steps.get(workdir))
  return calls


def test_run_records_failures_goes_on_and_reruns_only_what_is_unfinished(monkeypatch, tmp_path, capsys):
  definition = sweep.definition(configs=[QUICKSTART], grid=['optimizer.learning_rate=1e-3,2e-3,3e-3'])
  trials = sweep.expand(definition)
  calls = _fake_training(monkeypatch, fail={'learning_rate=0.002'})
  outcome = sweep.run(trials, str(tmp_path), {t.name: 1000 for t in trials})
  assert outcome == {'done': ['learning_rate=0.001', 'learning_rate=0.003'], 'skipped': [],
                     'failed': ['learning_rate=0.002'], 'stopped': []}
  failed = sweep.read_record(str(tmp_path / 'learning_rate=0.002'))
  assert (failed['status'], failed['error']) == ('failed', 'RuntimeError: boom')
  assert 'Traceback' in (tmp_path / 'learning_rate=0.002' / sweep.ERROR_FILE).read_text()
  results = json.loads((tmp_path / sweep.RESULTS_JSON).read_text())
  assert [t['status'] for t in results['trials']] == ['done', 'failed', 'done']
  assert results['best'] == 'learning_rate=0.001' and results['varied'] == ['optimizer.learning_rate']
  table = (tmp_path / sweep.RESULTS_MARKDOWN).read_text()
  assert '| learning_rate=0.002 | 0.002 | failed (RuntimeError: boom) | 0/1500 | 1,000 |  |' in table
  # The final loss, the best during training (lowest, at step 750) and the throughput after the first interval.
  assert '| learning_rate=0.001 | 0.001 | done | 1500/1500 | 1,000 | 200 |' in table
  assert '| **0.001** | 0.999 | 1 | 0.0005 (750) |' in table
  with open(tmp_path / sweep.RESULTS_CSV, newline='') as f:
    rows = list(csv.DictReader(f))
  assert [r['trial'] for r in rows] == [t['name'] for t in results['trials']]
  assert rows[2]['optimizer.learning_rate'] == '0.003' and rows[2]['final eval/loss'] == '0.003'
  assert rows[2]['best eval/loss'] == '0.0015' and rows[2]['best eval/accuracy'] == '0.9985'
  assert rows[2]['best eval/loss step'] == '750' and rows[2]['tokens_per_sec'] == '200.0'
  assert rows[1]['status'] == 'failed' and rows[1]['error'] == 'RuntimeError: boom'
  assert results['curves'] == ['curve_eval_loss.png', 'curve_eval_accuracy.png', 'curve_train_loss.png']
  assert all((tmp_path / name).stat().st_size > 10_000 for name in results['curves'])
  # Rerun: the finished trials are skipped, the failed one is tried again.
  calls.clear()
  outcome = sweep.run(trials, str(tmp_path), {t.name: 1000 for t in trials})
  assert calls == ['learning_rate=0.002'] and outcome['skipped'] == ['learning_rate=0.001', 'learning_rate=0.003']
  assert outcome['failed'] == ['learning_rate=0.002']
  # A higher metric is better for accuracy; a misspelt metric is refused when the table is asked for.
  assert sweep.summarize(sweep.collect(str(tmp_path)), 'eval/accuracy')['best'] == 'learning_rate=0.001'
  with pytest.raises(ConfigError, match="unknown metric 'eval/acuracy'; nearest valid keys: eval/accuracy"):
    sweep.write_results(str(tmp_path), 'eval/acuracy', strict=True)
  with pytest.raises(ConfigError, match='holds no trials'):
    sweep.write_results(str(tmp_path / 'learning_rate=0.001'))


def test_a_stopped_trial_ends_the_sweep(monkeypatch, tmp_path):
  trials = sweep.expand(sweep.definition(configs=[QUICKSTART], grid=['optimizer.learning_rate=1e-3,2e-3,3e-3']))
  calls = _fake_training(monkeypatch, stop={'learning_rate=0.002'})
  outcome = sweep.run(trials, str(tmp_path), log=lambda _: None)
  assert calls == ['learning_rate=0.001', 'learning_rate=0.002']
  assert outcome['stopped'] == ['learning_rate=0.002'] and outcome['done'] == ['learning_rate=0.001']
  assert sweep.read_record(str(tmp_path / 'learning_rate=0.002'))['status'] == 'stopped'


def test_seed_groups_get_mean_and_standard_deviation():
  def row(name, norm, seed, loss):
    config = {'model': {'norm': norm}, 'seed': seed, 'train': {'num_steps': 10}}
    return {'name': name, 'dir': name, 'status': 'done', 'config': config, 'step': 10, 'num_steps': 10,
            'eval_step': 10, 'params': 5, 'trainable': 5, 'tokens_per_sec': 1234.5, 'seconds': 75.0,
            'metrics': {'eval/loss': loss}, 'best': {'eval/loss': {'value': loss, 'step': 10}}}
  rows = [row('a0', 'layernorm', 0, 1.0), row('a1', 'layernorm', 1, 3.0), row('b0', 'rmsnorm', 0, 0.5)]
  summary = sweep.summarize(rows)
  assert summary['varied'] == ['model.norm', 'seed'] and summary['best'] == 'b0'
  (a, b) = summary['groups']
  assert a['trials'] == ['a0', 'a1'] and a['metrics']['eval/loss'] == {'mean': 2.0, 'std': pytest.approx(2 ** 0.5),
                                                                       'n': 2}
  assert b['metrics']['eval/loss'] == {'mean': 0.5, 'std': None, 'n': 1}
  text = sweep.markdown(summary)
  assert '| a0 | layernorm | 0 | done | 10/10 | 5 | 1,234 | 1m15s | 1 | 1 (10) |' in text
  assert '| layernorm | 2 | 2 ± 1.4 |' in text and '| rmsnorm | 1 | 0.5 |' in text


def run_script(script, *args, timeout=400):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  env.pop('XLA_FLAGS', None)
  return subprocess.run([sys.executable, os.path.join(REPO, 'experiments', script), *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_sweep_command_trains_reruns_and_reports(data_dir, tmp_path):
  """The example three-variant sweep file, shrunk to the tiny model and 6 steps, with one command on 1 CPU device:
  the results hold each workdir's last evaluation, the plots are drawn, the pruned trial is pruned; a rerun trains
  nothing; config_diff names what the trials differ in."""
  tiny = tiny_config(data_dir)
  sets = [f'--set={key}={value}' for key, value in config_lib.flatten(tiny).items()
          if key.startswith(('model.d_model', 'model.num_heads', 'model.mlp_dim', 'train.', 'optimizer.warmup',
                             'eval.', 'data.data_dir'))]
  workdir = str(tmp_path / 'sweep')
  args = [f'--workdir={workdir}', f'--sweep={REPO}/configs/sweeps/quickstart_ablations.py', '--metric=eval/accuracy',
          *sets, '--set=train.num_steps=6', '--set=train.log_every=3',  # one evaluation and checkpoint, at step 6
          '--set=prune.start_step=1', '--set=prune.end_step=4', '--set=prune.every=1']
  result = run_script('sweep.py', *args)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'trials: 3 done' in result.stdout
  results = json.loads((tmp_path / 'sweep' / sweep.RESULTS_JSON).read_text())
  assert [t['name'] for t in results['trials']] == ['baseline', 'rmsnorm_silu', 'pruned80']
  assert results['varied'] == ['model.activation', 'model.norm', 'prune.sparsity']
  pruned = metrics_lib.read_metrics(os.path.join(workdir, 'pruned80'))
  assert [r['train/sparsity'] for r in pruned if 'train/sparsity' in r][-1] == pytest.approx(0.8, abs=0.01)
  for name in ['curve_train_loss.png', 'curve_eval_accuracy.png', 'curve_eval_exact_match.png']:
    assert name in results['curves']
    pixels = matplotlib.image.imread(tmp_path / 'sweep' / name)[..., :3]
    assert pixels.std() > 0.05 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, name
  with open(tmp_path / 'sweep' / sweep.RESULTS_CSV, newline='') as f:
    table = list(csv.DictReader(f))
  assert [r['trial'] for r in table] == ['baseline', 'rmsnorm_silu', 'pruned80']
  assert all(float(r['tokens_per_sec']) > 0 and int(r['params']) == t['params'] > 0
             for r, t in zip(table, results['trials']))
  assert table[2]['params'] == table[0]['params'] != table[1]['params']  # pruning zeroes, RMSNorm has no bias
  for trial in results['trials']:
    history = metrics_lib.read_metrics(os.path.join(workdir, trial['dir']))
    last_eval = [r for r in history if 'eval/loss' in r][-1]
    assert last_eval['step'] == 6 and trial['status'] == 'done' and trial['step'] == 6
    assert trial['metrics'] == {**{k: v for k, v in last_eval.items() if k not in ('step', 'eval/examples')},
                                'train/loss': [r for r in history if 'train/loss' in r][-1]['train/loss']}
  best = max(results['trials'], key=lambda t: t['metrics']['eval/accuracy'])
  assert results['best'] == best['name']
  assert (tmp_path / 'sweep' / sweep.RESULTS_MARKDOWN).read_text() in result.stdout

  rerun = run_script('sweep.py', *args)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert 'trials: 3 skipped' in rerun.stdout and 'starting:' not in rerun.stdout + rerun.stderr
  report = run_script('sweep.py', f'--workdir={workdir}', '--report')  # ranked by the metric used before
  assert report.returncode == 0 and f"Best by eval/accuracy (highest): {best['name']}." in report.stdout

  diff = run_script('config_diff.py', *(os.path.join(workdir, t['dir']) for t in results['trials']))
  assert diff.returncode == 1
  lines = diff.stdout.splitlines()
  assert lines[1].split() == ['field', 'baseline', 'rmsnorm_silu', 'pruned80']  # the trials' names
  assert [line.split()[0] for line in lines[2:-1]] == ['model.activation', 'model.norm', 'prune.sparsity']
