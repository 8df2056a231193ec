"""Objectives: what a batch means and how it is scored.

An objective wraps a model and exposes the pure functions the trainer needs:
`loss_fn(params, batch, rng) -> (loss, metrics)` for training and `eval_fn(params, batch) -> sums`
for evaluation. Adding an objective touches no training code.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from research import decoding
from research.config import check_choice

Array = jax.Array
OBJECTIVES = ('seq2seq',)


def cross_entropy(logits: Array, targets: Array, weights: Array, label_smoothing: float = 0.0,
                  z_loss: float = 0.0) -> tuple[Array, Array, Array]:
  """Token-level cross-entropy in float32 -> (weighted loss sum, weighted correct count, weight sum).

  Label smoothing spreads `label_smoothing` of the target mass uniformly over the vocabulary;
  `z_loss` adds z_loss * log(Z)^2 to keep the softmax normaliser near 1 (as in PaLM / T5X).
  """
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  log_probs = logits - log_z[..., None]
  nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  if label_smoothing:
    nll = (1 - label_smoothing) * nll - label_smoothing * jnp.mean(log_probs, axis=-1)
  loss = nll + z_loss * jnp.square(log_z)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return jnp.sum(loss * weights), jnp.sum(correct * weights), jnp.sum(weights)


class Seq2Seq:
  """Supervised sequence-to-sequence: teacher-forced cross-entropy; greedy decodes for exact match."""

  def __init__(self, model: nn.Module, objective: ml_collections.ConfigDict, max_decode_length: int):
    check_choice(objective.name, OBJECTIVES, 'objective.name')
    self.model = model
    self.label_smoothing = objective.label_smoothing
    self.z_loss = objective.z_loss
    self.max_decode_length = max_decode_length

  def init(self, rng: Array, batch: dict) -> dict:
    """Boxed (logically partitioned) parameters for a batch of this shape."""
    return self.model.init({'params': rng}, batch, deterministic=True)['params']

  def loss_fn(self, params, batch: dict, rng: Array) -> tuple[Array, dict]:
    logits = self.model.apply({'params': params}, batch, deterministic=False, rngs={'dropout': rng})
    loss_sum, correct, weight = cross_entropy(logits, batch['decoder_target_tokens'],
                                              batch['decoder_loss_weights'], self.label_smoothing, self.z_loss)
    weight = jnp.maximum(weight, 1.0)
    return loss_sum / weight, {'accuracy': correct / weight, 'target_tokens': weight,
                               'input_tokens': jnp.sum(batch['encoder_segment_ids'] > 0)}

  def predict(self, params, batch: dict) -> Array:
    """Greedy decodes [batch, max_decode_length], EOS-terminated and zero-padded."""
    return decoding.greedy(self.model, params, batch, self.max_decode_length)

  def eval_fn(self, params, batch: dict) -> tuple[dict, Array]:
    """Metric sums over the batch (so they add up across batches and devices), and the predictions."""
    logits = self.model.apply({'params': params}, batch, deterministic=True)
    targets = batch['decoder_target_tokens']
    loss_sum, correct, weight = cross_entropy(logits, targets, batch['decoder_loss_weights'])
    predictions = self.predict(params, batch)
    real = (batch['example_index'] >= 0).astype(jnp.float32)
    width = min(predictions.shape[1], targets.shape[1])
    exact = jnp.all(predictions[:, :width] == targets[:, :width], axis=1) & jnp.all(targets[:, width:] == 0, axis=1)
    sums = {'loss': loss_sum, 'correct_tokens': correct, 'target_tokens': weight,
            'exact_match': jnp.sum(exact * real), 'examples': jnp.sum(real)}
    return sums, predictions


def build(config: ml_collections.ConfigDict, model: nn.Module) -> Seq2Seq:
  return Seq2Seq(model, config.objective, config.data.max_target_length)
