"""Analytic model FLOPs of a train step: the numerator of model FLOPs utilisation (MFU).

Counts the matrix multiplies of the models in `models.py` at 2 FLOPs per multiply-add: every layer's weight
matmuls (attention projections, MLP, the output projection and the encoder-only heads) and attention's two
products, scores (Q K^T) and values (A V). Embedding lookups, norms, activations, softmax, biases, the loss
and the optimizer update are left out: they are a few per cent of the arithmetic and limited by memory, not
by the matrix units. The backward pass computes gradients for activations and for weights, twice the forward
matmuls, so a train step is 3 x forward (the PaLM paper's MFU, Appendix B). Attention is counted over the full
length x length matrix, causal or not, because the model computes it in full (masks select, they skip nothing).
Rematerialisation's recomputed forward passes are not counted (they would make it hardware FLOPs utilisation),
so its cost shows as a slower step.
"""

from __future__ import annotations

import re

from research import layers

BACKWARD_FACTOR = 2  # gradients with respect to the inputs and to the weights: two matmuls per forward matmul

# Published dense (no sparsity) peak FLOP/s of one chip: (pattern of `device.device_kind`, lower case; bfloat16;
# float32 as XLA runs it by default: TF32 tensor cores on NVIDIA GPUs, one bfloat16 pass on TPUs). From NVIDIA's
# datasheets and the Cloud TPU system-architecture pages. More specific patterns come first.
PUBLISHED_PEAKS = (
    (r'h200 nvl', 835.5e12, 417.5e12),
    (r'h200', 989.4e12, 494.7e12),
    (r'h100 nvl', 835.5e12, 417.5e12),
    (r'h100 pcie', 756.5e12, 378.0e12),
    (r'h100', 989.4e12, 494.7e12),  # SXM: 'NVIDIA H100 80GB HBM3'
    (r'a100', 312.0e12, 156.0e12),
    (r'^tpu v4$', 275.0e12, 275.0e12),
    (r'^tpu v5( lite|e)$', 197.0e12, 197.0e12),  # v5e
    (r'^tpu v5p?$', 459.0e12, 459.0e12),  # v5p reports 'TPU v5'
    (r'^tpu v6( lite|e)$', 918.0e12, 918.0e12),  # v6e (Trillium)
)


def _attention(model, batch_size: int, query_length: int, key_length: int) -> tuple[int, int]:
  """(projection FLOPs, score + value FLOPs) of one attention sublayer's forward pass.

  Queries and the output projection act on the query tokens, keys and values on the key tokens (the encoder's,
  in cross-attention); with grouped-query attention there are fewer key/value heads, but every query head
  still scores every key.
  """
  query_width = model.num_heads * model.head_dim
  kv_width = (model.num_kv_heads or model.num_heads) * model.head_dim
  query_tokens, key_tokens = batch_size * query_length, batch_size * key_length
  projections = 2 * model.d_model * (2 * query_tokens * query_width + 2 * key_tokens * kv_width)
  scores_and_values = 2 * 2 * batch_size * query_length * key_length * query_width
  return projections, scores_and_values


def _mlp(model, tokens: int) -> int:
  """Gated activations (GEGLU, SwiGLU) have two input matrices, the others one; plus the output matrix."""
  matrices = 3 if model.activation in layers.GATED_ACTIVATIONS else 2
  return 2 * tokens * model.d_model * model.mlp_dim * matrices


def _stack(model, num_layers: int, batch_size: int, length: int, encoder_length: int = 0) -> tuple[int, int]:
  """(weight-matmul FLOPs, attention score + value FLOPs) of a stack's forward pass.

  A positive `encoder_length` adds cross-attention to that many encoder positions (the encoder-decoder's decoder).
  """
  projections, attention = _attention(model, batch_size, length, length)
  if encoder_length:
    cross_projections, cross_attention = _attention(model, batch_size, length, encoder_length)
    projections, attention = projections + cross_projections, attention + cross_attention
  return num_layers * (projections + _mlp(model, batch_size * length)), num_layers * attention


def forward_flops(model, family: str, batch_size: int, encoder_length: int = 0, decoder_length: int = 0) -> dict:
  """FLOPs of one forward pass, by part: 'encoder' and 'decoder' (their layers' weight matmuls), 'attention'
  (scores and values of every layer) and 'head' (output projection; the MLM transform, or the classifier's pooler).

  `model` is a `models.ModelConfig` (head_dim and vocab_size resolved); the lengths are those each stack sees
  (a decoder-only model's decoder length is input + target).
  """
  parts = {'encoder': 0, 'decoder': 0, 'attention': 0, 'head': 0}
  if family in ('encoder_decoder', 'encoder_only'):
    parts['encoder'], parts['attention'] = _stack(model, model.num_encoder_layers, batch_size, encoder_length)
  if family in ('encoder_decoder', 'decoder_only'):
    cross = encoder_length if family == 'encoder_decoder' else 0
    parts['decoder'], attention = _stack(model, model.num_decoder_layers, batch_size, decoder_length, cross)
    parts['attention'] += attention
    parts['head'] = 2 * batch_size * decoder_length * model.d_model * model.vocab_size
  elif family == 'encoder_only':
    if model.head == 'classifier':  # pooled: one vector per sequence
      parts['head'] = 2 * batch_size * model.d_model * (model.d_model + model.num_classes)
    else:  # MLM: a d_model x d_model transform, then the vocabulary
      parts['head'] = 2 * batch_size * encoder_length * model.d_model * (model.d_model + model.vocab_size)
  else:
    raise ValueError(f'unknown model family {family!r}')
  return parts


def train_flops(model, family: str, batch_size: int, encoder_length: int = 0, decoder_length: int = 0) -> int:
  """Model FLOPs of one train step (forward and backward) on `batch_size` sequences."""
  forward = sum(forward_flops(model, family, batch_size, encoder_length, decoder_length).values())
  return (1 + BACKWARD_FACTOR) * forward


def published_peak(device_kind: str, dtype: str) -> float | None:
  """One chip's published dense peak FLOP/s for matmuls computed in `dtype`; None for a chip not in the table."""
  for pattern, bfloat16, float32 in PUBLISHED_PEAKS:
    if re.search(pattern, device_kind.lower()):
      return bfloat16 if dtype == 'bfloat16' else float32
  return None
