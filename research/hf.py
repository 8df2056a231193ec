"""Hugging Face checkpoints <-> this codebase: T5 (v1.0 and v1.1), BERT and GPT-2.

One table of rules per architecture maps each Hugging Face tensor to parameters here and back, so
import and export are inverses by construction. Reading safetensors needs no torch; a
`pytorch_model.bin` does. Anything that does not map (an unknown `model_type`, an unsupported
setting, a missing, extra or mis-shaped tensor) is refused with its name: never a partial load.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import ml_collections
import numpy as np

from research import models
from research.config import ConfigError

Params = dict
SUPPORTED = ('t5', 'bert', 'gpt2')


@dataclasses.dataclass(frozen=True)
class Rule:
  """Hugging Face tensor `theirs` <-> parameters `ours` (paths), with the conversions both ways."""
  ours: tuple[tuple[str, ...], ...]
  theirs: str
  to_ours: Callable[[np.ndarray], list[np.ndarray]]
  to_theirs: Callable[[list[np.ndarray]], np.ndarray]


def _same(ours: tuple[str, ...], theirs: str) -> Rule:
  return Rule((ours,), theirs, lambda x: [x], lambda xs: xs[0])


def _linear(ours: tuple[str, ...], theirs: str) -> Rule:
  """torch.nn.Linear stores [out, in]; flax kernels are [in, out]."""
  return Rule((ours,), theirs, lambda x: [x.T], lambda xs: xs[0].T)


def _heads_in(ours: tuple[str, ...], theirs: str, heads: int, transpose: bool = True) -> Rule:
  """[embed -> heads * head_dim] projection <-> kernel [embed, heads, head_dim]."""
  def to_ours(x):
    x = x.T if transpose else x
    return [x.reshape(x.shape[0], heads, -1)]

  def to_theirs(xs):
    y = xs[0].reshape(xs[0].shape[0], -1)
    return y.T if transpose else y
  return Rule((ours,), theirs, to_ours, to_theirs)


def _heads_out(ours: tuple[str, ...], theirs: str, heads: int, transpose: bool = True) -> Rule:
  """[heads * head_dim -> embed] projection <-> kernel [heads, head_dim, embed]."""
  def to_ours(x):
    x = x.T if transpose else x
    return [x.reshape(heads, -1, x.shape[-1])]

  def to_theirs(xs):
    y = xs[0].reshape(-1, xs[0].shape[-1])
    return y.T if transpose else y
  return Rule((ours,), theirs, to_ours, to_theirs)


def _bias_heads(ours: tuple[str, ...], theirs: str, heads: int) -> Rule:
  return Rule((ours,), theirs, lambda x: [x.reshape(heads, -1)], lambda xs: xs[0].reshape(-1))


def _norm(ours: tuple[str, ...], theirs: str, with_bias: bool = True) -> list[Rule]:
  rules = [_same(ours + ('scale',), f'{theirs}.weight')]
  return rules + [_same(ours + ('bias',), f'{theirs}.bias')] if with_bias else rules


# ----------------------------------------------------------------------------- configs


def model_config(hf: dict) -> ml_collections.ConfigDict:
  """The `config.model` section for a Hugging Face config.json, or a ConfigError naming what does not map."""
  kind = hf.get('model_type')
  if kind not in SUPPORTED:
    raise ConfigError(f'model_type {kind!r} is not supported; supported: {", ".join(SUPPORTED)}')
  if kind == 'gpt2':
    for field in ('scale_attn_by_inverse_layer_idx', 'add_cross_attention'):
      if hf.get(field):
        raise ConfigError(f'GPT-2 config: {field}=true is not supported')
    d = hf['n_embd']
    return ml_collections.ConfigDict(dict(
        family='decoder_only', vocab_size=hf['vocab_size'], vocab_multiple=1, d_model=d, num_heads=hf['n_head'],
        head_dim=d // hf['n_head'], mlp_dim=hf.get('n_inner') or 4 * d, num_encoder_layers=0,
        num_decoder_layers=hf['n_layer'], activation=_activation(hf['activation_function'], 'activation_function'),
        norm='layernorm', norm_position='pre', norm_epsilon=hf['layer_norm_epsilon'], position_embedding='learned',
        max_length=hf['n_positions'], tie_embeddings=True, scale_logits=False, use_bias=True, head='lm',
        dropout_rate=hf.get('resid_pdrop', 0.1), attention_dropout_rate=hf.get('attn_pdrop', 0.1)))
  if kind == 'bert':
    if hf.get('position_embedding_type', 'absolute') != 'absolute':
      raise ConfigError(f"BERT config: position_embedding_type={hf['position_embedding_type']!r} is not supported")
    classifier = any('SequenceClassification' in a for a in hf.get('architectures') or [])
    return ml_collections.ConfigDict(dict(
        family='encoder_only', vocab_size=hf['vocab_size'], vocab_multiple=1, d_model=hf['hidden_size'],
        num_heads=hf['num_attention_heads'], head_dim=hf['hidden_size'] // hf['num_attention_heads'],
        mlp_dim=hf['intermediate_size'], num_encoder_layers=hf['num_hidden_layers'], num_decoder_layers=0,
        activation=_activation(hf['hidden_act'], 'hidden_act'), norm='layernorm', norm_position='post',
        norm_epsilon=hf['layer_norm_eps'], position_embedding='learned', max_length=hf['max_position_embeddings'],
        tie_embeddings=True, scale_logits=False, use_bias=True,
        head='classifier' if classifier else 'mlm', num_classes=len(hf.get('id2label') or {0: 0, 1: 1}),
        pooling='first', dropout_rate=hf.get('hidden_dropout_prob', 0.1),
        attention_dropout_rate=hf.get('attention_probs_dropout_prob', 0.1)))
  proj = hf.get('feed_forward_proj', 'relu')
  if proj not in ('relu', 'gated-gelu'):
    raise ConfigError(f"T5 config: feed_forward_proj={proj!r} is not supported; use 'relu' or 'gated-gelu'")
  return ml_collections.ConfigDict(dict(
      family='encoder_decoder', vocab_size=hf['vocab_size'], vocab_multiple=1, d_model=hf['d_model'],
      num_heads=hf['num_heads'], head_dim=hf['d_kv'], mlp_dim=hf['d_ff'], num_encoder_layers=hf['num_layers'],
      num_decoder_layers=hf.get('num_decoder_layers') or hf['num_layers'], activation=proj, norm='rmsnorm',
      norm_position='pre', norm_epsilon=hf['layer_norm_epsilon'], position_embedding='relative',
      relative_buckets=hf['relative_attention_num_buckets'],
      relative_max_distance=hf.get('relative_attention_max_distance', 128), max_length=512,
      tie_embeddings=hf.get('tie_word_embeddings', True),
      scale_logits=hf.get('scale_decoder_outputs', hf.get('tie_word_embeddings', True)), scale_attention=False,
      use_bias=False, head='lm', dropout_rate=hf.get('dropout_rate', 0.1), attention_dropout_rate=0.0))


_HF_ACTIVATIONS = {'gelu_new': 'gelu_tanh', 'gelu_pytorch_tanh': 'gelu_tanh', 'gelu': 'gelu', 'relu': 'relu'}


def _activation(name: str, field: str) -> str:
  if name not in _HF_ACTIVATIONS:
    raise ConfigError(f'{field}={name!r} is not supported; supported: {", ".join(_HF_ACTIVATIONS)}')
  return _HF_ACTIVATIONS[name]


def resolved(model: ml_collections.ConfigDict, vocab_size: int) -> ml_collections.ConfigDict:
  """`config.model` with every field explicit (defaults filled in, head_dim and vocab_size resolved)."""
  fixed = ml_collections.ConfigDict(model.to_dict())
  fixed.vocab_size = vocab_size
  values = dataclasses.asdict(models.ModelConfig.from_config(fixed, vocab_size))
  return ml_collections.ConfigDict({**values, 'family': model.family})


# Fields a Hugging Face layout leaves free (or that only a family's unused parts read); how the model runs
# (precision, rematerialisation, scanned layers) is not part of the checkpoint, and LoRA adapters are merged into
# their kernels on export (`params_to_hf`).
_FREE = {'dropout_rate', 'attention_dropout_rate', 'vocab_multiple', 'max_length', 'dtype', 'param_dtype', 'remat',
         'scan_layers', 'lora_rank', 'lora_alpha', 'lora_targets'}
_UNUSED = {'decoder_only': {'num_encoder_layers', 'num_classes', 'pooling'},
           'encoder_only': {'num_decoder_layers'}, 'encoder_decoder': {'num_classes', 'pooling'}}


def hf_config(model: ml_collections.ConfigDict) -> dict:
  """The Hugging Face config.json for a resolved `config.model` (see `resolved`), or a ConfigError
  naming the fields that layout cannot hold."""
  kind = {'decoder_only': 'gpt2', 'encoder_only': 'bert', 'encoder_decoder': 't5'}[model.family]
  back = {v: k for k, v in _HF_ACTIVATIONS.items() if k != 'gelu_pytorch_tanh'}
  if kind == 'gpt2':
    config = dict(model_type='gpt2', architectures=['GPT2LMHeadModel'], vocab_size=model.vocab_size,
                  n_embd=model.d_model, n_head=model.num_heads, n_inner=model.mlp_dim, n_layer=model.num_decoder_layers,
                  activation_function=back.get(model.activation, model.activation),
                  layer_norm_epsilon=model.norm_epsilon, n_positions=model.max_length, resid_pdrop=model.dropout_rate,
                  embd_pdrop=model.dropout_rate, attn_pdrop=model.attention_dropout_rate, tie_word_embeddings=True)
  elif kind == 'bert':
    config = dict(model_type='bert', vocab_size=model.vocab_size, hidden_size=model.d_model,
                  num_attention_heads=model.num_heads, intermediate_size=model.mlp_dim,
                  num_hidden_layers=model.num_encoder_layers, hidden_act=back.get(model.activation, model.activation),
                  layer_norm_eps=model.norm_epsilon, max_position_embeddings=model.max_length, type_vocab_size=2,
                  hidden_dropout_prob=model.dropout_rate, attention_probs_dropout_prob=model.attention_dropout_rate,
                  architectures=['BertForSequenceClassification' if model.head == 'classifier' else 'BertForMaskedLM'])
    if model.head == 'classifier':
      config['id2label'] = {str(i): f'LABEL_{i}' for i in range(model.num_classes)}
      config['label2id'] = {f'LABEL_{i}': i for i in range(model.num_classes)}
  else:
    config = dict(model_type='t5', architectures=['T5ForConditionalGeneration'], vocab_size=model.vocab_size,
                  d_model=model.d_model, num_heads=model.num_heads, d_kv=model.head_dim, d_ff=model.mlp_dim,
                  num_layers=model.num_encoder_layers, num_decoder_layers=model.num_decoder_layers,
                  feed_forward_proj=model.activation, layer_norm_epsilon=model.norm_epsilon,
                  relative_attention_num_buckets=model.relative_buckets,
                  relative_attention_max_distance=model.relative_max_distance,
                  tie_word_embeddings=model.tie_embeddings, scale_decoder_outputs=model.scale_logits,
                  dropout_rate=model.dropout_rate,
                  decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
  try:
    reference = resolved(model_config(config), model.vocab_size)
  except ConfigError as e:
    raise ConfigError(f'this model cannot be written as a Hugging Face {kind} checkpoint: {e}') from None
  ignore = _FREE | _UNUSED[model.family] | ({'num_classes', 'pooling'} if model.head != 'classifier' else set())
  differing = sorted(k for k, v in reference.items() if k not in ignore and model[k] != v)
  if differing:
    listed = ', '.join(f'model.{k}={model[k]!r} ({kind} needs {reference[k]!r})' for k in differing)
    raise ConfigError(f'this model cannot be written as a Hugging Face {kind} checkpoint: {listed}')
  return config


# ----------------------------------------------------------------------------- tensor rules


def rules(model: ml_collections.ConfigDict) -> list[Rule]:
  heads = model.num_heads
  if model.family == 'decoder_only':
    return _gpt2_rules(model, heads)
  if model.family == 'encoder_only':
    return _bert_rules(model, heads)
  return _t5_rules(model, heads)


def _gpt2_rules(model, heads) -> list[Rule]:
  out = [_same(('token_embed', 'embedding'), 'transformer.wte.weight'),
         _same(('decoder', 'position_embed', 'embedding'), 'transformer.wpe.weight')]
  out += _norm(('decoder', 'final_norm'), 'transformer.ln_f')
  for i in range(model.num_decoder_layers):
    ours, theirs = ('decoder', f'layers_{i}'), f'transformer.h.{i}'
    attention = ours + ('self_attention',)
    names = ('query', 'key', 'value')

    def split(x, names=names):  # Conv1D [embed, 3 * embed] -> three [embed, heads, head_dim]
      return [part.reshape(part.shape[0], heads, -1) for part in np.split(x, 3, axis=-1)]
    out.append(Rule(tuple(attention + (n,) for n in names), f'{theirs}.attn.c_attn.weight', split,
                    lambda xs: np.concatenate([x.reshape(x.shape[0], -1) for x in xs], axis=-1)))
    out.append(Rule(tuple(attention + (f'{n}_bias',) for n in names), f'{theirs}.attn.c_attn.bias',
                    lambda x: [p.reshape(heads, -1) for p in np.split(x, 3)],
                    lambda xs: np.concatenate([x.reshape(-1) for x in xs])))
    out += [_heads_out(attention + ('out',), f'{theirs}.attn.c_proj.weight', heads, transpose=False),
            _same(attention + ('out_bias',), f'{theirs}.attn.c_proj.bias'),
            _same(ours + ('mlp', 'wi', 'kernel'), f'{theirs}.mlp.c_fc.weight'),
            _same(ours + ('mlp', 'wi', 'bias'), f'{theirs}.mlp.c_fc.bias'),
            _same(ours + ('mlp', 'wo', 'kernel'), f'{theirs}.mlp.c_proj.weight'),
            _same(ours + ('mlp', 'wo', 'bias'), f'{theirs}.mlp.c_proj.bias')]
    out += _norm(ours + ('self_attention_norm',), f'{theirs}.ln_1') + _norm(ours + ('mlp_norm',), f'{theirs}.ln_2')
  return out


def _bert_rules(model, heads) -> list[Rule]:
  out = [_same(('token_embed', 'embedding'), 'bert.embeddings.word_embeddings.weight'),
         _same(('encoder', 'position_embed', 'embedding'), 'bert.embeddings.position_embeddings.weight')]
  out += _norm(('encoder', 'embed_norm'), 'bert.embeddings.LayerNorm')
  for i in range(model.num_encoder_layers):
    ours, theirs = ('encoder', f'layers_{i}'), f'bert.encoder.layer.{i}'
    attention = ours + ('self_attention',)
    for name in ('query', 'key', 'value'):
      out += [_heads_in(attention + (name,), f'{theirs}.attention.self.{name}.weight', heads),
              _bias_heads(attention + (f'{name}_bias',), f'{theirs}.attention.self.{name}.bias', heads)]
    out += [_heads_out(attention + ('out',), f'{theirs}.attention.output.dense.weight', heads),
            _same(attention + ('out_bias',), f'{theirs}.attention.output.dense.bias'),
            _linear(ours + ('mlp', 'wi', 'kernel'), f'{theirs}.intermediate.dense.weight'),
            _same(ours + ('mlp', 'wi', 'bias'), f'{theirs}.intermediate.dense.bias'),
            _linear(ours + ('mlp', 'wo', 'kernel'), f'{theirs}.output.dense.weight'),
            _same(ours + ('mlp', 'wo', 'bias'), f'{theirs}.output.dense.bias')]
    out += _norm(ours + ('self_attention_norm',), f'{theirs}.attention.output.LayerNorm')
    out += _norm(ours + ('mlp_norm',), f'{theirs}.output.LayerNorm')
  if model.head == 'classifier':
    out += [_linear(('pooler', 'kernel'), 'bert.pooler.dense.weight'), _same(('pooler', 'bias'), 'bert.pooler.dense.bias'),
            _linear(('classifier', 'kernel'), 'classifier.weight'), _same(('classifier', 'bias'), 'classifier.bias')]
  else:
    out += [_linear(('mlm_transform', 'kernel'), 'cls.predictions.transform.dense.weight'),
            _same(('mlm_transform', 'bias'), 'cls.predictions.transform.dense.bias'),
            _same(('mlm_bias',), 'cls.predictions.bias')]
    out += _norm(('mlm_norm',), 'cls.predictions.transform.LayerNorm')
  return out


def _t5_rules(model, heads) -> list[Rule]:
  out = [_same(('token_embed', 'embedding'), 'shared.weight')]
  if not model.tie_embeddings:
    out.append(_linear(('lm_head', 'logits', 'kernel'), 'lm_head.weight'))
  for stack, count in (('encoder', model.num_encoder_layers), ('decoder', model.num_decoder_layers)):
    out.append(_same((stack, 'relative_bias', 'rel_embedding'),
                     f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight'))
    out += _norm((stack, 'final_norm'), f'{stack}.final_layer_norm', with_bias=False)
    for i in range(count):
      ours, theirs = (stack, f'layers_{i}'), f'{stack}.block.{i}.layer'
      sublayers = [('self_attention', 'SelfAttention')]
      if stack == 'decoder':
        sublayers.append(('cross_attention', 'EncDecAttention'))
      for index, (name, hf_name) in enumerate(sublayers):
        for ours_name, theirs_name in (('query', 'q'), ('key', 'k'), ('value', 'v')):
          out.append(_heads_in(ours + (name, ours_name), f'{theirs}.{index}.{hf_name}.{theirs_name}.weight', heads))
        out.append(_heads_out(ours + (name, 'out'), f'{theirs}.{index}.{hf_name}.o.weight', heads))
        out += _norm(ours + (f'{name}_norm',), f'{theirs}.{index}.layer_norm', with_bias=False)
      mlp = f'{theirs}.{len(sublayers)}'
      wi = ('wi_0', 'wi_1') if model.activation == 'gated-gelu' else ('wi',)
      out += [_linear(ours + ('mlp', w, 'kernel'), f'{mlp}.DenseReluDense.{w}.weight') for w in wi]
      out.append(_linear(ours + ('mlp', 'wo', 'kernel'), f'{mlp}.DenseReluDense.wo.weight'))
      out += _norm(ours + ('mlp_norm',), f'{mlp}.layer_norm', with_bias=False)
  return out


# Tensors that carry nothing the model here needs: aliases of shared weights, buffers, unused heads.
_IGNORED = ('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight', 'lm_head.weight', '.attn.bias',
            '.attn.masked_bias', 'bert.embeddings.position_ids', 'cls.predictions.decoder.weight',
            'cls.predictions.decoder.bias', 'cls.seq_relationship', 'bert.pooler.')


def _prefix(tensors: dict[str, np.ndarray], model: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """Names as in the full LM checkpoints (`GPT2Model` / `BertModel` saved alone lack the prefix)."""
  prefix = {'decoder_only': 'transformer.', 'encoder_only': 'bert.'}.get(model.family)
  if prefix and not any(k.startswith(prefix) for k in tensors):
    return {prefix + k: v for k, v in tensors.items()}
  return tensors


def params_from_hf(model: ml_collections.ConfigDict, tensors: dict[str, np.ndarray]) -> Params:
  """Nested parameters from Hugging Face tensors; refuses missing, unexpected and mis-shaped tensors."""
  tensors = dict(_prefix(tensors, model))
  if model.family == 'encoder_only':
    # Inputs here are all of token type 0: its embedding folds into every position's.
    token_types = tensors.pop('bert.embeddings.token_type_embeddings.weight', None)
    if token_types is not None:
      tensors['bert.embeddings.position_embeddings.weight'] = (
          tensors['bert.embeddings.position_embeddings.weight'] + token_types[0])
  if model.family == 'encoder_decoder':
    for alias in ('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight'):
      if alias in tensors and not np.array_equal(tensors[alias], tensors.get('shared.weight')):
        raise ConfigError(f'{alias} differs from shared.weight; only T5 models whose encoder and decoder share '
                          'their input embedding are supported')
  params: Params = {}
  used = set()
  for rule in rules(model):
    if rule.theirs not in tensors:
      raise ConfigError(f'the checkpoint has no tensor {rule.theirs!r}, which a {model.family} with this '
                        'config needs')
    for path, value in zip(rule.ours, rule.to_ours(np.asarray(tensors[rule.theirs], np.float32))):
      node = params
      for key in path[:-1]:
        node = node.setdefault(key, {})
      node[path[-1]] = value
    used.add(rule.theirs)
  if model.family == 'encoder_decoder' and not model.tie_embeddings:
    used.add('lm_head.weight')
  extra = [k for k in tensors if k not in used and not any(i in k for i in _IGNORED)]
  if extra:
    raise ConfigError(f'the checkpoint has tensors this model does not use: {", ".join(sorted(extra)[:5])}'
                      f'{" ..." if len(extra) > 5 else ""}; is config.json the one it was saved with?')
  return models.stack_layers(params) if model.get('scan_layers') else params


def params_to_hf(model: ml_collections.ConfigDict, params: Params) -> dict[str, np.ndarray]:
  """Hugging Face tensors of `params`; LoRA adapters are merged into their kernels (the same function)."""
  if model.get('lora_rank'):
    params = models.merge_lora(params, model.lora_alpha / model.lora_rank)
  if model.get('scan_layers'):
    params = models.unstack_layers(params)
  tensors = {}
  for rule in rules(model):
    values = []
    for path in rule.ours:
      node = params
      for key in path:
        node = node[key]
      values.append(np.asarray(node, np.float32))
    tensors[rule.theirs] = np.ascontiguousarray(rule.to_theirs(values))
  if model.family == 'encoder_only':
    tensors['bert.embeddings.token_type_embeddings.weight'] = np.zeros((2, model.d_model), np.float32)
    if model.head == 'mlm':
      tensors['cls.predictions.decoder.bias'] = tensors['cls.predictions.bias']
  return tensors


def check_shapes(expected: Any, params: Params) -> None:
  """Refuses imported parameters whose names or shapes differ from the model's (by name, both shapes)."""
  import jax
  got = {jax.tree_util.keystr(p): np.shape(v) for p, v in jax.tree_util.tree_leaves_with_path(params)}
  for path, leaf in jax.tree_util.tree_leaves_with_path(expected):
    name = jax.tree_util.keystr(path)
    if name not in got:
      raise ConfigError(f'imported parameters lack {name}')
    if tuple(got[name]) != tuple(leaf.shape):
      raise ConfigError(f'imported parameter {name} has shape {tuple(got[name])}, the model expects {tuple(leaf.shape)}')


# ----------------------------------------------------------------------------- files


def read(directory: str) -> tuple[dict, dict[str, np.ndarray]]:
  """config.json and the tensors of a Hugging Face checkpoint directory (safetensors without torch)."""
  config_path = os.path.join(directory, 'config.json')
  if not os.path.exists(config_path):
    raise ConfigError(f'{directory} has no config.json; expected a Hugging Face checkpoint directory')
  with open(config_path) as f:
    config = json.load(f)
  safetensors_path = os.path.join(directory, 'model.safetensors')
  torch_path = os.path.join(directory, 'pytorch_model.bin')
  if os.path.exists(safetensors_path):
    from safetensors.numpy import load_file
    return config, load_file(safetensors_path)
  if os.path.exists(torch_path):
    try:
      import torch
    except ImportError:
      raise ConfigError(f'{torch_path} needs torch to read; install it, or convert the file to safetensors') from None
    state = torch.load(torch_path, map_location='cpu', weights_only=True)
    return config, {k: v.float().numpy() for k, v in state.items()}
  raise ConfigError(f'{directory} has neither model.safetensors nor pytorch_model.bin')


def write(directory: str, config: dict, tensors: dict[str, np.ndarray]) -> None:
  from safetensors.numpy import save_file
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, 'config.json'), 'w') as f:
    json.dump(config, f, indent=2)
  save_file(tensors, os.path.join(directory, 'model.safetensors'), metadata={'format': 'pt'})
