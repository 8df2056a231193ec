"""Loss and decoding against independent references."""

import jax
import jax.numpy as jnp
import numpy as np

from research import models, objectives
from research.data.tokenizer import EOS_ID


def test_cross_entropy_on_a_known_tiny_batch():
  # Two positions over a 3-token vocabulary; the second is padding and must not count.
  logits = np.array([[[2.0, 1.0, 0.0], [0.0, 0.0, 5.0]]], np.float32)
  targets = np.array([[0, 1]])
  weights = np.array([[1.0, 0.0]], np.float32)
  loss, correct, weight = objectives.cross_entropy(logits, targets, weights)
  expected = -np.log(np.exp(2.0) / (np.exp(2.0) + np.exp(1.0) + 1.0))  # 0.40760596...
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  assert float(correct) == 1.0 and float(weight) == 1.0


def test_label_smoothing_and_z_loss_match_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 4, 11)).astype(np.float32)
  targets = rng.integers(0, 11, size=(2, 4))
  weights = rng.integers(0, 2, size=(2, 4)).astype(np.float32)
  loss, _, _ = objectives.cross_entropy(logits, targets, weights, label_smoothing=0.1, z_loss=1e-3)
  log_z = np.log(np.exp(logits).sum(-1))
  log_p = logits - log_z[..., None]
  soft = np.full(logits.shape, 0.1 / 11)
  soft[np.arange(2)[:, None], np.arange(4)[None], targets] += 0.9
  want = ((-(soft * log_p).sum(-1) + 1e-3 * log_z**2) * weights).sum()
  np.testing.assert_allclose(loss, want, rtol=1e-5)


def _tiny_model(config):
  model = models.build(config.model, tokenizer_vocab_size=20)
  batch = {
      'encoder_input_tokens': jnp.array([[5, 6, 7, EOS_ID, 0], [8, 9, EOS_ID, 0, 0]]),
      'encoder_segment_ids': jnp.array([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]),
      'encoder_positions': jnp.array([[0, 1, 2, 3, 0], [0, 1, 2, 0, 0]]),
  }
  return model, batch


def test_seq2seq_predictions_equal_step_by_step_argmax(config):
  """The evaluation's greedy decodes (cached decoding) against re-running the decoder for every new token."""
  config.model.dropout_rate = 0.0
  model, batch = _tiny_model(config)
  length = 6
  dummy = {**batch, 'decoder_input_tokens': jnp.zeros((2, length), jnp.int32),
           'decoder_segment_ids': jnp.ones((2, length), jnp.int32),
           'decoder_positions': jnp.tile(jnp.arange(length), (2, 1))}
  params = jax.jit(model.init)(jax.random.PRNGKey(3), dummy)['params']
  params = jax.tree.map(lambda p: getattr(p, 'value', p), params, is_leaf=lambda x: hasattr(x, 'names'))
  config.data.max_target_length = length
  objective = objectives.build(config, model, 20)
  got = np.asarray(jax.jit(objective.predict)(params, {**batch, 'example_index': jnp.arange(2)}))

  # Reference: grow the decoder input one token at a time, running the full model on the prefix.
  apply = jax.jit(model.apply)  # one program per prefix length (op by op, every small op compiles on its own)
  for row in range(2):
    single = {k: v[row:row + 1] for k, v in batch.items()}
    prefix, want = [0], []
    while len(want) < length:
      n = len(prefix)
      logits = apply({'params': params}, {**single, 'decoder_input_tokens': jnp.array([prefix]),
                                          'decoder_segment_ids': jnp.ones((1, n), jnp.int32),
                                          'decoder_positions': jnp.arange(n)[None]})
      token = int(jnp.argmax(logits[0, -1]))
      want.append(token)
      prefix.append(token)
      if token == EOS_ID:
        break
    want += [0] * (length - len(want))
    np.testing.assert_array_equal(got[row], want)
