"""End-to-end training: loss falls, sharding does not change the numbers, resume is exact, loading works."""

import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import research
from research import checkpoints, metrics as metrics_lib, train
from research.config import ConfigError
from tests.conftest import REPO


def train_losses(workdir) -> dict[int, float]:
  records = [r for r in metrics_lib.read_metrics(str(workdir)) if 'train/loss' in r]
  steps = [r['step'] for r in records]
  assert len(steps) == len(set(steps)), f'steps logged twice: {steps}'
  return {r['step']: r['train/loss'] for r in records}


@pytest.fixture
def reference_run(trained_workdir):
  """One uninterrupted 1-device run of the tiny config: the reference the other tests compare with."""
  return trained_workdir


def test_end_to_end_run_learns_and_fills_the_workdir(reference_run):
  workdir, final = reference_run
  losses = train_losses(workdir)
  assert sorted(losses) == list(range(1, 13))
  assert np.mean([losses[s] for s in (10, 11, 12)]) < 0.8 * np.mean([losses[s] for s in (1, 2, 3)])
  for name in ('config.json', 'vocab.model', 'metrics.jsonl', 'tensorboard'):
    assert os.path.exists(workdir / name), name
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(workdir / 'tensorboard'))
  assert checkpoints.Checkpointer(str(workdir / 'checkpoints')).all_steps() == [6, 12]
  evals = [r for r in metrics_lib.read_metrics(str(workdir)) if 'eval/loss' in r]
  assert [r['step'] for r in evals] == [6, 12] and final['examples'] == 64
  assert evals[-1]['eval/loss'] < evals[0]['eval/loss']
  counts, first = metrics_lib.read_metrics(str(workdir))[:2]
  assert counts == {'step': 0, 'params/total': counts['params/total'], 'params/trainable': counts['params/total']}
  for key in ('train/accuracy', 'train/learning_rate', 'train/grad_norm', 'train/tokens_per_sec', 'train/step_time'):
    assert key in first


def test_eight_devices_give_the_one_device_losses_and_restore_on_fewer(reference_run, config, tmp_path):
  """fsdp=4 x tensor=2 on 8 emulated devices reproduces the 1-device run (dropout included), and its
  checkpoint restores onto 2 devices (data=1 x fsdp=2) and onto 1 (load_experiment) bit-exactly."""
  assert jax.device_count() == 8
  config.mesh.update(data=1, fsdp=4, tensor=2)
  train.train_and_evaluate(config, str(tmp_path))
  reference = train_losses(reference_run[0])
  sharded = train_losses(tmp_path)
  np.testing.assert_allclose([sharded[s] for s in sorted(sharded)], [reference[s] for s in sorted(reference)],
                             rtol=2e-5)
  one = research.load_experiment(str(reference_run[0]))
  eight = research.load_experiment(str(tmp_path))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), one.params, eight.params)

  config.mesh.update(data=1, fsdp=2, tensor=1)
  two = train.setup(config, jax.devices()[:2])
  checkpointer = checkpoints.Checkpointer(str(tmp_path / 'checkpoints'))
  state = checkpointer.restore(checkpointer.latest_step(), two.abstract_state)
  checkpointer.close()
  kernel = state.params['encoder']['layers_0']['mlp']['wi']['kernel']
  assert kernel.sharding.mesh.shape == {'data': 1, 'fsdp': 2, 'tensor': 1} and kernel.sharding.spec[0] == 'fsdp'
  assert kernel.addressable_shards[0].data.shape == (16, 64)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), eight.params)
  assert int(state.step) == 12
  layout = (tmp_path / 'sharding.txt').read_text()
  assert re.search(r"\nencoder/layers_0/mlp/wi/kernel +\(32, 64\) +float32 +\('embed', 'mlp'\) +\('fsdp', 'tensor'\) +"
                   r"\(8, 32\)\n", layout), layout


def test_crash_and_resume_gives_identical_losses(reference_run, config, tmp_path, monkeypatch):
  """A run that dies after step 9 (checkpoint at 6, a half-written save of 9 left behind) resumes
  from 6 and logs exactly the uninterrupted run's losses, each step once."""
  config.mesh.update(data=1, fsdp=1, tensor=1)
  real_write = metrics_lib.MetricWriter.write

  def dying_write(self, step, values):
    real_write(self, step, values)
    if step == 9:
      raise RuntimeError('simulated crash')
  monkeypatch.setattr(metrics_lib.MetricWriter, 'write', dying_write)
  with pytest.raises(RuntimeError, match='simulated crash'):
    train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
  monkeypatch.undo()
  time.sleep(0.5)  # let the abandoned async save of step 6 settle, as a killed process's would not
  # What a process killed mid-save leaves: a temporary directory that must never be restored.
  partial = tmp_path / 'checkpoints' / '9.orbax-checkpoint-tmp-1234567890'
  (partial / 'state').mkdir(parents=True)
  (partial / 'state' / 'garbage').write_bytes(b'\0' * 10)
  assert checkpoints.Checkpointer(str(tmp_path / 'checkpoints')).latest_step() == 6

  train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
  assert train_losses(tmp_path) == train_losses(reference_run[0])


def test_sigterm_saves_and_rerun_resumes_exactly(config, tmp_path):
  """The real command line: SIGTERM mid-run saves a checkpoint and exits; the same command resumes,
  and every step's loss equals that of an uninterrupted run of the same command."""
  steps = 60
  config_file = tmp_path / 'config.py'
  config_file.write_text(
      'from tests.conftest import tiny_config\n'
      'def get_config():\n'
      f'  c = tiny_config({config.data.data_dir!r})\n'
      f'  c.train.update(num_steps={steps}, eval_every=1000, checkpoint_every=1000)\n'
      '  return c\n')
  env = {**os.environ, 'PYTHONPATH': REPO, 'JAX_PLATFORMS': 'cpu'}
  env.pop('XLA_FLAGS', None)

  def command(workdir):
    return [sys.executable, os.path.join(REPO, 'experiments', 'train.py'), f'--config={config_file}',
            f'--workdir={workdir}']
  workdir = tmp_path / 'interrupted'
  process = subprocess.Popen(command(workdir), env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
  deadline = time.time() + 180
  while time.time() < deadline and process.poll() is None:
    if len(metrics_lib.read_metrics(str(workdir))) >= 3:
      process.send_signal(signal.SIGTERM)
      break
    time.sleep(0.01)
  output = process.communicate(timeout=120)[0]
  assert process.returncode == 0, output
  stopped = checkpoints.Checkpointer(str(workdir / 'checkpoints')).latest_step()
  assert stopped is not None and 3 <= stopped < steps, output
  assert f'stopped at step {stopped}' in output

  outputs = []
  for args in (command(workdir), command(tmp_path / 'uninterrupted')):
    run = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    outputs.append(run.stdout + run.stderr)
  assert f'resuming from step {stopped}' in outputs[0]
  resumed, uninterrupted = train_losses(workdir), train_losses(tmp_path / 'uninterrupted')
  assert sorted(resumed) == list(range(1, steps + 1))
  assert resumed == uninterrupted


def test_load_experiment_returns_a_working_model(reference_run):
  exp = research.load_experiment(str(reference_run[0]))
  assert exp.step == 12 and exp.config.model.d_model == 32
  assert [r['step'] for r in exp.metrics if 'train/loss' in r] == list(range(1, 13))
  text = 'four hundred two'
  batch = train.example_batch(exp.objective.layout, 1)
  ids = exp.tokenizer.encode(text) + [1]
  batch['encoder_input_tokens'][0, :len(ids)] = ids
  batch['encoder_segment_ids'][0, :len(ids)] = 1
  batch['encoder_positions'][0, :len(ids)] = np.arange(len(ids))
  predictions = exp.objective.predict(exp.params, batch)
  assert predictions.shape == (1, exp.config.data.max_target_length)
  assert research.load_experiment(str(reference_run[0]), step=6).step == 6
  with pytest.raises(ConfigError, match=r'no checkpoint at step 7; it has steps \[6, 12\]'):
    research.load_experiment(str(reference_run[0]), step=7)


def test_bad_setups_are_refused_before_training(config, tmp_path):
  config.train.batch_size = 12  # not a multiple of data-parallel size 8
  with pytest.raises(ConfigError, match=r'train.batch_size=12 must be a positive multiple of the data-parallel size 8'):
    train.train_and_evaluate(config, str(tmp_path / 'a'))
  config.train.batch_size = 16
  config.mesh.update(data=3, fsdp=1, tensor=1)
  with pytest.raises(ConfigError, match='needs 3 devices but 8 are available'):
    train.train_and_evaluate(config, str(tmp_path / 'a'))
  config.mesh.update(data=1, fsdp=1, tensor=8)  # 2 heads cannot be split 8 ways
  with pytest.raises(ConfigError, match=r"has shape .* is not divisible by mesh axes \('tensor',\) of size 8"):
    train.train_and_evaluate(config, str(tmp_path / 'a'))
  config.mesh.update(data=-1, fsdp=1, tensor=1)
  config.model.update(family='decoder_only', max_length=30)  # input 24 + target 10 tokens in one sequence
  config.objective.name = 'causal_lm'
  with pytest.raises(ConfigError, match='data sequence length 34 exceeds model.max_length=30'):
    train.train_and_evaluate(config, str(tmp_path / 'a'))


def test_workdir_of_another_config_is_refused(reference_run, config):
  config.model.num_encoder_layers = 3
  with pytest.raises(ConfigError, match=r'model.num_encoder_layers: 2 \(saved\) vs 3 \(now\)'):
    train.train_and_evaluate(config, str(reference_run[0]))


def test_checkpoint_of_another_shape_is_refused_by_tensor_name(reference_run, config, tmp_path):
  """Even without config.json (copied checkpoints), a shape mismatch names the tensor and both shapes."""
  import shutil
  shutil.copytree(reference_run[0] / 'checkpoints', tmp_path / 'checkpoints')
  config.model.mlp_dim = 32
  with pytest.raises(ConfigError, match=r"tensor params/decoder/layers_0/mlp/wi/kernel has shape \(32, 64\) but the model expects \(32, 32\)"):
    train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])


@pytest.mark.parametrize('devices', [1, 8])
def test_gradient_accumulation_gives_the_large_batch_update(config, devices):
  """Without dropout, 4 micro-batches of 4 make the same update as one batch of 16 (also sharded)."""
  config.model.dropout_rate = 0.0
  config.mesh.update(data=-1, fsdp=1, tensor=1)
  if devices == 8:
    config.train.batch_size = 32  # 4 micro-batches of 8, one row per device each
  results = []
  for accumulate in (1, 4):
    config.train.grad_accum_steps = accumulate
    exp = train.setup(config, jax.devices()[:devices])
    state = train.init_state(exp)
    from research.data import pipeline
    batch = next(pipeline.train_iterator(exp.train_records, exp.tokenizer, config.data, exp.objective.layout,
                                         global_batch_size=config.train.batch_size, seed=0))
    state, metrics = train.make_train_step(exp)(state, train.to_global(exp, batch))
    results.append((jax.device_get(state.params), jax.device_get(metrics)))
  (big, big_metrics), (accumulated, accumulated_metrics) = results
  for key in ('loss', 'accuracy', 'grad_norm', 'target_tokens'):
    np.testing.assert_allclose(accumulated_metrics[key], big_metrics[key], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), accumulated, big)
  config.train.grad_accum_steps = 3
  with pytest.raises(ConfigError, match='must be a multiple of train.grad_accum_steps=3'):
    train.setup(config, jax.devices()[:devices])
