"""Sweeps: configs (a base and its ablations) x a grid of field values x seeds -> one workdir per trial, trained
one after another, and a results table that compares them.

A sweep directory holds one ordinary training workdir per trial, named by what the trial sets (for example
`quickstart_rmsnorm,learning_rate=0.001,seed=1`), each with a `trial.json` (where the trial came from, what it
sets, its resolved config, status and training time), and the comparison, rebuilt from the trial workdirs after
every trial: `results.md`, `results.csv`, `results.json` and one `curve_<metric>.png` per training and evaluation
metric (a line per trial). Running the same sweep again skips finished trials and resumes unfinished ones; every
trial is checked (config, data, model shapes, the workdir's saved config) before the first one trains.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import importlib.util
import io
import itertools
import json
import math
import os
import re
import time
import traceback
from typing import Any, Callable, Mapping, Sequence

import jax
import ml_collections

from research import config as config_lib, files, metrics as metrics_lib, plots, train

TRIAL_FILE = 'trial.json'
ERROR_FILE = 'error.txt'
RESULTS_JSON = 'results.json'
RESULTS_MARKDOWN = 'results.md'
RESULTS_CSV = 'results.csv'
SWEEP_FILE_KEYS = ('configs', 'grid', 'trials', 'seeds', 'overrides', 'metric')
LOWER_IS_BETTER = ('loss', 'perplexity')


@dataclasses.dataclass
class Definition:
  """What a sweep runs: every config x every explicit point x the grid's product x every seed."""
  configs: list[tuple[str, str, ml_collections.ConfigDict]]  # (label, source, config)
  grid: dict[str, list[Any]] = dataclasses.field(default_factory=dict)  # key -> values (their product)
  points: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # explicit {key: value} settings
  seeds: list[int] = dataclasses.field(default_factory=list)
  overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # set in every trial
  metric: str = 'eval/loss'  # the results table marks the best trial by this


@dataclasses.dataclass
class Trial:
  index: int
  name: str  # the trial's directory in the sweep directory
  source: str  # the config it starts from (a file, or a sweep file's label)
  assignments: dict[str, Any]  # what this trial sets, beyond the sweep's common overrides
  config: ml_collections.ConfigDict  # resolved


def config_label(spec: str) -> str:
  """'configs/ablations/quickstart_rmsnorm.py[:arg]' -> 'quickstart_rmsnorm[_arg]'."""
  path, _, arg = spec.partition(':')
  return os.path.splitext(os.path.basename(path))[0] + (f'_{arg}' if arg else '')


def load_sweep_file(path: str) -> dict[str, Any]:
  """`get_sweep()` of a Python sweep file: a dict with some of SWEEP_FILE_KEYS (see configs/sweeps/)."""
  if not os.path.isfile(path):
    raise config_lib.ConfigError(f'sweep file {path!r} does not exist')
  spec = importlib.util.spec_from_file_location(f'_sweep_{abs(hash(path))}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_sweep'):
    raise config_lib.ConfigError(f'sweep file {path!r} defines no get_sweep()')
  sweep = module.get_sweep()
  if not isinstance(sweep, Mapping):
    raise config_lib.ConfigError(f'get_sweep() of {path!r} returned {type(sweep).__name__}, not a dict')
  for key in sweep:
    if key not in SWEEP_FILE_KEYS:
      raise config_lib.unknown_key_error(key, SWEEP_FILE_KEYS, what=f'key of the sweep in {path}')
  return dict(sweep)


def parse_grid_flag(text: str) -> tuple[str, list[Any]]:
  """'optimizer.learning_rate=1e-3,3e-3' -> ('optimizer.learning_rate', ['1e-3', '3e-3']); values are parsed by
  the field's type when applied. A value that itself holds commas is written as a Python list: key=[(1, 2), (3,)]."""
  key, values = config_lib.split_assignment(text)
  if values.lstrip().startswith('['):
    try:
      parsed = ast.literal_eval(values)
    except (ValueError, SyntaxError) as e:
      raise config_lib.ConfigError(f'--grid={text!r}: the values are not a Python list ({e})') from None
  else:
    parsed = [v for v in values.split(',') if v != '']
  if not parsed:
    raise config_lib.ConfigError(f'--grid={text!r} gives no values')
  return key, list(parsed)


def definition(sweep_file: str | None = None, configs: Sequence[str] = (), grid: Sequence[str] = (),
               seeds: Sequence[int] = (), overrides: Sequence[str] = (), metric: str | None = None,
               default_config: str | None = None) -> Definition:
  """A sweep from a sweep file and command-line pieces: configs and seeds given on the command line replace the
  file's, grid axes and overrides are added to it (the command line wins for a key both give)."""
  sweep = load_sweep_file(sweep_file) if sweep_file else {}
  entries: list[tuple[str, str, ml_collections.ConfigDict]] = []
  if configs:
    entries = [(config_label(spec), spec, config_lib.load_config_file(spec)) for spec in configs]
  elif 'configs' in sweep:
    given = sweep['configs']
    items = given.items() if isinstance(given, Mapping) else [(None, spec) for spec in given]
    for label, item in items:
      if isinstance(item, str):
        entries.append((label or config_label(item), item, config_lib.load_config_file(item)))
      elif isinstance(item, ml_collections.ConfigDict) and label:
        entries.append((label, f'{sweep_file}:{label}', item))
      else:
        raise config_lib.ConfigError(f'configs of {sweep_file!r}: give config file paths, or a dict of label -> '
                                     f'ConfigDict or path; got {type(item).__name__}')
  elif default_config:
    entries = [(config_label(default_config), default_config, config_lib.load_config_file(default_config))]
  if not entries:
    raise config_lib.ConfigError('the sweep has no config; give --config=path.py[,path.py...] or a --sweep file '
                                 'with configs')
  labels = [label for label, _, _ in entries]
  if len(set(labels)) != len(labels):
    raise config_lib.ConfigError(f'two configs share the label {_first_repeat(labels)!r}; rename one of the files')
  combined_grid = {k: list(v) for k, v in sweep.get('grid', {}).items()}
  combined_grid.update(parse_grid_flag(text) for text in grid)
  for key, values in combined_grid.items():
    if not values:
      raise config_lib.ConfigError(f'grid axis {key!r} has no values')
  points = [dict(p) for p in sweep.get('trials', [])]
  common = dict(sweep.get('overrides', {}))
  common.update(config_lib.split_assignment(text) for text in overrides)
  return Definition(entries, combined_grid, points, list(seeds or sweep.get('seeds', [])), common,
                    metric or sweep.get('metric', 'eval/loss'))


def _first_repeat(items: Sequence[str]) -> str:
  seen = set()
  for item in items:
    if item in seen:
      return item
    seen.add(item)
  return ''


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
  for part in key.split('.'):
    config = config[part]
  return config


def short_names(keys: Sequence[str]) -> dict[str, str]:
  """Each dotted key by its last part where that is unambiguous among `keys`, else in full."""
  last = [k.rsplit('.', 1)[-1] for k in keys]
  return {k: part if last.count(part) == 1 else k for k, part in zip(keys, last)}


def name_value(value: Any) -> str:
  """A value as a piece of a directory name: 0.001, 3e-05, True, rmsnorm, 1+2 for a tuple."""
  if isinstance(value, float):
    text = f'{value:g}'
  elif isinstance(value, (tuple, list)):
    text = '+'.join(name_value(v) for v in value) or 'empty'
  else:
    text = str(value)
  return re.sub(r'[^\w.=+-]+', '_', text).strip('_') or '_'


def expand(sweep: Definition) -> list[Trial]:
  """The trials, in order: config, then explicit point, then grid values (the last axis fastest), then seed."""
  keys = list(sweep.grid)
  named = list(dict.fromkeys([k for p in sweep.points for k in p] + keys))
  short = short_names(named)
  trials, names = [], {}
  for label, source, base in sweep.configs:
    for point in sweep.points or [{}]:
      for combo in itertools.product(*(sweep.grid[k] for k in keys)):
        for seed in sweep.seeds or [None]:
          wanted = {**point, **dict(zip(keys, combo))}
          if seed is not None:
            wanted['seed'] = seed
          described = ', '.join(f'{k}={v!r}' for k, v in wanted.items())
          config = config_lib.override(base, {**sweep.overrides, **wanted},
                                       what=f'{source}' + (f' with {described}' if described else ''))
          assignments = {k: _get(config, k) for k in wanted}  # as the fields hold them (parsed, typed)
          parts = [label] if len(sweep.configs) > 1 else []
          parts += [f'{short[k]}={name_value(v)}' for k, v in assignments.items() if k != 'seed']
          if seed is not None and len(sweep.seeds) > 1:
            parts.append(f'seed={seed}')
          name = ','.join(parts) or label
          if name in names:
            raise config_lib.ConfigError(f'two trials would share the directory {name!r} ({names[name]} and '
                                         f'{described}); give distinct values')
          names[name] = described
          trials.append(Trial(len(trials), name, source, assignments, config))
  return trials


def trial_dir(sweep_dir: str, trial: Trial | str) -> str:
  name = trial if isinstance(trial, str) else trial.name
  return str(files.path(sweep_dir) / name)


def latest_step(workdir: str) -> int | None:
  """The latest complete checkpoint step of a workdir (None without one)."""
  from research import checkpoints  # orbax: only when a workdir is inspected
  directory = files.path(workdir) / 'checkpoints'
  if not directory.exists():
    return None
  checkpointer = checkpoints.Checkpointer(directory)
  step = checkpointer.latest_step()
  checkpointer.close()
  return step


def check(trials: Sequence[Trial], sweep_dir: str, devices=None) -> dict[str, int]:
  """Builds every trial (config choices, data, tokenizer, model shapes, mesh) without training and compares each
  with the config saved in its workdir; returns {name: parameter count}. All problems are reported at once."""
  params, problems = {}, {}
  for trial in trials:
    try:
      train.check_workdir(trial.config, trial_dir(sweep_dir, trial))
      params[trial.name] = train.setup(trial.config, devices).param_count
    except config_lib.ConfigError as e:
      problems.setdefault(str(e), []).append(trial.name)
  if problems:
    def which(names):
      return names[0] if len(names) == 1 else f'{names[0]} and {len(names) - 1} more'
    listed = [f'{which(names)}: {message}' for message, names in list(problems.items())[:3]]
    more = f' | {len(problems) - 3} more problems' if len(problems) > 3 else ''
    failing = sum(len(names) for names in problems.values())
    raise config_lib.ConfigError(f'{failing} of {len(trials)} trials cannot run: ' + ' | '.join(listed) + more)
  return params


def read_record(workdir: str) -> dict | None:
  path = files.path(workdir) / TRIAL_FILE
  return json.loads(path.read_text()) if path.exists() else None


def _write_record(workdir: str, record: dict) -> None:
  if jax.process_index() != 0:
    return
  directory = files.path(workdir)
  directory.mkdir(parents=True, exist_ok=True)
  files.write_atomic(directory / TRIAL_FILE, (json.dumps(record, indent=2, default=str) + '\n').encode())


def _new_record(trial: Trial, params: int | None) -> dict:
  return {'name': trial.name, 'index': trial.index, 'source': trial.source, 'assignments': trial.assignments,
          'params': params, 'status': 'pending', 'seconds': 0.0, 'error': None,
          'config': json.loads(config_lib.to_json(trial.config))}


def run(trials: Sequence[Trial], sweep_dir: str, params: Mapping[str, int] | None = None, devices=None,
        metric: str = 'eval/loss', log: Callable[[str], None] = print) -> dict[str, list[str]]:
  """Trains the trials one after another into `sweep_dir/<name>` and rewrites the results after each.

  Finished trials (a checkpoint at train.num_steps) are skipped, unfinished ones resumed. A trial that raises is
  recorded as failed (its traceback in error.txt) and the sweep goes on. A SIGTERM/SIGINT stops the running trial
  at a step boundary with a checkpoint (as training does) and ends the sweep; the same command resumes it.
  Returns the names of the trials by outcome: {'done': [...], 'skipped': [...], 'failed': [...], 'stopped': [...]}.
  """
  outcome = {'done': [], 'skipped': [], 'failed': [], 'stopped': []}
  with train.StopRequest() as stop:  # between trials; a running trial handles the signal itself
    for position, trial in enumerate(trials):
      workdir = trial_dir(sweep_dir, trial)
      record = read_record(workdir) or {}
      record = {**_new_record(trial, (params or {}).get(trial.name, record.get('params'))),
                'seconds': record.get('seconds', 0.0)}
      step = latest_step(workdir)
      if step is not None and step >= trial.config.train.num_steps:
        record['status'] = 'done'
        _write_record(workdir, record)
        outcome['skipped'].append(trial.name)
        log(f'[{position + 1}/{len(trials)}] {trial.name}: finished earlier (step {step}), skipped')
        continue
      if stop.agreed(at_sync_point=True):
        outcome['stopped'].append(trial.name)
        break
      log(f'[{position + 1}/{len(trials)}] {trial.name}: ' + (f'resuming from step {step}' if step else 'training'))
      _write_record(workdir, {**record, 'status': 'running'})
      start = time.perf_counter()
      try:
        train.train_and_evaluate(trial.config, workdir, devices)
      except Exception as e:  # noqa: BLE001 -- one trial's failure is recorded, the sweep goes on
        message = f'{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ""}'.rstrip(': ')
        record.update(status='failed', error=message)
        if jax.process_index() == 0:
          files.write_atomic(files.path(workdir) / ERROR_FILE, traceback.format_exc().encode())
        log(f'{trial.name} failed: {message} (traceback in {files.path(workdir) / ERROR_FILE})')
        outcome['failed'].append(trial.name)
      else:
        stopped = (latest_step(workdir) or 0) < trial.config.train.num_steps
        record['status'] = 'stopped' if stopped else 'done'
        outcome['stopped' if stopped else 'done'].append(trial.name)
      record['seconds'] += time.perf_counter() - start
      _write_record(workdir, record)
      if jax.process_index() == 0:
        write_results(sweep_dir, metric)
      if record['status'] == 'stopped':
        log(f'sweep stopped during {trial.name}; rerun the same command to resume it')
        break
  return outcome


# ----- results -----

def collect(sweep_dir: str) -> list[dict]:
  """One row per trial directory of the sweep (with a trial.json): its record, its metrics history, the last
  and the best value of each evaluation metric, its parameter counts and its training throughput."""
  directory = files.path(sweep_dir)
  if not directory.is_dir():
    raise config_lib.ConfigError(f'sweep directory {sweep_dir} does not exist')
  rows = []
  for child in sorted(directory.iterdir()):
    if not (child / TRIAL_FILE).exists():
      continue
    record = json.loads((child / TRIAL_FILE).read_text())
    history = metrics_lib.read_metrics(str(child))
    evals = [r for r in history if any(k.startswith('eval/') for k in r)]
    trains = [r for r in history if 'train/loss' in r]
    metrics = {k: v for k, v in (evals[-1] if evals else {}).items() if k not in ('step', 'eval/examples')}
    if trains:
      metrics['train/loss'] = trains[-1]['train/loss']
    best = {}
    for name in metrics:
      scored = [(r[name], r['step']) for r in evals if name in r]
      if scored:
        value, step = (min if _lower_is_better(name) else max)(scored, key=lambda pair: pair[0])
        best[name] = {'value': value, 'step': step}
    counts = next((r for r in history if 'params/total' in r), {})
    rows.append({**record, 'dir': child.name, 'step': history[-1]['step'] if history else 0,
                 'num_steps': record['config']['train']['num_steps'],
                 'eval_step': evals[-1]['step'] if evals else None, 'metrics': metrics, 'best': best,
                 'params': record.get('params') or counts.get('params/total'),
                 'trainable': counts.get('params/trainable'), 'tokens_per_sec': _throughput(trains),
                 'history': history})
  rows.sort(key=lambda r: (r.get('index', 0), r['name']))
  return rows


def _throughput(trains: Sequence[dict]) -> float | None:
  """Median training tokens/s over the logging intervals, leaving out the first (it includes compilation)."""
  values = sorted(r['train/tokens_per_sec'] for r in trains[1:] or trains if 'train/tokens_per_sec' in r)
  return values[len(values) // 2] if values else None


def _lower_is_better(metric: str) -> bool:
  return any(word in metric for word in LOWER_IS_BETTER)


def summarize(rows: Sequence[dict], metric: str = 'eval/loss') -> dict:
  """What differs between the trials (from their resolved configs), each trial's final metrics, the best trial by
  `metric`, and, where trials differ only in `seed`, the mean and standard deviation of each group."""
  varied = [key for key, _ in config_lib.diff_many([r['config'] for r in rows])] if len(rows) > 1 else []
  if not varied:  # one trial, or identical configs: show what the trials set
    varied = list(dict.fromkeys(k for r in rows for k in r.get('assignments', {})))
  flats = [config_lib.flat_values(r['config']) for r in rows]
  metric_names = list(dict.fromkeys(k for r in rows for k in r['metrics'] if k.startswith('eval/')))
  metric_names += ['train/loss'] if any('train/loss' in r['metrics'] for r in rows) else []
  trials = [{'name': r['name'], 'dir': r['dir'], 'values': {k: f.get(k, config_lib.ABSENT) for k in varied},
             'status': r['status'], 'step': r['step'], 'num_steps': r['num_steps'], 'eval_step': r['eval_step'],
             'params': r.get('params'), 'trainable': r.get('trainable'), 'tokens_per_sec': r.get('tokens_per_sec'),
             'seconds': r.get('seconds'), 'error': r.get('error'), 'metrics': r['metrics'], 'best': r['best']}
            for r, f in zip(rows, flats)]
  scored = [t for t in trials if metric in t['metrics']]
  pick = min if _lower_is_better(metric) else max
  best = pick(scored, key=lambda t: t['metrics'][metric])['name'] if scored else None
  groups = {}
  for t in trials:
    key = tuple((k, json.dumps(v)) for k, v in t['values'].items() if k != 'seed')
    groups.setdefault(key, []).append(t)
  aggregated = []
  if any(len(members) > 1 for members in groups.values()):
    for members in groups.values():
      stats = {}
      for name in metric_names:
        values = [m['metrics'][name] for m in members if name in m['metrics']]
        if values:
          mean = sum(values) / len(values)
          std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
          stats[name] = {'mean': mean, 'std': std, 'n': len(values)}
      aggregated.append({'values': {k: v for k, v in members[0]['values'].items() if k != 'seed'},
                         'trials': [m['name'] for m in members], 'metrics': stats})
  return {'metric': metric, 'lower_is_better': _lower_is_better(metric), 'varied': varied,
          'metrics': metric_names, 'best': best, 'trials': trials, 'groups': aggregated}


def _duration(seconds: float | None) -> str:
  if seconds is None:
    return ''
  seconds = int(round(seconds))
  if seconds < 60:
    return f'{seconds}s'
  if seconds < 3600:
    return f'{seconds // 60}m{seconds % 60:02d}s'
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = [header, ['---'] * len(header), *rows]
  return '\n'.join('| ' + ' | '.join(cell.replace('|', '\\|') for cell in line) + ' |' for line in lines) + '\n'


def _format(value: Any) -> str:
  return f'{value:.4g}' if isinstance(value, float) else '' if value is None else str(value)


def _partly_trainable(summary: dict) -> bool:
  return any(t['trainable'] is not None and t['trainable'] != t['params'] for t in summary['trials'])


def markdown(summary: dict) -> str:
  """The trials table (final metrics; the best value of the chosen metric in bold, and each trial's best value of
  it during training) and, with seeds, the per-setting table."""
  short = short_names(summary['varied'])
  metrics, metric = summary['metrics'], summary['metric']
  trainable = _partly_trainable(summary)
  header = ['trial', *(short[k] for k in summary['varied']), 'status', 'step', 'params',
            *(['trainable'] if trainable else []), 'tokens/s', 'time',
            *(m.split('/', 1)[-1] if m.startswith('eval/') else m for m in metrics),
            *([f'best {metric.split("/", 1)[-1]} (step)'] if metric.startswith('eval/') else [])]
  rows = []
  for t in summary['trials']:
    status = t['status'] + (f" ({t['error']})" if t['status'] == 'failed' and t['error'] else '')
    cells = [_format(t['metrics'].get(m)) for m in metrics]
    if t['name'] == summary['best'] and metric in metrics:
      i = metrics.index(metric)
      cells[i] = f'**{cells[i]}**'
    if metric.startswith('eval/'):
      best = t['best'].get(metric)
      cells.append(f"{_format(best['value'])} ({best['step']})" if best else '')
    rows.append([t['name'], *(config_lib.format_value(t['values'][k]) for k in summary['varied']), status,
                 f"{t['step']}/{t['num_steps']}", f"{t['params']:,}" if t['params'] else '',
                 *([f"{t['trainable']:,}" if t['trainable'] else ''] if trainable else []),
                 f"{t['tokens_per_sec']:,.0f}" if t['tokens_per_sec'] else '', _duration(t['seconds']), *cells])
  direction = 'lowest' if summary['lower_is_better'] else 'highest'
  text = _table(header, rows)
  best = (f"Best by {summary['metric']} ({direction}): {summary['best']}." if summary['best'] else
          f"No trial has {summary['metric']} yet.")
  text += (f'\n{best} Metrics: the last evaluation of each trial; train/loss: the mean over the last logging '
           'interval; tokens/s: the median training throughput over the logging intervals after the first (which '
           'includes compilation); time: training wall time.\n')
  if summary['groups']:
    kept = [k for k in summary['varied'] if k != 'seed']
    header = [*(short[k] for k in kept), 'trials',
              *(m.split('/', 1)[-1] if m.startswith('eval/') else m for m in metrics)]
    rows = []
    for g in summary['groups']:
      cells = []
      for m in metrics:
        s = g['metrics'].get(m)
        cells.append('' if s is None else f"{s['mean']:.4g}" + (f" ± {s['std']:.2g}" if s['std'] is not None else ''))
      rows.append([*(config_lib.format_value(g['values'][k]) for k in kept), str(len(g['trials'])), *cells])
    text += '\nMean ± standard deviation over seeds:\n\n' + _table(header, rows)
  return text


def saved_metric(sweep_dir: str) -> str | None:
  """The metric the sweep's results were last ranked by (None before any results)."""
  path = files.path(sweep_dir) / RESULTS_JSON
  return json.loads(path.read_text()).get('metric') if path.exists() else None


def csv_text(summary: dict) -> str:
  """One row per trial: what it sets, status, sizes, throughput, and the final and best value of every metric."""
  metrics = summary['metrics']
  header = ['trial', *summary['varied'], 'status', 'step', 'num_steps', 'params', 'trainable_params',
            'tokens_per_sec', 'seconds', *(f'final {m}' for m in metrics),
            *(f'best {m}' for m in metrics if m.startswith('eval/')),
            *(f'best {m} step' for m in metrics if m.startswith('eval/')), 'error']
  out = io.StringIO()
  writer = csv.writer(out, lineterminator='\n')
  writer.writerow(header)
  for t in summary['trials']:
    best = [t['best'].get(m) for m in metrics if m.startswith('eval/')]
    writer.writerow([t['name'], *(config_lib.format_value(t['values'][k]) for k in summary['varied']), t['status'],
                     t['step'], t['num_steps'], t['params'], t['trainable'], t['tokens_per_sec'], t['seconds'],
                     *(t['metrics'].get(m) for m in metrics), *(b and b['value'] for b in best),
                     *(b and b['step'] for b in best), t['error']])
  return out.getvalue()


def write_curves(sweep_dir: str, rows: Sequence[dict], metrics: Sequence[str]) -> list[str]:
  """`curve_<metric>.png` for every metric logged by some trial: one line per trial; returns the file names."""
  runs = {r['name']: r['history'] for r in rows}
  written = []
  for metric in metrics:
    name = f"curve_{metric.replace('/', '_')}.png"
    if plots.training_curves(runs, metric, files.path(sweep_dir) / name, f'{metric} by trial'):
      written.append(name)
  return written


def write_results(sweep_dir: str, metric: str = 'eval/loss', strict: bool = False) -> tuple[str, str, str]:
  """Rebuilds results.json, results.md, results.csv and the curves from the trial workdirs; returns the paths of
  the JSON and Markdown files and the Markdown.

  `strict`: refuse a `metric` that no trial has while some have others (a misspelt name)."""
  rows = collect(sweep_dir)
  if not rows:
    raise config_lib.ConfigError(f'{sweep_dir} holds no trials (no */{TRIAL_FILE})')
  summary = summarize(rows, metric)
  if strict and summary['metrics'] and metric not in summary['metrics']:
    raise config_lib.unknown_key_error(metric, summary['metrics'], what='metric')
  curves = write_curves(sweep_dir, rows, summary['metrics'])
  text = markdown(summary) + ''.join(f'\n![{name}]({name})\n' for name in curves)
  directory = files.path(sweep_dir)
  paths = directory / RESULTS_JSON, directory / RESULTS_MARKDOWN
  files.write_atomic(paths[0], (json.dumps({**summary, 'curves': curves}, indent=2, default=str) + '\n').encode())
  files.write_atomic(paths[1], text.encode())
  files.write_atomic(directory / RESULTS_CSV, csv_text(summary).encode())
  return str(paths[0]), str(paths[1]), text


def describe(trials: Sequence[Trial], sweep_dir: str, params: Mapping[str, int]) -> str:
  """The plan, as a table: each trial's directory, state, parameters, and how its config differs from the
  first trial's (the baseline)."""
  baseline = trials[0].config
  rows = []
  for trial in trials:
    step = latest_step(trial_dir(sweep_dir, trial))
    total = trial.config.train.num_steps
    state = 'new' if step is None else 'done' if step >= total else f'at step {step}/{total}'
    changes = config_lib.diff(baseline, trial.config)
    rows.append([trial.name, state, f'{params[trial.name]:,}',
                 ', '.join(f'{k}={config_lib.format_value(b)}' for k, _, b in changes) or '(baseline)'])
  return _table(['trial', 'state', 'params', f'differs from {trials[0].name}'], rows)
