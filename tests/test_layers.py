"""Layers against plain numpy references."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import layers


def numpy_attention(x_q, x_kv, wq, wk, wv, wo, mask):
  """Textbook multi-head attention, one head at a time, with masked positions excluded."""
  batch, q_len, _ = x_q.shape
  heads, head_dim = wq.shape[1], wq.shape[2]
  out = np.zeros((batch, q_len, wo.shape[-1]))
  for b in range(batch):
    for h in range(heads):
      q = x_q[b] @ wq[:, h] / np.sqrt(head_dim)
      k, v = x_kv[b] @ wk[:, h], x_kv[b] @ wv[:, h]
      scores = q @ k.T
      for i in range(q_len):
        allowed = mask[b, i]
        if not allowed.any():  # a padding query: uniform over all keys (finite masking value)
          weights = np.full(len(allowed), 1 / len(allowed))
        else:
          e = np.where(allowed, np.exp(scores[i] - scores[i][allowed].max()), 0.0)
          weights = e / e.sum()
        out[b, i] += (weights @ v) @ wo[h]
  return out


@pytest.mark.parametrize('causal', [False, True])
def test_attention_matches_numpy_with_padding_segments_and_causal_masks(causal):
  rng = np.random.default_rng(0)
  batch, length, features, heads, head_dim = 2, 7, 16, 4, 8
  x = rng.normal(size=(batch, length, features)).astype(np.float32)
  # Example 0: two packed segments then padding; example 1: one segment then padding.
  segments = np.array([[1, 1, 1, 2, 2, 0, 0], [1, 1, 1, 1, 1, 1, 0]])
  mask = layers.segment_mask(jnp.asarray(segments), jnp.asarray(segments))
  if causal:
    mask = mask & layers.causal_mask(length)
  module = layers.MultiHeadAttention(num_heads=heads, head_dim=head_dim)
  params = nn.unbox(module.init(jax.random.PRNGKey(0), x, x, mask, True))['params']
  got = module.apply({'params': params}, x, x, mask, True)

  p = jax.tree.map(np.asarray, params)
  np_mask = np.asarray(mask)[:, 0]
  expected_mask = (segments[:, :, None] == segments[:, None, :]) & (segments[:, :, None] > 0) & (segments[:, None, :] > 0)
  if causal:
    expected_mask &= np.tril(np.ones((length, length), bool))
  np.testing.assert_array_equal(np_mask, expected_mask)
  want = numpy_attention(x, x, p['query'], p['key'], p['value'], p['out'], expected_mask)
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=2e-5)


def test_cross_attention_ignores_padded_keys():
  rng = np.random.default_rng(1)
  x_q = rng.normal(size=(1, 3, 8)).astype(np.float32)
  x_kv = rng.normal(size=(1, 5, 8)).astype(np.float32)
  mask = layers.segment_mask(jnp.ones((1, 3), jnp.int32), jnp.asarray([[1, 1, 1, 0, 0]]))
  module = layers.MultiHeadAttention(num_heads=2, head_dim=4)
  params = nn.unbox(module.init(jax.random.PRNGKey(0), x_q, x_kv, mask, True))['params']
  changed = x_kv.copy()
  changed[0, 3:] = 100.0  # padded keys/values must not matter
  a = module.apply({'params': params}, x_q, x_kv, mask, True)
  b = module.apply({'params': params}, x_q, changed, mask, True)
  np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize('kind', ['layernorm', 'rmsnorm'])
def test_norm_matches_numpy(kind):
  x = np.random.default_rng(2).normal(3.0, 2.0, size=(2, 5, 16)).astype(np.float32)
  module = layers.Norm(kind)
  params = nn.unbox(module.init(jax.random.PRNGKey(0), x))['params']
  params = jax.tree.map(lambda p: p + np.linspace(0.5, 1.5, p.shape[-1], dtype=np.float32), params)
  got = module.apply({'params': params}, x)
  if kind == 'layernorm':
    want = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
    want = want * params['scale'] + params['bias']
  else:
    want = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6) * params['scale']
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_sinusoidal_positions_match_formula():
  got = np.asarray(layers.sinusoidal(jnp.arange(6)[None], 8))[0]
  freq = np.exp(-np.log(10_000.0) * np.arange(4) / 3)
  np.testing.assert_allclose(got[:, :4], np.sin(np.arange(6)[:, None] * freq), atol=1e-6)
  np.testing.assert_allclose(got[:, 4:], np.cos(np.arange(6)[:, None] * freq), atol=1e-6)


def test_every_parameter_has_logical_axis_names(config):
  from research import models
  model = models.build(config.model, tokenizer_vocab_size=100)
  from research.data.pipeline import Layout
  from research.train import example_batch
  layout = Layout('seq2seq', config.data.max_input_length, config.data.max_target_length)
  boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), example_batch(layout, 2))['params']
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in leaves)
  assert all(len(leaf.names) == leaf.value.ndim for leaf in leaves)
