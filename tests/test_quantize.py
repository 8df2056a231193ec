"""Int8 weight-only quantization: per-channel error bounds, which weights and axes, logits, sharded decoding."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from configs import quickstart
from research import decoding, mesh as mesh_lib, quantize
from tests.test_decoding import VARIANTS, build, random_prompts


def _quantized_leaves(tree):
  return [(jax.tree_util.keystr(path), leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(
      tree, is_leaf=lambda x: isinstance(x, quantize.Int8)) if isinstance(leaf, quantize.Int8)]


@pytest.mark.parametrize('variant', ['llama', 'transformer_scanned'])
def test_each_channel_is_within_half_a_step(variant):
  """|w - dequantized| <= scale / 2 with scale = max |w| / 127 over the weight's input axes (numpy)."""
  family, fields = VARIANTS[variant]
  _, params, axes = build(family, scale=1.0, **fields)
  quantized = quantize.quantize(params, axes)
  floats = dict((jax.tree_util.keystr(p), np.asarray(w)) for p, w in jax.tree_util.tree_leaves_with_path(params))
  names = dict((jax.tree_util.keystr(p), tuple(a)) for p, a in jax.tree_util.tree_leaves_with_path(
      axes, is_leaf=lambda x: isinstance(x, PartitionSpec)))
  leaves = _quantized_leaves(quantized)
  assert len(leaves) >= 8
  for name, leaf in leaves:
    weight = floats[name]
    axis_names = names[name]
    inputs = tuple(i for i, n in enumerate(axis_names) if n == 'embed') if 'vocab' in axis_names or \
        axis_names[-1] != 'embed' else tuple(i for i, n in enumerate(axis_names) if n not in ('embed', 'layers'))
    scale = np.abs(weight).max(axis=inputs, keepdims=True) / 127
    assert leaf.values.dtype == jnp.int8
    np.testing.assert_allclose(leaf.scale, scale, rtol=1e-6)
    error = np.abs(np.asarray(quantize.dequantize(leaf)) - weight)
    assert np.all(error <= scale / 2 + 1e-7), name
  # Scanned weights keep one scale per layer; norms, biases and position tables stay float.
  if fields.get('scan_layers'):
    query = dict(leaves)["['decoder']['layers']['self_attention']['query']"]
    assert query.scale.shape == (2, 1, 4, 8)
  assert not any('norm' in n or 'bias' in n or 'position' in n for n, _ in leaves)
  vocab = params['token_embed']['embedding'].shape[0]
  assert dict(leaves)["['token_embed']['embedding']"].scale.shape == (vocab, 1)


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_logit_error_is_bounded(variant):
  """Int8 weights change the logits by under 3% (relative RMS) and keep the arg-max almost everywhere."""
  family, fields = VARIANTS[variant]
  model, params, axes = build(family, scale=1.0, **fields)
  rng = np.random.default_rng(0)
  batch = {'decoder_input_tokens': rng.integers(3, 24, (4, 12)).astype(np.int32),
           'decoder_segment_ids': np.ones((4, 12), np.int32), 'decoder_positions': np.tile(np.arange(12, dtype=np.int32), (4, 1)),
           'encoder_input_tokens': rng.integers(3, 24, (4, 10)).astype(np.int32),
           'encoder_segment_ids': np.ones((4, 10), np.int32), 'encoder_positions': np.tile(np.arange(10, dtype=np.int32), (4, 1))}
  apply = jax.jit(model.apply)
  exact = np.asarray(apply({'params': params}, batch))
  quantized = quantize.quantize(params, axes)
  approx = np.asarray(apply({'params': quantize.dequantize(quantized)}, batch))
  assert 0 < np.linalg.norm(approx - exact) / np.linalg.norm(exact) < 0.03
  assert np.mean(approx.argmax(-1) == exact.argmax(-1)) >= 0.9
  leaves = _quantized_leaves(quantized)
  weights = sum(int(np.prod(leaf.values.shape)) * 4 for _, leaf in leaves)  # the same weights in float32
  assert sum(quantize.nbytes(leaf) for _, leaf in leaves) < 0.3 * weights
  assert quantize.nbytes(quantized) < 0.45 * quantize.nbytes(params)


def test_int8_decoding_sharded_equals_one_device():
  family, fields = VARIANTS['llama']
  model, params, axes = build(family, **fields)
  quantized = quantize.quantize(params, axes)
  prompts, _ = random_prompts(family, [3, 1, 4, 2, 5, 2, 6, 3])
  options = decoding.Options(max_new_tokens=5)
  rules = mesh_lib.rules(quickstart.get_config().mesh)
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()).reshape(1, 4, 2), mesh_lib.AXES,
                           axis_types=(jax.sharding.AxisType.Auto,) * 3)
  shardings = quantize.shardings(quantized, mesh_lib.logical_shardings(axes, mesh, rules))
  sharded = decoding.sharded_generate(model, options, mesh, rules, shardings)(
      jax.device_put(quantized, shardings), prompts, jax.random.PRNGKey(0))
  single = jax.jit(functools.partial(decoding.generate, model, options))(quantized, prompts)
  np.testing.assert_array_equal(sharded.tokens, single.tokens)
  np.testing.assert_allclose(sharded.scores, single.scores, atol=1e-4)
