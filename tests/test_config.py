"""Config loading, overrides, forking and the start-up errors a user sees."""

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
