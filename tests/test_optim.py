"""Schedules against their formulas; weight-decay mask; both optimizers train on the sharded mesh."""

import math

import jax
import numpy as np
import pytest

from research import optim, train
from research.config import ConfigError


def test_warmup_then_cosine(config):
  opt = config.optimizer
  opt.update(learning_rate=1.0, warmup_steps=10, schedule='cosine', end_learning_rate_factor=0.1)
  lr = optim.schedule(opt, num_steps=110)
  assert float(lr(0)) == 0.0 and math.isclose(float(lr(5)), 0.5, rel_tol=1e-6)
  for step in (10, 35, 60, 110):
    progress = (step - 10) / 100
    want = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
    assert math.isclose(float(lr(step)), want, rel_tol=1e-5), step


def test_warmup_then_rsqrt_is_continuous(config):
  opt = config.optimizer
  opt.update(learning_rate=2.0, warmup_steps=100, schedule='rsqrt')
  lr = optim.schedule(opt, num_steps=1000)
  assert math.isclose(float(lr(100)), 2.0, rel_tol=1e-6)
  assert math.isclose(float(lr(400)), 2.0 / math.sqrt(4.0), rel_tol=1e-6)


def test_bad_schedule_settings_are_refused(config):
  config.optimizer.schedule = 'cosin'
  with pytest.raises(ConfigError, match="did you mean 'cosine'"):
    optim.schedule(config.optimizer, 100)
  config.optimizer.update(schedule='cosine', warmup_steps=100)
  with pytest.raises(ConfigError, match='warmup_steps=100 must be in'):
    optim.schedule(config.optimizer, 100)


def test_weight_decay_skips_vectors(config):
  config.optimizer.update(name='adamw', learning_rate=0.0, weight_decay=0.5, warmup_steps=0, schedule='constant',
                          grad_clip_norm=0.0)
  params = {'kernel': np.ones((2, 3), np.float32), 'scale': np.ones((3,), np.float32)}
  tx = optim.make(config.optimizer, 10)
  zeros = jax.tree.map(np.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  # With lr 0 nothing moves; with lr 1 only the matrix decays.
  assert all(np.all(u == 0) for u in jax.tree.leaves(updates))
  config.optimizer.learning_rate = 1.0
  tx = optim.make(config.optimizer, 10)
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(updates['kernel'], -0.5)
  np.testing.assert_allclose(updates['scale'], 0.0)


def test_adafactor_state_shards_and_trains_on_eight_devices(config, tmp_path):
  """Adafactor's factored statistics have other shapes than the parameters: they are replicated."""
  config.optimizer.update(name='adafactor', learning_rate=0.01)
  config.mesh.update(data=2, fsdp=2, tensor=2)
  config.train.update(num_steps=6, eval_every=6, checkpoint_every=6)
  exp = train.setup(config)
  specs = {s.spec for s in jax.tree.leaves(exp.state_shardings.opt_state)}
  assert any(len(spec) for spec in specs)  # some statistics share their parameter's sharding
  train.train_and_evaluate(config, str(tmp_path))
  from research import metrics as metrics_lib
  losses = [r['train/loss'] for r in metrics_lib.read_metrics(str(tmp_path)) if 'train/loss' in r]
  assert len(losses) == 6 and losses[-1] < losses[0]
