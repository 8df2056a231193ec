"""Transformer models built from `layers.py`, configured by one frozen `ModelConfig`."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from research import layers
from research.config import ConfigError, check_choice

Array = jax.Array
FAMILIES = ('encoder_decoder',)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The architecture, checked once; `vocab_size` is the tokenizer's, padded for even sharding."""
  vocab_size: int
  d_model: int = 128
  num_heads: int = 4
  head_dim: int = 32
  mlp_dim: int = 512
  num_encoder_layers: int = 2
  num_decoder_layers: int = 2
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  activation: str = 'relu'
  norm: str = 'layernorm'
  position_embedding: str = 'learned'
  max_length: int = 512
  tie_embeddings: bool = True
  use_bias: bool = False
  dtype: str = 'float32'
  param_dtype: str = 'float32'

  @classmethod
  def from_config(cls, model: ml_collections.ConfigDict, tokenizer_vocab_size: int) -> 'ModelConfig':
    check_choice(model.family, FAMILIES, 'model.family')
    fields = {f.name for f in dataclasses.fields(cls)} - {'vocab_size'}
    values = {k: model[k] for k in fields}
    if not model.head_dim:
      if model.d_model % model.num_heads:
        raise ConfigError(f'model.d_model={model.d_model} is not divisible by model.num_heads={model.num_heads}; '
                          'set model.head_dim explicitly or change one of them')
      values['head_dim'] = model.d_model // model.num_heads
    multiple = model.vocab_multiple
    config = cls(vocab_size=-(-tokenizer_vocab_size // multiple) * multiple, **values)
    config.validate()
    return config

  def validate(self) -> None:
    check_choice(self.activation, tuple(layers.ACTIVATIONS), 'model.activation')
    check_choice(self.norm, ('layernorm', 'rmsnorm'), 'model.norm')
    check_choice(self.position_embedding, ('learned', 'sinusoidal'), 'model.position_embedding')
    check_choice(self.dtype, ('float32', 'bfloat16'), 'model.dtype')
    check_choice(self.param_dtype, ('float32', 'bfloat16'), 'model.param_dtype')
    for name in ('d_model', 'num_heads', 'head_dim', 'mlp_dim', 'num_encoder_layers', 'num_decoder_layers'):
      if getattr(self, name) <= 0:
        raise ConfigError(f'model.{name} must be positive, got {getattr(self, name)}')
    for name in ('dropout_rate', 'attention_dropout_rate'):
      if not 0 <= getattr(self, name) < 1:
        raise ConfigError(f'model.{name} must be in [0, 1), got {getattr(self, name)}')

  @property
  def kwargs(self) -> dict:
    """dtype/param_dtype arguments for the layers."""
    return {'dtype': jnp.dtype(self.dtype), 'param_dtype': jnp.dtype(self.param_dtype)}


class EncoderLayer(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x: Array, mask: Array, deterministic: bool) -> Array:
    c = self.config
    h = layers.Norm(c.norm, **c.kwargs, name='pre_attention_norm')(x)
    h = layers.MultiHeadAttention(c.num_heads, c.head_dim, c.attention_dropout_rate, c.use_bias, **c.kwargs,
                                  name='attention')(h, h, mask, deterministic)
    x = x + nn.Dropout(c.dropout_rate)(h, deterministic=deterministic)
    h = layers.Norm(c.norm, **c.kwargs, name='pre_mlp_norm')(x)
    h = layers.Mlp(c.mlp_dim, c.activation, c.dropout_rate, c.use_bias, **c.kwargs, name='mlp')(h, deterministic)
    x = x + nn.Dropout(c.dropout_rate)(h, deterministic=deterministic)
    return layers.constrain(x, 'batch', 'length', 'embed')


class DecoderLayer(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x: Array, encoded: Array, self_mask: Array, cross_mask: Array, deterministic: bool) -> Array:
    c = self.config
    attention = lambda name: layers.MultiHeadAttention(  # noqa: E731
        c.num_heads, c.head_dim, c.attention_dropout_rate, c.use_bias, **c.kwargs, name=name)
    h = layers.Norm(c.norm, **c.kwargs, name='pre_self_attention_norm')(x)
    h = attention('self_attention')(h, h, self_mask, deterministic)
    x = x + nn.Dropout(c.dropout_rate)(h, deterministic=deterministic)
    h = layers.Norm(c.norm, **c.kwargs, name='pre_cross_attention_norm')(x)
    h = attention('cross_attention')(h, encoded, cross_mask, deterministic)
    x = x + nn.Dropout(c.dropout_rate)(h, deterministic=deterministic)
    h = layers.Norm(c.norm, **c.kwargs, name='pre_mlp_norm')(x)
    h = layers.Mlp(c.mlp_dim, c.activation, c.dropout_rate, c.use_bias, **c.kwargs, name='mlp')(h, deterministic)
    x = x + nn.Dropout(c.dropout_rate)(h, deterministic=deterministic)
    return layers.constrain(x, 'batch', 'length', 'embed')


class EncoderDecoder(nn.Module):
  """Pre-norm encoder-decoder Transformer (original Transformer / T5 layout)."""
  config: ModelConfig

  def setup(self):
    c = self.config
    self.token_embed = layers.Embed(c.vocab_size, c.d_model, **c.kwargs)
    self.encoder_position = layers.PositionEmbedding(c.position_embedding, c.max_length, c.d_model, **c.kwargs)
    self.decoder_position = layers.PositionEmbedding(c.position_embedding, c.max_length, c.d_model, **c.kwargs)
    self.encoder_layers = [EncoderLayer(c, name=f'encoder_{i}') for i in range(c.num_encoder_layers)]
    self.decoder_layers = [DecoderLayer(c, name=f'decoder_{i}') for i in range(c.num_decoder_layers)]
    self.encoder_norm = layers.Norm(c.norm, **c.kwargs)
    self.decoder_norm = layers.Norm(c.norm, **c.kwargs)
    self.dropout = nn.Dropout(c.dropout_rate)
    if not c.tie_embeddings:
      self.logits_dense = nn.Dense(
          c.vocab_size, use_bias=False, dtype=c.kwargs['dtype'], param_dtype=c.kwargs['param_dtype'],
          kernel_init=layers.logical(nn.initializers.variance_scaling(1.0, 'fan_in', 'normal'), 'embed', 'vocab'))

  def encode(self, tokens: Array, segment_ids: Array, positions: Array, deterministic: bool = True) -> Array:
    x = self.token_embed(tokens) + self.encoder_position(positions)
    x = layers.constrain(self.dropout(x, deterministic=deterministic), 'batch', 'length', 'embed')
    mask = layers.segment_mask(segment_ids, segment_ids)
    for layer in self.encoder_layers:
      x = layer(x, mask, deterministic)
    return self.dropout(self.encoder_norm(x), deterministic=deterministic)

  def decode(self, encoded: Array, encoder_segment_ids: Array, tokens: Array, segment_ids: Array,
             positions: Array, deterministic: bool = True) -> Array:
    """Logits [batch, length, vocab] for every decoder position (teacher forcing)."""
    x = self.token_embed(tokens) + self.decoder_position(positions)
    x = layers.constrain(self.dropout(x, deterministic=deterministic), 'batch', 'length', 'embed')
    self_mask = layers.segment_mask(segment_ids, segment_ids) & layers.causal_mask(tokens.shape[1])
    cross_mask = layers.segment_mask(segment_ids, encoder_segment_ids)
    for layer in self.decoder_layers:
      x = layer(x, encoded, self_mask, cross_mask, deterministic)
    x = self.dropout(self.decoder_norm(x), deterministic=deterministic)
    if self.config.tie_embeddings:
      logits = self.token_embed.attend(x) / jnp.sqrt(self.config.d_model).astype(x.dtype)
    else:
      logits = self.logits_dense(x)
    return layers.constrain(logits, 'batch', 'length', 'vocab')

  def __call__(self, batch: dict, deterministic: bool = True) -> Array:
    encoded = self.encode(batch['encoder_input_tokens'], batch['encoder_segment_ids'],
                          batch['encoder_positions'], deterministic)
    return self.decode(encoded, batch['encoder_segment_ids'], batch['decoder_input_tokens'],
                       batch['decoder_segment_ids'], batch['decoder_positions'], deterministic)


def build(model: ml_collections.ConfigDict, tokenizer_vocab_size: int) -> EncoderDecoder:
  return EncoderDecoder(ModelConfig.from_config(model, tokenizer_vocab_size))
