"""Autoregressive decoding with the models' own `encode`/`decode` methods."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.data.tokenizer import EOS_ID

Array = jax.Array


def greedy(model: nn.Module, params, batch: dict, max_length: int) -> Array:
  """Greedy decoding: encode once, then pick the arg-max token one position at a time.

  Returns [batch, max_length] tokens; after an example's EOS everything is 0 (padding). Each step
  re-runs the decoder over the fixed-size buffer (causal masking makes the later zeros irrelevant).
  """
  variables = {'params': params}
  encoder_segments = batch['encoder_segment_ids']
  encoded = model.apply(variables, batch['encoder_input_tokens'], encoder_segments,
                        batch['encoder_positions'], method=model.encode)
  size = encoded.shape[0]
  segments = jnp.ones((size, max_length), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(max_length), (size, max_length))

  def step(i, carry):
    inputs, outputs, done = carry
    logits = model.apply(variables, encoded, encoder_segments, inputs, segments, positions, method=model.decode)
    token = jnp.where(done, 0, jnp.argmax(logits[:, i], axis=-1).astype(jnp.int32))
    outputs = outputs.at[:, i].set(token)
    inputs = jax.lax.dynamic_update_slice(inputs, token[:, None], (0, jnp.minimum(i + 1, max_length - 1)))
    return inputs, outputs, done | (token == EOS_ID)

  empty = jnp.zeros((size, max_length), jnp.int32)
  _, outputs, _ = jax.lax.fori_loop(0, max_length, step, (empty, empty, jnp.zeros((size,), bool)))
  return outputs
