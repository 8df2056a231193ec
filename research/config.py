"""Configs: load a config file, check overrides, validate choices, save, compare.

A config is one `ml_collections.ConfigDict` with the sections `model`, `data`, `objective`, `optimizer`,
`train`, `mesh` and `eval`. Every problem a user can fix raises `ConfigError`, whose message is one line
that says what to change; entry points print it and exit instead of showing a stack trace.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
import sys
from typing import Any, Iterable, Mapping, Sequence

from absl import flags
import ml_collections

# Fields that may change when a run resumes in an existing workdir: how long to train, how often to
# log/evaluate/save, how to lay out devices and memory, the compute precision. Any other difference
# means the checkpoint belongs to another experiment.
RESUMABLE_PREFIXES = (
    'train.num_steps', 'train.log_every', 'train.eval_every', 'train.checkpoint_every',
    'train.keep_checkpoints', 'train.grad_accum_steps', 'eval.', 'mesh.', 'distributed.', 'data.data_dir',
    'data.download', 'data.read_threads', 'model.remat', 'model.dtype',
)


class ConfigError(ValueError):
  """A problem with the config or the inputs it names; the message says what to change."""


def flatten(config: ml_collections.ConfigDict | dict, prefix: str = '') -> dict[str, Any]:
  """{'model.num_layers': 2, ...} for every leaf of a (nested) config."""
  items = config.items() if isinstance(config, (dict, ml_collections.ConfigDict)) else ()
  flat = {}
  for key, value in items:
    path = f'{prefix}{key}'
    if isinstance(value, (dict, ml_collections.ConfigDict)) and value:
      flat.update(flatten(value, path + '.'))
    else:
      flat[path] = value
  return flat


def all_keys(config: ml_collections.ConfigDict) -> list[str]:
  """Every valid dotted key: the leaves and the sections that hold them."""
  keys = set()
  for leaf in flatten(config):
    parts = leaf.split('.')
    keys.update('.'.join(parts[:i]) for i in range(1, len(parts) + 1))
  return sorted(keys)


def nearest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
  """The candidates closest to `name`, best first (by whole key and by its last part)."""
  candidates = list(candidates)
  by_whole = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
  leaf = name.rsplit('.', 1)[-1]
  by_leaf = [c for c in candidates if c.rsplit('.', 1)[-1] in
             difflib.get_close_matches(leaf, [k.rsplit('.', 1)[-1] for k in candidates], n=n, cutoff=0.6)]
  return list(dict.fromkeys(by_whole + by_leaf))[:n]


def unknown_key_error(key: str, valid: Iterable[str], what: str = 'config key') -> ConfigError:
  suggestions = nearest(key, valid)
  hint = f'; nearest valid keys: {", ".join(suggestions)}' if suggestions else ''
  return ConfigError(f'unknown {what} {key!r}{hint}')


def check_choice(value: Any, choices: Sequence[Any], key: str) -> None:
  """Raises ConfigError unless `value` is one of `choices`, naming the closest ones."""
  if value not in choices:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.4)
    hint = f' (did you mean {close[0]!r}?)' if close else ''
    raise ConfigError(f'{key}={value!r} is not one of {", ".join(map(repr, choices))}{hint}')


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py` or `path/to/config.py:arg`, as `config_flags` does."""
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise ConfigError(f'config file {path!r} does not exist')
  module_spec = importlib.util.spec_from_file_location(f'_config_{abs(hash(path))}', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, 'get_config'):
    raise ConfigError(f'config file {path!r} defines no get_config()')
  return module.get_config(arg) if arg else module.get_config()


def check_overrides(argv: Sequence[str], flag: str = 'config', default_file: str | None = None) -> None:
  """Refuses `--config.some.key=value` arguments that name no field of the config file.

  `config_flags` would raise from deep inside flag parsing; this check runs first and raises a
  ConfigError that names the nearest valid keys.
  """
  spec = default_file
  overrides = []
  for i, arg in enumerate(argv):
    if arg.startswith(f'--{flag}='):
      spec = arg.split('=', 1)[1]
    elif arg == f'--{flag}' and i + 1 < len(argv):
      spec = argv[i + 1]
    elif arg.startswith(f'--{flag}.'):
      overrides.append(arg[len(flag) + 3:].split('=', 1)[0])
  if not overrides or spec is None:
    return
  valid = all_keys(load_config_file(spec))
  for key in overrides:
    if key not in valid:
      raise unknown_key_error(key, valid)


def to_json(config: ml_collections.ConfigDict) -> str:
  return config.to_json_best_effort(indent=2, sort_keys=True)


def from_json(text: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(json.loads(text))


def diff(a: ml_collections.ConfigDict | dict, b: ml_collections.ConfigDict | dict) -> list[tuple[str, Any, Any]]:
  """[(key, value in a, value in b)] for every leaf that differs; missing leaves show as '<absent>'."""
  fa, fb = _normalise(flatten(a)), _normalise(flatten(b))
  missing = '<absent>'
  return [(k, fa.get(k, missing), fb.get(k, missing))
          for k in sorted(set(fa) | set(fb)) if fa.get(k, missing) != fb.get(k, missing)]


def flat_values(config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
  """flatten(config) with the values as a saved config.json holds them (tuples as lists)."""
  return _normalise(flatten(config))


def _normalise(flat: dict[str, Any]) -> dict[str, Any]:
  # Tuples become lists in JSON; compare what a saved config would hold.
  return {k: json.loads(json.dumps(v, default=str)) for k, v in flat.items()}


ABSENT = '<absent>'


def diff_many(configs: Sequence[ml_collections.ConfigDict | dict]) -> list[tuple[str, list[Any]]]:
  """[(key, [value in each config])] for every leaf that is not the same in all; missing leaves are ABSENT.

  Values are compared as a saved config.json holds them (tuples as lists), so a config file and a
  workdir's config.json compare equal when they describe the same run.
  """
  flats = [flat_values(c) for c in configs]
  keys = sorted(set().union(*flats)) if flats else []
  rows = [(k, [f.get(k, ABSENT) for f in flats]) for k in keys]
  return [(k, values) for k, values in rows if any(v != values[0] for v in values[1:])]


def format_value(value: Any) -> str:
  """A leaf as it is written on the command line: strings bare, the rest as Python literals."""
  if value is ABSENT or isinstance(value, str):
    return value
  if isinstance(value, list):  # a saved tuple
    value = tuple(value)
  return repr(value)


def diff_table(labels: Sequence[str], rows: Sequence[tuple[str, Sequence[Any]]], markdown: bool = False) -> str:
  """`diff_many`'s rows as a table: a column per config; keys that may change on resume marked with `*`."""
  header = ['field', *labels]
  body = [[key + (' *' if key.startswith(RESUMABLE_PREFIXES) else ''), *map(format_value, values)]
          for key, values in rows]
  if markdown:
    lines = [header, ['---'] * len(header), *body]
    return ''.join('| ' + ' | '.join(str(c).replace('|', '\\|') for c in line) + ' |\n' for line in lines)
  if not body:
    return ''
  widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
  return ''.join('  '.join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() + '\n' for line in [header, *body])


def load_any(spec: str) -> ml_collections.ConfigDict:
  """A config from a config file (`path.py[:arg]`), a saved `config.json`, or a workdir (its config.json)."""
  from research import files  # files imports etils; configs alone stay light
  if spec.partition(':')[0].endswith('.py'):
    return load_config_file(spec)
  path = files.path(spec)
  if path.is_dir():
    path = path / 'config.json'
    if not path.exists():
      raise ConfigError(f'{spec} holds no config.json; is it a training workdir?')
  elif not path.exists():
    raise ConfigError(f'{spec} does not exist (give a config .py file, a config.json or a workdir)')
  try:
    return from_json(path.read_text())
  except json.JSONDecodeError as e:
    raise ConfigError(f'{path} is not valid JSON ({e.msg} at line {e.lineno})') from None


def parse_value(text: str, current: Any, key: str) -> Any:
  """`text` from a command line as a value for the field `key` that now holds `current`, as
  `--config.key=text` would parse it (by the field's type; literals for None or tuple fields)."""
  parser = {bool: flags.BooleanParser(), int: flags.IntegerParser(), float: flags.FloatParser()}.get(type(current))
  try:
    if parser is not None:
      return parser.parse(text)
    if isinstance(current, str):
      return text
    if isinstance(current, (ml_collections.ConfigDict, dict)):
      raise ConfigError(f'{key} is a section; set its fields ({key}.<field>=...)')
    value = ast.literal_eval('True' if text == 'true' else 'False' if text == 'false' else text)
    if isinstance(current, (tuple, list)) and not isinstance(value, (tuple, list)):
      value = (value,)
    return value
  except (ValueError, SyntaxError) as e:
    if current is None:
      return text  # like config_flags: an unparsable literal is a string
    raise ConfigError(f'{key}={text!r} is not a valid {type(current).__name__} ({e})') from None


def split_assignment(assignment: str) -> tuple[str, str]:
  """'section.key=value' -> ('section.key', 'value')."""
  key, sep, value = assignment.partition('=')
  if not sep or not key.strip():
    raise ConfigError(f'{assignment!r} is not of the form section.key=value')
  return key.strip(), value


def override(config: ml_collections.ConfigDict, values: Mapping[str, Any],
             what: str = 'config') -> ml_collections.ConfigDict:
  """A copy of `config` with the dotted keys of `values` set, checked as the command line checks them:
  an unknown key names the nearest valid keys; a string is parsed by the field's type; a value of
  another type (an int for a string field, a float for an int field) is refused."""
  config = config.copy_and_resolve_references()
  valid = all_keys(config)
  for key, value in values.items():
    parent, _, leaf = key.rpartition('.')
    if key not in valid:
      raise ConfigError(f'{unknown_key_error(key, valid)} (in {what})')
    section = config
    for part in parent.split('.') if parent else ():
      section = section[part]
    current = section[leaf]
    if isinstance(value, str) and not isinstance(current, str):
      value = parse_value(value, current, key)
    try:
      section[leaf] = value
    except TypeError:
      raise ConfigError(f'{key}={value!r} ({type(value).__name__}) does not fit the field, which holds '
                        f'{type(current).__name__} ({current!r}) in {what}') from None
  return config


def check_resumable(saved: ml_collections.ConfigDict, current: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume a workdir whose saved config differs in more than RESUMABLE_PREFIXES."""
  changes = [d for d in diff(saved, current) if not d[0].startswith(RESUMABLE_PREFIXES)]
  if changes:
    listed = '; '.join(f'{k}: {a!r} (saved) vs {b!r} (now)' for k, a, b in changes[:5])
    more = f' and {len(changes) - 5} more' if len(changes) > 5 else ''
    raise ConfigError(
        f'workdir {workdir} holds a run with a different config ({listed}{more}); '
        'use a new --workdir, or pass the saved values to resume it')


def exit_on_config_error(fn):
  """Decorator for entry points: a ConfigError becomes one line on stderr and exit status 2."""
  def wrapped(*args, **kwargs):
    try:
      return fn(*args, **kwargs)
    except ConfigError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)
  return wrapped
