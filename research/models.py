"""Transformer models built from `layers.py`, configured by one frozen `ModelConfig`."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research import layers
from research.config import ConfigError, check_choice

Array = jax.Array
FAMILIES = ('encoder_decoder', 'decoder_only', 'encoder_only')
HEADS = ('lm', 'mlm', 'classifier')
POSITIONS = ('learned', 'sinusoidal', 'relative', 'rotary', 'none')
# What the backward pass may keep from the forward pass of a layer; the rest is recomputed.
REMAT_POLICIES = {'none': None, 'full': jax.checkpoint_policies.nothing_saveable,
                  'dots_saveable': jax.checkpoint_policies.dots_saveable}


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
  num_kv_heads: int = 0  # 0: multi-head; 1: multi-query; k: grouped-query with k key/value heads
  activation: str = 'relu'
  norm: str = 'layernorm'
  norm_position: str = 'pre'  # 'pre' (GPT-2, T5) or 'post' (original Transformer, BERT)
  norm_epsilon: float = 1e-6
  position_embedding: str = 'learned'  # learned, sinusoidal, relative (T5 bias), rotary, none
  relative_buckets: int = 32
  relative_max_distance: int = 128
  max_length: int = 512
  tie_embeddings: bool = True
  scale_logits: bool = True  # final states scaled by 1/sqrt(d_model) before the output projection (T5)
  scale_attention: bool = True  # queries scaled by 1/sqrt(head_dim); T5 folds this into its initialisation
  use_bias: bool = False
  head: str = 'lm'  # encoder_only: 'mlm' or 'classifier'
  num_classes: int = 2
  pooling: str = 'mean'  # classifier input: 'mean' over tokens or the 'first' token (BERT's [CLS])
  dtype: str = 'float32'  # compute dtype; parameters (and so optimizer state) stay in param_dtype
  param_dtype: str = 'float32'
  remat: str = 'none'  # recompute activations in the backward pass: 'none', 'full' (per layer), 'dots_saveable'
  scan_layers: bool = False  # one scanned layer (compile time flat in depth); parameters stacked under 'layers'
  lora_rank: int = 0  # > 0: low-rank adapters of this rank on the `lora_targets` kernels (layers.LoRA)
  lora_alpha: float = 16.0  # the adapters' term is scaled by lora_alpha / lora_rank
  lora_targets: tuple[str, ...] = ('query', 'value')  # names in layers.LORA_TARGETS

  @classmethod
  def from_config(cls, model: ml_collections.ConfigDict, tokenizer_vocab_size: int) -> 'ModelConfig':
    check_choice(model.family, FAMILIES, 'model.family')
    fields = {f.name for f in dataclasses.fields(cls)} - {'vocab_size'}
    unknown = set(model.keys()) - fields - {'family', 'vocab_multiple', 'vocab_size'}
    if unknown:
      raise ConfigError(f'model.{sorted(unknown)[0]} is not a model field; valid: {", ".join(sorted(fields))}')
    values = {k: model[k] for k in fields if k in model}
    if 'lora_targets' in values:  # a list once read back from config.json; the config must stay hashable
      values['lora_targets'] = tuple(values['lora_targets'])
    if not model.get('head_dim'):
      if model.d_model % model.num_heads:
        raise ConfigError(f'model.d_model={model.d_model} is not divisible by model.num_heads={model.num_heads}; '
                          'set model.head_dim explicitly or change one of them')
      values['head_dim'] = model.d_model // model.num_heads
    multiple = model.get('vocab_multiple', 1)
    vocab_size = -(-tokenizer_vocab_size // multiple) * multiple
    if model.get('vocab_size'):  # fixed, e.g. by an imported checkpoint
      if model.vocab_size < tokenizer_vocab_size:
        raise ConfigError(f'model.vocab_size={model.vocab_size} is smaller than the {tokenizer_vocab_size} ids '
                          'the tokenizer and objective need')
      vocab_size = model.vocab_size
    config = cls(vocab_size=vocab_size, **values)
    config.validate()
    return config

  def validate(self) -> None:
    check_choice(self.activation, tuple(layers.ACTIVATIONS) + tuple(layers.GATED_ACTIVATIONS), 'model.activation')
    check_choice(self.norm, ('layernorm', 'rmsnorm'), 'model.norm')
    check_choice(self.norm_position, ('pre', 'post'), 'model.norm_position')
    check_choice(self.position_embedding, POSITIONS, 'model.position_embedding')
    check_choice(self.head, HEADS, 'model.head')
    check_choice(self.pooling, ('mean', 'first'), 'model.pooling')
    if self.num_kv_heads and self.num_heads % self.num_kv_heads:
      raise ConfigError(f'model.num_heads={self.num_heads} must be a multiple of model.num_kv_heads={self.num_kv_heads}')
    if self.position_embedding == 'rotary' and self.head_dim % 2:
      raise ConfigError(f'rotary positions need an even head_dim, got {self.head_dim}')
    check_choice(self.dtype, ('float32', 'bfloat16'), 'model.dtype')
    check_choice(self.param_dtype, ('float32', 'bfloat16'), 'model.param_dtype')
    check_choice(self.remat, tuple(REMAT_POLICIES), 'model.remat')
    for name in ('d_model', 'num_heads', 'head_dim', 'mlp_dim', 'num_classes'):
      if getattr(self, name) <= 0:
        raise ConfigError(f'model.{name} must be positive, got {getattr(self, name)}')
    for name in ('num_encoder_layers', 'num_decoder_layers'):  # 0 for the stack a family does not have
      if getattr(self, name) < 0:
        raise ConfigError(f'model.{name} must not be negative, got {getattr(self, name)}')
    for name in ('dropout_rate', 'attention_dropout_rate'):
      if not 0 <= getattr(self, name) < 1:
        raise ConfigError(f'model.{name} must be in [0, 1), got {getattr(self, name)}')
    self._validate_lora()

  def _validate_lora(self) -> None:
    if self.lora_rank < 0 or self.lora_alpha <= 0:
      raise ConfigError(f'model.lora_rank={self.lora_rank} must be >= 0 (0: off) and model.lora_alpha='
                        f'{self.lora_alpha} positive')
    if not self.lora_rank:
      return
    gated = self.activation in layers.GATED_ACTIVATIONS
    present = [t for t in layers.LORA_TARGETS if t not in (('wi',) if gated else ('wi_0', 'wi_1'))]
    if not self.lora_targets:
      raise ConfigError(f'model.lora_rank={self.lora_rank} needs model.lora_targets, some of {", ".join(present)}')
    for target in self.lora_targets:
      check_choice(target, present, 'model.lora_targets entry')

  @property
  def kwargs(self) -> dict:
    """dtype/param_dtype arguments for the layers."""
    return {'dtype': jnp.dtype(self.dtype), 'param_dtype': jnp.dtype(self.param_dtype)}

  @property
  def lora(self) -> layers.LoRA | None:
    return layers.LoRA(self.lora_rank, self.lora_alpha, self.lora_targets) if self.lora_rank else None


class Block(nn.Module):
  """One Transformer layer: self-attention, optional cross-attention, MLP; each a residual sublayer."""
  config: ModelConfig
  cross_attention: bool = False

  @nn.compact
  def __call__(self, x: Array, mask: Array, positions: Array, deterministic: bool, bias: Array | None = None,
               encoded: Array | None = None, cross_mask: Array | None = None, decode: bool = False) -> Array:
    c = self.config
    attention = lambda name, rotary: layers.MultiHeadAttention(  # noqa: E731
        c.num_heads, c.head_dim, c.num_kv_heads, c.attention_dropout_rate, c.use_bias, rotary, c.scale_attention,
        **c.kwargs, lora=c.lora, name=name)

    def sublayer(x, name, fn):
      norm = layers.Norm(c.norm, c.norm_epsilon, **c.kwargs, name=f'{name}_norm')
      if c.norm_position == 'pre':
        return x + nn.Dropout(c.dropout_rate)(fn(norm(x)), deterministic=deterministic)
      return norm(x + nn.Dropout(c.dropout_rate)(fn(x), deterministic=deterministic))

    rotary = c.position_embedding == 'rotary'
    x = sublayer(x, 'self_attention', lambda h: attention('self_attention', rotary)(
        h, h, mask, deterministic, bias, positions, positions, decode))
    if self.cross_attention:
      x = sublayer(x, 'cross_attention', lambda h: attention('cross_attention', False)(
          h, encoded, cross_mask, deterministic, decode=decode))
    x = sublayer(x, 'mlp', lambda h: layers.Mlp(c.mlp_dim, c.activation, c.dropout_rate, c.use_bias, **c.kwargs,
                                                 lora=c.lora, name='mlp')(h, deterministic))
    return layers.constrain(x, 'batch', 'length', 'embed')


class _ScanStep(Block):
  """A Block as the body of `nn.scan`: (carry, no per-layer output)."""

  def __call__(self, x: Array, *args) -> tuple[Array, None]:
    return super().__call__(x, *args), None


class Stack(nn.Module):
  """Embedded tokens -> hidden states: absolute positions (if any), the layers, the final norm.

  Owns its position information: absolute embeddings, or T5 relative biases computed once and
  shared by its layers (bidirectional unless `causal`). Post-norm stacks normalise the embeddings
  instead of the output (BERT).
  """
  config: ModelConfig
  num_layers: int
  causal: bool
  cross_attention: bool = False

  @nn.compact
  def __call__(self, x: Array, positions: Array, mask: Array, deterministic: bool, encoded: Array | None = None,
               cross_mask: Array | None = None, decode: bool = False) -> Array:
    """With `decode`, `mask` spans the key/value cache: keys sit at their positions' slots."""
    c = self.config
    if c.position_embedding in ('learned', 'sinusoidal'):
      x = x + layers.PositionEmbedding(c.position_embedding, c.max_length, c.d_model, **c.kwargs,
                                       name='position_embed')(positions)
    if c.norm_position == 'post':
      x = layers.Norm(c.norm, c.norm_epsilon, **c.kwargs, name='embed_norm')(x)
    x = nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)
    x = layers.constrain(x, 'batch', 'length', 'embed')
    bias = None
    if c.position_embedding == 'relative':
      key_positions = jnp.broadcast_to(jnp.arange(mask.shape[-1]), (positions.shape[0], mask.shape[-1]))
      bias = layers.RelativePositionBias(c.num_heads, not self.causal, c.relative_buckets, c.relative_max_distance,
                                         **c.kwargs, name='relative_bias')(
                                             positions, key_positions if decode else positions)
    args = (mask, positions, deterministic, bias, encoded, cross_mask, decode)
    layer = _ScanStep if c.scan_layers else Block
    if c.remat != 'none':  # `deterministic` and `decode` (arguments 4 and 8, counting self) are Python bools
      layer = nn.remat(layer, policy=REMAT_POLICIES[c.remat], prevent_cse=not c.scan_layers, static_argnums=(4, 8))
    if c.scan_layers:
      layer = nn.scan(layer, variable_axes={'params': 0, 'cache': 0, 'intermediates': 0},
                      split_rngs={'params': True, 'dropout': True}, in_axes=(nn.broadcast,) * len(args),
                      length=self.num_layers, metadata_params={nn.PARTITION_NAME: 'layers'})
      x, _ = layer(c, self.cross_attention, name='layers')(x, *args)
    else:
      for i in range(self.num_layers):
        x = layer(c, self.cross_attention, name=f'layers_{i}')(x, *args)
    if c.norm_position == 'pre':
      x = layers.Norm(c.norm, c.norm_epsilon, **c.kwargs, name='final_norm')(x)
    return nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)


class LmHead(nn.Module):
  """Hidden states -> vocabulary logits, through the tied embedding or its own matrix."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x: Array, embed: layers.Embed) -> Array:
    c = self.config
    if c.scale_logits:
      x = x / jnp.sqrt(c.d_model).astype(x.dtype)
    if c.tie_embeddings:
      logits = embed.attend(x)
    else:
      logits = nn.Dense(c.vocab_size, use_bias=False, dtype=c.kwargs['dtype'], param_dtype=c.kwargs['param_dtype'],
                        kernel_init=layers.logical(nn.initializers.variance_scaling(1.0, 'fan_in', 'normal'),
                                                   'embed', 'vocab'), name='logits')(x)
    return layers.constrain(logits, 'batch', 'length', 'vocab')


class EncoderDecoder(nn.Module):
  """Encoder-decoder Transformer (original Transformer / T5 layout); embeddings shared by both stacks."""
  config: ModelConfig

  def setup(self):
    c = self.config
    self.token_embed = layers.Embed(c.vocab_size, c.d_model, **c.kwargs)
    self.encoder = Stack(c, c.num_encoder_layers, causal=False)
    self.decoder = Stack(c, c.num_decoder_layers, causal=True, cross_attention=True)
    self.lm_head = LmHead(c)

  def encode(self, tokens: Array, segment_ids: Array, positions: Array, deterministic: bool = True) -> Array:
    mask = layers.segment_mask(segment_ids, segment_ids)
    return self.encoder(self.token_embed(tokens), positions, mask, deterministic)

  def decode(self, encoded: Array, encoder_segment_ids: Array, tokens: Array, segment_ids: Array,
             positions: Array, deterministic: bool = True) -> Array:
    """Logits [batch, length, vocab] for every decoder position (teacher forcing)."""
    self_mask = layers.segment_mask(segment_ids, segment_ids) & layers.causal_mask(tokens.shape[1])
    cross_mask = layers.segment_mask(segment_ids, encoder_segment_ids)
    x = self.decoder(self.token_embed(tokens), positions, self_mask, deterministic, encoded, cross_mask)
    return self.lm_head(x, self.token_embed)

  def decode_step(self, tokens: Array, positions: Array, cache_mask: Array, encoded: Array | None,
                  encoder_segment_ids: Array) -> Array:
    """Cached decoding (the 'cache' collection is mutable): logits [batch, new tokens, vocab] of `tokens` at
    `positions`; `cache_mask` [batch, 1, new tokens, cache length]. `encoded` is given at prefill, None after."""
    cross_mask = (encoder_segment_ids > 0)[:, None, None, :]
    x = self.decoder(self.token_embed(tokens), positions, cache_mask, True, encoded, cross_mask, decode=True)
    return self.lm_head(x, self.token_embed)

  def __call__(self, batch: dict, deterministic: bool = True) -> Array:
    encoded = self.encode(batch['encoder_input_tokens'], batch['encoder_segment_ids'],
                          batch['encoder_positions'], deterministic)
    return self.decode(encoded, batch['encoder_segment_ids'], batch['decoder_input_tokens'],
                       batch['decoder_segment_ids'], batch['decoder_positions'], deterministic)


class DecoderOnly(nn.Module):
  """Decoder-only language model (GPT); causal, or prefix-LM where `decoder_causal_attention` marks the prefix."""
  config: ModelConfig

  def setup(self):
    c = self.config
    self.token_embed = layers.Embed(c.vocab_size, c.d_model, **c.kwargs)
    self.decoder = Stack(c, c.num_decoder_layers, causal=True)
    self.lm_head = LmHead(c)

  def __call__(self, batch: dict, deterministic: bool = True) -> Array:
    tokens, segments = batch['decoder_input_tokens'], batch['decoder_segment_ids']
    if 'decoder_causal_attention' in batch:
      order = layers.prefix_lm_mask(tokens.shape[1], batch['decoder_causal_attention'])
    else:
      order = layers.causal_mask(tokens.shape[1])
    mask = layers.segment_mask(segments, segments) & order
    x = self.decoder(self.token_embed(tokens), batch['decoder_positions'], mask, deterministic)
    return self.lm_head(x, self.token_embed)

  def decode_step(self, tokens: Array, positions: Array, cache_mask: Array) -> Array:
    """Cached decoding (the 'cache' collection is mutable): logits [batch, new tokens, vocab] of `tokens` at
    `positions`; `cache_mask` [batch, 1, new tokens, cache length]."""
    x = self.decoder(self.token_embed(tokens), positions, cache_mask, True, decode=True)
    return self.lm_head(x, self.token_embed)


class EncoderOnly(nn.Module):
  """Bidirectional encoder (BERT) with a masked-LM head or a sequence-classification head."""
  config: ModelConfig

  @nn.compact
  def __call__(self, batch: dict, deterministic: bool = True) -> Array:
    """MLM logits [batch, length, vocab], or class logits [batch, num_classes]."""
    c = self.config
    token_embed = layers.Embed(c.vocab_size, c.d_model, **c.kwargs, name='token_embed')
    segments = batch['encoder_segment_ids']
    x = Stack(c, c.num_encoder_layers, causal=False, name='encoder')(
        token_embed(batch['encoder_input_tokens']), batch['encoder_positions'],
        layers.segment_mask(segments, segments), deterministic)
    dense = lambda size, names, name: nn.Dense(  # noqa: E731
        size, dtype=c.kwargs['dtype'], param_dtype=c.kwargs['param_dtype'], name=name,
        kernel_init=layers.logical(nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal'), *names),
        bias_init=layers.logical(nn.initializers.zeros, names[-1]))
    if c.head == 'classifier':
      if c.pooling == 'first':
        pooled = x[:, 0]
      else:
        weights = (batch['encoder_segment_ids'] > 0).astype(x.dtype)[..., None]
        pooled = jnp.sum(x * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
      pooled = jnp.tanh(dense(c.d_model, ('embed', 'mlp'), 'pooler')(pooled))
      pooled = nn.Dropout(c.dropout_rate)(pooled, deterministic=deterministic)
      return dense(c.num_classes, ('mlp', None), 'classifier')(pooled)
    # BERT's MLM transform (dense, the model's activation, norm) before the (tied) output projection.
    activation = layers.ACTIVATIONS[layers.GATED_ACTIVATIONS.get(c.activation, c.activation)]
    h = activation(dense(c.d_model, ('embed', 'mlp'), 'mlm_transform')(x))
    h = layers.Norm(c.norm, c.norm_epsilon, **c.kwargs, name='mlm_norm')(h)
    logits = LmHead(c, name='lm_head')(h, token_embed)
    return logits + self.param('mlm_bias', layers.logical(nn.initializers.zeros, 'vocab'), (c.vocab_size,),
                               c.kwargs['param_dtype'])


def stack_layers(params: dict) -> dict:
  """Unscanned parameters (`layers_0`, `layers_1`, ...) -> scanned (`layers`, with a leading layer axis)."""
  if not isinstance(params, dict):
    return params
  params = {k: stack_layers(v) for k, v in params.items()}
  count = sum(1 for k in params if k.startswith('layers_'))
  if count:
    per_layer = [params.pop(f'layers_{i}') for i in range(count)]
    params['layers'] = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *per_layer)
  return params


def unstack_layers(params: dict) -> dict:
  """Scanned parameters (`layers` with a leading layer axis) -> unscanned (`layers_0`, `layers_1`, ...)."""
  if not isinstance(params, dict):
    return params
  params = {k: unstack_layers(v) for k, v in params.items()}
  if 'layers' in params:
    stacked = params.pop('layers')
    for i in range(jax.tree.leaves(stacked)[0].shape[0]):
      params[f'layers_{i}'] = jax.tree.map(lambda x, i=i: np.asarray(x[i]), stacked)
  return params


def merge_lora(params: dict, scale: float) -> dict:
  """Adapters folded into their kernels (W + scale A B) and dropped: the same function as parameters of the model
  without LoRA (for export). `scale` is lora_alpha / lora_rank; scanned layers (a leading layer axis) work too."""
  if not isinstance(params, dict):
    return params
  merged = {k: merge_lora(v, scale) for k, v in params.items() if not k.endswith(('_lora_a', '_lora_b'))}
  for key in params:
    if not key.endswith('_lora_a'):
      continue
    name = key[:-len('_lora_a')]
    a, b = np.asarray(params[key], np.float32), np.asarray(params[f'{name}_lora_b'], np.float32)
    in_module = isinstance(merged[name], dict)  # an MLP dense keeps its kernel in its own scope
    kernel = np.asarray(merged[name]['kernel'] if in_module else merged[name])
    lead = kernel.shape[:a.ndim + b.ndim - 2 - kernel.ndim]  # () or (layers,)
    delta = a.reshape(lead + (-1, a.shape[-1])) @ b.reshape(lead + (b.shape[len(lead)], -1))
    kernel = (kernel.astype(np.float32) + scale * delta.reshape(kernel.shape)).astype(kernel.dtype)
    merged[name] = {**merged[name], 'kernel': kernel} if in_module else kernel
  return merged


MODELS = {'encoder_decoder': EncoderDecoder, 'decoder_only': DecoderOnly, 'encoder_only': EncoderOnly}


def build(model: ml_collections.ConfigDict, tokenizer_vocab_size: int) -> nn.Module:
  return MODELS[model.family](ModelConfig.from_config(model, tokenizer_vocab_size))
