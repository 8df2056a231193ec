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


def greedy_continue(model: nn.Module, params, batch: dict, prompt: Array) -> Array:
  """Greedy continuation for a decoder-only model of prompts of different lengths.

  `prompt` [batch, length] is 1 on the decoder-input positions that hold the prompt (left-aligned).
  Returns tokens aligned with the decoder targets: position i holds the token generated after
  reading position i, for every i whose next input is not prompt; 0 elsewhere and after EOS.
  """
  variables = {'params': params}
  length = prompt.shape[1]
  prompt = prompt.astype(bool)
  inputs = jnp.where(prompt, batch['decoder_input_tokens'], 0)
  segments = jnp.ones_like(inputs)
  features = {'decoder_positions': jnp.broadcast_to(jnp.arange(length), inputs.shape)}
  if 'decoder_causal_attention' in batch:  # prefix LM: bidirectional over the prompt
    features['decoder_causal_attention'] = batch['decoder_causal_attention']
  next_is_prompt = jnp.concatenate([prompt[:, 1:], jnp.zeros_like(prompt[:, :1])], axis=1)

  def step(i, carry):
    inputs, outputs, done = carry
    logits = model.apply(variables, {**features, 'decoder_input_tokens': inputs, 'decoder_segment_ids': segments})
    generating = ~next_is_prompt[:, i] & prompt.any(axis=1)
    token = jnp.where(done | ~generating, 0, jnp.argmax(logits[:, i], axis=-1).astype(jnp.int32))
    outputs = outputs.at[:, i].set(token)
    write = jnp.where(generating & ~done, token, inputs[:, jnp.minimum(i + 1, length - 1)])
    inputs = jax.lax.dynamic_update_slice(inputs, write[:, None], (0, jnp.minimum(i + 1, length - 1)))
    return inputs, outputs, done | (generating & (token == EOS_ID))

  start = jnp.zeros((inputs.shape[0],), bool)
  _, outputs, _ = jax.lax.fori_loop(0, length, step, (inputs, jnp.zeros_like(inputs), start))
  return outputs
