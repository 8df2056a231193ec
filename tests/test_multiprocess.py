"""Two processes on localhost (2 CPU devices each, gloo collectives) train like one process on 4 devices."""

import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from research import checkpoints, metrics as metrics_lib, train
from research.config import ConfigError
from tests.conftest import REPO
from tests.test_train import train_losses


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _command(config_file, workdir, *overrides):
  return [sys.executable, os.path.join(REPO, 'experiments', 'train.py'), f'--config={config_file}',
          f'--workdir={workdir}', *overrides]


def _start_two_processes(config_file, workdir) -> list[subprocess.Popen]:
  """experiments/train.py as 2 processes with 2 CPU devices each."""
  port = _free_port()
  return [subprocess.Popen(
      _command(config_file, workdir, f'--config.distributed.coordinator_address=127.0.0.1:{port}',
               '--config.distributed.num_processes=2', f'--config.distributed.process_id={i}',
               '--config.distributed.cpu_devices_per_process=2'),
      env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]


def _run_two_processes(config_file, workdir) -> list[str]:
  """Both processes' outputs, once both have succeeded."""
  processes = _start_two_processes(config_file, workdir)
  outputs = [p.communicate(timeout=300)[0] for p in processes]
  assert [p.returncode for p in processes] == [0, 0], '\n'.join(outputs)
  return outputs


def _env():
  env = {**os.environ, 'PYTHONPATH': REPO, 'JAX_PLATFORMS': 'cpu'}
  env.pop('XLA_FLAGS', None)
  return env


def test_two_processes_match_one_process_and_stop_together(config, tmp_path):
  """2 processes x 2 devices give the 1-process 4-device losses and evaluation; a SIGTERM that reaches
  only process 1 stops both after the same step with one complete checkpoint, which resumes exactly
  (here in one process on 4 devices)."""
  steps = 40
  config.mesh.update(data=2, fsdp=2, tensor=1)
  config.train.update(num_steps=steps, eval_every=10, checkpoint_every=1000)
  config_file = tmp_path / 'config.py'
  config_file.write_text(
      'from tests.conftest import tiny_config\n'
      'def get_config():\n'
      f'  c = tiny_config({config.data.data_dir!r})\n'
      '  c.mesh.update(data=2, fsdp=2, tensor=1)\n'
      f'  c.train.update(num_steps={steps}, eval_every=10, checkpoint_every=1000)\n'
      '  return c\n')
  workdir = tmp_path / 'two_processes'
  processes = _start_two_processes(config_file, workdir)
  deadline = time.time() + 240
  while time.time() < deadline and processes[1].poll() is None:
    if sum('train/loss' in r for r in metrics_lib.read_metrics(str(workdir))) >= 12:
      processes[1].send_signal(signal.SIGTERM)
      break
    time.sleep(0.01)
  outputs = [p.communicate(timeout=120)[0] for p in processes]
  assert [p.returncode for p in processes] == [0, 0], '\n'.join(outputs)
  stopped = checkpoints.Checkpointer(str(workdir / 'checkpoints')).latest_step()
  assert stopped is not None and 12 <= stopped < steps, outputs[0]
  assert f'stopped at step {stopped}' in outputs[0] and '4 cpu device(s)' in outputs[0]
  # Each process saved its own data-iterator state.
  assert {'process_0-of-2.json', 'process_1-of-2.json'} <= set(os.listdir(workdir / 'checkpoints' / str(stopped) /
                                                                          'data'))
  evaluated = [r for r in metrics_lib.read_metrics(str(workdir)) if 'eval/loss' in r]

  train.train_and_evaluate(config, str(workdir), devices=jax.devices()[:4])
  final = train.train_and_evaluate(config, str(tmp_path / 'one_process'), devices=jax.devices()[:4])
  multi, single = train_losses(workdir), train_losses(tmp_path / 'one_process')
  assert sorted(multi) == list(range(1, steps + 1))
  np.testing.assert_allclose([multi[s] for s in multi], [single[s] for s in multi], rtol=2e-5)
  single_evals = {r['step']: r for r in metrics_lib.read_metrics(str(tmp_path / 'one_process')) if 'eval/loss' in r}
  assert evaluated and evaluated[0]['eval/examples'] == final['examples'] == 64
  for record in evaluated:  # the evaluation sharded over 2 processes counts every example once
    assert record['eval/loss'] == pytest.approx(single_evals[record['step']]['eval/loss'], rel=1e-5)


def test_unreachable_coordinator_fails_fast_with_a_clear_message(tmp_path):
  result = subprocess.run(
      _command(os.path.join(REPO, 'configs', 'quickstart.py'), tmp_path,
               f'--config.distributed.coordinator_address=127.0.0.1:{_free_port()}',
               '--config.distributed.num_processes=2', '--config.distributed.process_id=1',
               '--config.distributed.initialization_timeout=5'),
      env=_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2, result.stderr
  assert 'error: jax.distributed could not reach the coordinator 127.0.0.1:' in result.stderr
  assert 'Traceback' not in result.stderr


def test_bad_process_id_is_refused():
  from ml_collections import ConfigDict

  from research import mesh
  dist = ConfigDict(dict(coordinator_address='127.0.0.1:1', num_processes=2, process_id=2,
                         cpu_devices_per_process=0, initialization_timeout=5))
  try:
    mesh.initialize_distributed(dist)
  except ConfigError as e:
    assert 'distributed.process_id=2 must be in [0, distributed.num_processes=2)' in str(e)
  else:
    raise AssertionError('a process id out of range was accepted')


def _elastic_config(data_dir):
  from tests.conftest import tiny_config
  config = tiny_config(data_dir)
  config.mesh.update(data=2, fsdp=2, tensor=1)
  config.train.update(num_steps=12, eval_every=1000, checkpoint_every=6)
  return config


def test_elastic_resume_on_fewer_devices_and_on_two_processes(data_dir, tmp_path):
  """A 4-device run checkpointed at step 6 resumes on 2 devices, and on 2 processes x 2 devices: every
  later step sees the uninterrupted run's examples (its losses, to float32 tolerance)."""
  config = _elastic_config(data_dir)
  train.train_and_evaluate(config, str(tmp_path / 'uninterrupted'), devices=jax.devices()[:4])
  reference = train_losses(tmp_path / 'uninterrupted')

  # The first half stops on a request (as a preempted job would), keeping the 12-step schedule.
  first_half = tmp_path / 'first_half'
  stopped = _run_until(config, first_half, stop_after=6)
  assert stopped == 6

  # On 2 devices (one process): data=2 x fsdp=1.
  on_two = tmp_path / 'on_two_devices'
  import shutil
  shutil.copytree(first_half, on_two)
  config.train.num_steps = 12
  config.mesh.update(data=2, fsdp=1, tensor=1)
  train.train_and_evaluate(config, str(on_two), devices=jax.devices()[:2])
  resumed = train_losses(on_two)
  np.testing.assert_allclose([resumed[s] for s in range(1, 13)], [reference[s] for s in range(1, 13)], rtol=2e-5)

  # On 2 processes with 2 devices each (the mesh of the first half).
  on_processes = tmp_path / 'on_two_processes'
  shutil.copytree(first_half, on_processes)
  config_file = tmp_path / 'config.py'
  config_file.write_text(
      'from tests.test_multiprocess import _elastic_config\n'
      f'def get_config():\n  return _elastic_config({data_dir!r})\n')
  outputs = _run_two_processes(config_file, on_processes)
  assert 'resuming from step 6' in outputs[0]
  resumed = train_losses(on_processes)
  np.testing.assert_allclose([resumed[s] for s in range(1, 13)], [reference[s] for s in range(1, 13)], rtol=2e-5)


def _run_until(config, workdir, stop_after: int) -> int:
  """Runs the 12-step config and stops it with SIGTERM's path (a stop request) after `stop_after` steps."""
  import signal
  config.train.num_steps = 12
  original = train.make_train_step

  def make_stopping_step(exp, teacher=None):
    step = original(exp, teacher)
    calls = []

    def stopping(state, batch):
      calls.append(1)
      if len(calls) == stop_after:
        signal.raise_signal(signal.SIGTERM)
      return step(state, batch)
    return stopping
  train.make_train_step = make_stopping_step
  try:
    train.train_and_evaluate(config, str(workdir), devices=jax.devices()[:4])
  finally:
    train.make_train_step = original
  return checkpoints.Checkpointer(str(workdir / 'checkpoints')).latest_step()
