"""research/prune.py: the schedule, which weights go, that they stay gone, and a pruned training run."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from research import analysis, checkpoints, metrics as metrics_lib, prune, train
from research.config import ConfigError


def _prune_config(**fields):
  config = ml_collections.ConfigDict(dict(sparsity=0.6, start_step=2, end_step=10, every=2, targets=('wi', 'query')))
  config.update(fields)
  return config


def test_schedule_is_the_cubic_of_zhu_and_gupta():
  config = _prune_config()
  for step in (0, 2, 3, 6, 9, 10, 50):
    progress = min(max((step - 2) / 8, 0.0), 1.0)
    assert float(prune.sparsity_at(jnp.asarray(step), config, 100)) == pytest.approx(0.6 * (1 - (1 - progress) ** 3))
  assert prune.end_step(_prune_config(end_step=0), 100) == 75


def test_the_smallest_magnitudes_go_layer_by_layer():
  rng = np.random.default_rng(0)
  params = {'encoder': {'layers': {'mlp': {'wi': {'kernel': rng.normal(size=(3, 8, 16)).astype(np.float32)}},
                                   'self_attention': {'key': rng.normal(size=(3, 8, 2, 4)).astype(np.float32)}}},
            'token_embed': {'embedding': rng.normal(size=(32, 8)).astype(np.float32)}}
  config = _prune_config(targets=('wi',))
  mask = prune.target_mask(params, config)
  assert jax.tree.leaves(mask) == [True, False, False]  # leaves in key order: encoder/layers/mlp, key, embedding
  # Step 10 is a re-thresholding step at the full 60%: 76 of each layer's 128 weights go.
  pruned = prune.apply(params, params, jnp.asarray(10), mask, config, 100)
  kernel = np.asarray(pruned['encoder']['layers']['mlp']['wi']['kernel'])
  for layer, original in zip(kernel, params['encoder']['layers']['mlp']['wi']['kernel']):
    smallest = np.argsort(np.abs(original).ravel())[:76]
    assert np.all(layer.ravel()[smallest] == 0) and np.count_nonzero(layer) == 128 - 76
    kept = np.setdiff1d(np.arange(128), smallest)
    np.testing.assert_array_equal(layer.ravel()[kept], original.ravel()[kept])
  for untouched in (('encoder', 'layers', 'self_attention', 'key'), ('token_embed', 'embedding')):
    a, b = pruned, params
    for key in untouched:
      a, b = a[key], b[key]
    np.testing.assert_array_equal(a, b)


def test_pruned_weights_stay_zero_between_thresholds():
  config = _prune_config(targets=('wi',))
  previous = {'wi': {'kernel': jnp.asarray([[0.0, 2.0], [0.0, -1.0]])}}
  updated = {'wi': {'kernel': jnp.asarray([[0.5, 2.5], [-0.3, -0.5]])}}
  mask = prune.target_mask(previous, config)
  kept = prune.apply(updated, previous, jnp.asarray(3), mask, config, 100)  # 3 is not a multiple of `every`
  np.testing.assert_array_equal(kept['wi']['kernel'], [[0.0, 2.5], [0.0, -0.5]])


def test_bad_pruning_configs_are_refused():
  with pytest.raises(ConfigError, match=r"prune.targets=\('nope',\) names no parameter; matrices are named .*wi"):
    prune.target_mask({'mlp': {'wi': {'kernel': np.ones((2, 2))}}}, _prune_config(targets=('nope',)))
  with pytest.raises(ConfigError, match=r'prune.sparsity must be in \[0, 1\)'):
    prune.check(_prune_config(sparsity=1.0), 100)
  with pytest.raises(ConfigError, match=r'prune.start_step \(2\) < prune.end_step \(200\) <= train.num_steps'):
    prune.check(_prune_config(end_step=200), 100)


def test_a_pruned_run_reaches_its_sparsity_and_keeps_the_rest_dense(config, tmp_path):
  """Also: a frozen layer is not pruned (it stays as it was, and dense)."""
  config.prune.update(sparsity=0.5, start_step=0, end_step=8, every=2)
  config.train.freeze = ('encoder/layers_0/.*',)
  config.mesh.update(data=1, fsdp=1, tensor=1)
  train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
  params = analysis.load_experiment(str(tmp_path)).params
  targets = set(config.prune.targets)
  for path, weights in jax.tree_util.tree_leaves_with_path(params):
    name = checkpoints.path_name(path)
    zeros = np.mean(np.asarray(weights) == 0)
    parts = name.split('/')
    if name.startswith('encoder/layers_0/'):
      assert zeros == 0 or 'bias' in name, name  # (biases start at zero)
    elif (parts[-2] if parts[-1] == 'kernel' else parts[-1]) in targets:
      assert zeros == pytest.approx(0.5, abs=1 / weights.size), name  # floor(0.5 n) of n
    elif 'bias' not in name and 'scale' not in name:
      assert zeros == 0, name
  logged = {r['step']: r['train/sparsity'] for r in metrics_lib.read_metrics(str(tmp_path)) if 'train/sparsity' in r}
  assert logged[1] == 0 and logged[12] == pytest.approx(0.5, abs=0.01)
  assert 0 < logged[4] < logged[8]
