r"""Shows the fields in which configs differ: config files, saved config.json files or workdirs, two or more.

  python experiments/config_diff.py configs/quickstart.py configs/ablations/quickstart_rmsnorm.py
  python experiments/config_diff.py workdirs/quickstart configs/quickstart.py --ignore=data.data_dir
  python experiments/config_diff.py workdirs/sweeps/lr/* --format=markdown

A workdir stands for its config.json (the fully resolved config it was trained with); a file may be given as
path.py:arg. Values are compared as config.json holds them (tuples as lists). Fields that a run may change when it
resumes (train.num_steps, eval.*, mesh.*, ...) are marked `*`. Exit status: 0 if the configs are the same (after
--ignore/--only), 1 if they differ, 2 on an error, as diff(1).
"""

import json
import os
import sys

from absl import app, flags

from research import config as config_lib

_FORMAT = flags.DEFINE_enum('format', 'text', ['text', 'markdown', 'json'], 'Output format.')
_IGNORE = flags.DEFINE_list('ignore', [], 'Leave out fields under these prefixes (section or key), e.g. mesh,eval.')
_ONLY = flags.DEFINE_list('only', [], 'Show only fields under these prefixes, e.g. model,optimizer.')


def labels(specs):
  """The specs as column labels, without the directory they all share: ('under', [label, ...])."""
  stripped = [spec.rstrip('/') or spec for spec in specs]
  common = os.path.commonpath(stripped) if len({os.path.isabs(s) for s in stripped}) == 1 else ''
  if not common or common in stripped:
    return '', stripped
  return common, [os.path.relpath(s, common) for s in stripped]


def _under(key: str, prefixes) -> bool:
  return any(key == p or key.startswith(p.rstrip('.') + '.') for p in prefixes)


@config_lib.exit_on_config_error
def main(argv):
  specs = argv[1:]
  if len(specs) < 2:
    raise config_lib.ConfigError('give two or more configs: config files (path.py[:arg]), config.json files or '
                                 'workdirs')
  configs = [config_lib.load_any(spec) for spec in specs]
  keys = set().union(*(config_lib.all_keys(c) for c in configs))
  for prefix in _IGNORE.value + _ONLY.value:
    if prefix.rstrip('.') not in keys:
      raise config_lib.unknown_key_error(prefix, keys, what='field or section')
  rows = [(key, values) for key, values in config_lib.diff_many(configs)
          if not _under(key, _IGNORE.value) and (not _ONLY.value or _under(key, _ONLY.value))]
  total = len(set().union(*(config_lib.flatten(c) for c in configs)))
  if _FORMAT.value == 'json':
    print(json.dumps({'configs': specs, 'fields': total, 'differences': [
        {'key': key, 'values': values, 'resumable': key.startswith(config_lib.RESUMABLE_PREFIXES)}
        for key, values in rows]}, indent=2))
  else:
    under, names = labels(specs)
    if under and rows:
      print(f'configs in {under}{os.sep}:')
    print(config_lib.diff_table(names, rows, markdown=_FORMAT.value == 'markdown'), end='')
    blocking = sum(not key.startswith(config_lib.RESUMABLE_PREFIXES) for key, _ in rows)
    marked = f' ({len(rows) - blocking} marked * may change when a run resumes)' if blocking < len(rows) else ''
    print(f'{len(rows)} of {total} fields differ{marked}' if rows else f'the configs are the same ({total} fields)')
  sys.exit(1 if rows else 0)


if __name__ == '__main__':
  app.run(main)
