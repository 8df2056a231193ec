"""Config loading, overrides, forking and the start-up errors a user sees."""

import json
import os
import subprocess
import sys

import pytest

from research import config as config_lib
from tests.conftest import REPO

QUICKSTART = os.path.join(REPO, 'configs', 'quickstart.py')


def run_train(*args, timeout=240):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  env.pop('XLA_FLAGS', None)
  return subprocess.run([sys.executable, os.path.join(REPO, 'experiments', 'train.py'), *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=timeout)


def test_unknown_override_names_nearest_keys_in_one_line(tmp_path):
  result = run_train(f'--config={QUICKSTART}', f'--workdir={tmp_path}', '--config.model.num_encoder_layer=4')
  assert result.returncode == 2
  assert len(result.stderr.strip().splitlines()) == 1
  assert result.stderr.startswith("error: unknown config key 'model.num_encoder_layer'; nearest valid keys: "
                                  'model.num_encoder_layers, ')
  assert 'Traceback' not in result.stderr


def test_unknown_section_and_bad_choice_are_refused(tmp_path):
  result = run_train(f'--workdir={tmp_path}', '--config.optimiser.name=sgd')
  assert result.returncode == 2 and "nearest valid keys: optimizer" in result.stderr
  result = run_train(f'--workdir={tmp_path}', '--config.optimizer.name=adamm')
  assert result.returncode == 2 and "optimizer.name='adamm' is not one of 'adamw', 'adafactor' (did you mean 'adamw'?)" \
      in result.stderr
  assert 'Traceback' not in result.stderr


def test_check_overrides_accepts_valid_keys_and_config_args():
  config_lib.check_overrides(['x', f'--config={QUICKSTART}', '--config.model.d_model=64', '--workdir=/tmp/x'])
  with pytest.raises(config_lib.ConfigError, match="unknown config key 'train.num_step'"):
    config_lib.check_overrides(['x', '--config', QUICKSTART, '--config.train.num_step=3'])


def test_forked_config_changes_only_its_fields():
  base = config_lib.load_config_file(QUICKSTART)
  fork = config_lib.load_config_file(os.path.join(REPO, 'configs', 'ablations', 'quickstart_rmsnorm.py'))
  assert [d[0] for d in config_lib.diff(base, fork)] == ['model.activation', 'model.norm']


def test_diff_and_resumable_check():
  a = config_lib.load_config_file(QUICKSTART)
  b = config_lib.load_config_file(QUICKSTART)
  b.train.num_steps = 10  # may change on resume
  config_lib.check_resumable(a, b, 'w')
  b.model.d_model = 64
  with pytest.raises(config_lib.ConfigError, match=r"model.d_model: 128 \(saved\) vs 64 \(now\)"):
    config_lib.check_resumable(a, b, 'w')
  assert config_lib.diff(a, b) == [('model.d_model', 128, 64), ('train.num_steps', 1500, 10)]
  # What is saved as JSON compares equal to the config it came from (tuples become lists).
  assert config_lib.diff(config_lib.from_json(config_lib.to_json(a)), a) == []


def test_nearest_keys():
  keys = config_lib.all_keys(config_lib.load_config_file(QUICKSTART))
  assert config_lib.nearest('model.dmodel', keys)[0] == 'model.d_model'
  assert config_lib.nearest('train.batchsize', keys)[0] == 'train.batch_size'
  assert 'eval.num_examples' in config_lib.nearest('num_example', keys)


def run_config_diff(*args):
  return subprocess.run([sys.executable, os.path.join(REPO, 'experiments', 'config_diff.py'), *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120)


def test_override_parses_by_field_type_and_refuses_what_does_not_fit():
  base = config_lib.load_config_file(QUICKSTART)
  changed = config_lib.override(base, {'model.d_model': '64', 'optimizer.learning_rate': '1e-3',
                                       'model.tie_embeddings': 'false', 'model.norm': 'rmsnorm',
                                       'data.classes': "('a', 'b')", 'train.num_steps': 7})
  assert (changed.model.d_model, changed.optimizer.learning_rate, changed.model.tie_embeddings) == (64, 1e-3, False)
  assert (changed.model.norm, changed.data.classes, changed.train.num_steps) == ('rmsnorm', ('a', 'b'), 7)
  assert base.model.d_model == 128  # a copy
  with pytest.raises(config_lib.ConfigError, match=r"unknown config key 'model.dmodel'; nearest valid keys: "
                     r"model.d_model.* \(in base.py\)"):
    config_lib.override(base, {'model.dmodel': 64}, what='base.py')
  with pytest.raises(config_lib.ConfigError, match=r"model.d_model='sixty' is not a valid int"):
    config_lib.override(base, {'model.d_model': 'sixty'})
  with pytest.raises(config_lib.ConfigError, match=r'model.d_model=2.5 \(float\) does not fit the field, which holds '
                     r'int \(128\)'):
    config_lib.override(base, {'model.d_model': 2.5})
  with pytest.raises(config_lib.ConfigError, match='model is a section'):
    config_lib.override(base, {'model': '3'})


def test_diff_many_and_its_table():
  a = config_lib.load_config_file(QUICKSTART)
  b = config_lib.override(a, {'model.norm': 'rmsnorm', 'train.num_steps': 10})
  c = config_lib.from_json(config_lib.to_json(a))  # what a workdir holds: the same config
  rows = config_lib.diff_many([a, b, c])
  assert rows == [('model.norm', ['layernorm', 'rmsnorm', 'layernorm']), ('train.num_steps', [1500, 10, 1500])]
  assert config_lib.diff_many([a, c]) == []
  del c.model['norm']
  assert config_lib.diff_many([a, c]) == [('model.norm', ['layernorm', config_lib.ABSENT])]
  text = config_lib.diff_table(['a', 'b', 'c'], rows)
  assert text.splitlines() == ['field              a          b        c',
                               'model.norm         layernorm  rmsnorm  layernorm',
                               'train.num_steps *  1500       10       1500']
  assert config_lib.diff_table(['a', 'b', 'c'], rows, markdown=True).splitlines()[:2] == [
      '| field | a | b | c |', '| --- | --- | --- | --- |']


def test_config_diff_command(tmp_path):
  ablation = os.path.join(REPO, 'configs', 'ablations', 'quickstart_rmsnorm.py')
  result = run_config_diff(QUICKSTART, ablation)
  assert result.returncode == 1, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0] == f'configs in {os.path.join(REPO, "configs")}{os.sep}:'  # the labels drop the shared directory
  assert lines[1].split() == ['field', 'quickstart.py', os.path.join('ablations', 'quickstart_rmsnorm.py')]
  assert [line.split() for line in lines[2:4]] == [['model.activation', 'relu', 'silu'],
                                                   ['model.norm', 'layernorm', 'rmsnorm']]
  assert lines[4].startswith('2 of ') and lines[4].endswith(' fields differ')
  # A workdir stands for its config.json; the same config in another form is no difference.
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'config.json').write_text(config_lib.to_json(config_lib.load_config_file(ablation)))
  result = run_config_diff(ablation, str(workdir))
  assert result.returncode == 0 and result.stdout.startswith('the configs are the same'), result.stdout
  result = run_config_diff(QUICKSTART, str(workdir), '--only=model.norm', '--format=json')
  assert result.returncode == 1
  assert json.loads(result.stdout)['differences'] == [{'key': 'model.norm', 'values': ['layernorm', 'rmsnorm'],
                                                       'resumable': False}]
  result = run_config_diff(QUICKSTART, str(workdir), '--ignore=model')
  assert result.returncode == 0
  for args, message in (([QUICKSTART], 'give two or more configs'),
                        ([QUICKSTART, str(tmp_path)], 'holds no config.json'),
                        ([QUICKSTART, ablation, '--ignore=modle'], "unknown field or section 'modle'; nearest valid "
                                                                   'keys: model')):
    result = run_config_diff(*args)
    assert result.returncode == 2 and result.stderr.startswith('error: ') and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
