"""Starting from another experiment: full and partial restores, frozen parameters, LoRA adapters."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import classifier_from_encoder
from research import checkpoints, decoding, finetune, hf, layers, metrics as metrics_lib, models, optim, quantize
from research import train
from research.analysis import load_experiment
from research.config import ConfigError
from tests.conftest import random_batch


def flat(params) -> dict[str, np.ndarray]:
  return {checkpoints.path_name(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(params)}


def same_bits(a, b) -> bool:
  return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.fixture(scope='module')
def source(trained_workdir):
  """The tiny quickstart run (12 steps): its workdir and its final parameters."""
  workdir = str(trained_workdir[0])
  return workdir, flat(load_experiment(workdir).params)


def test_full_init_restores_every_parameter_onto_another_mesh(source, config):
  """A 1-device run's parameters, read onto an fsdp=4 x tensor=2 mesh by name."""
  workdir, params = source
  config.mesh.update(data=1, fsdp=4, tensor=2)
  config.init.workdir = workdir
  exp = train.setup(config)
  restored = finetune.restore(config.init, exp.abstract_state.params)
  kernel = restored['encoder']['layers_0']['mlp']['wi']['kernel']
  assert kernel.sharding == exp.state_shardings.params['encoder']['layers_0']['mlp']['wi']['kernel']
  assert kernel.sharding.spec == jax.sharding.PartitionSpec('fsdp', 'tensor')
  restored = flat(restored)
  assert sorted(restored) == sorted(params)
  for name, value in params.items():
    assert same_bits(restored[name], value), name


def classifier_config(data_dir: str, workdir: str):
  """configs/classifier_from_encoder.py at the tiny source's sizes."""
  config = classifier_from_encoder.get_config()
  config.data.data_dir = data_dir
  config.model.update(d_model=32, num_heads=2, mlp_dim=64)
  config.mesh.update(data=1, fsdp=1, tensor=1)
  config.init.workdir = workdir
  return config


def test_encoder_only_classifier_from_the_encoder_decoder(source, data_dir):
  """Only the embeddings and encoder come from the seq2seq run (nothing of its decoder); the new pooler and
  classifier keep a fresh initialisation with the run's seed."""
  workdir, params = source
  config = classifier_config(data_dir, workdir)
  tokenizer = train.source_tokenizer(config)
  config.init.workdir = ''
  fresh_exp = train.setup(config, jax.devices()[:1], tokenizer=tokenizer)
  fresh = train.init_state(fresh_exp).params
  config.init.workdir = workdir
  started, fresh = flat(finetune.restore(config.init, fresh)), flat(fresh)
  restored = {n for n in params if n.startswith(('token_embed/', 'encoder/'))}
  assert set(started) - restored == {'pooler/kernel', 'pooler/bias', 'classifier/kernel', 'classifier/bias'}
  for name in started:
    assert same_bits(started[name], params[name] if name in restored else fresh[name]), name
    assert name not in restored or not np.array_equal(started[name], fresh[name]), name
  config.init.include = ()  # every parameter of the source: its decoder has nowhere to go
  with pytest.raises(ConfigError, match='has parameter decoder/.*, which this model lacks.*list the ones to restore'):
    finetune.restore(config.init, fresh_exp.abstract_state.params)


def test_frozen_parameters_get_no_gradient_update_decay_or_optimizer_state(config):
  params = {'encoder': {'kernel': np.full((3, 4), 0.5, np.float32), 'scale': np.ones(4, np.float32)},
            'head': {'kernel': np.full((4, 2), 0.5, np.float32)}}
  config.train.update(trainable=('encoder/.*', 'head/.*'), freeze=('encoder/kernel',))
  mask = finetune.trainable_mask(params, config.train)
  assert mask == {'encoder': {'kernel': False, 'scale': True}, 'head': {'kernel': True}}
  assert finetune.count(params, mask) == 12 and finetune.count(params) == 24
  optimizer = finetune.optimizer_for(optim.make(config.optimizer, 10), mask)  # AdamW, weight decay 0.01
  loss = lambda p: sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(finetune.stop_frozen(p, mask)))  # noqa: E731
  assert not np.any(jax.grad(loss)(params)['encoder']['kernel'])
  state = optimizer.init(params)
  assert not any(name.endswith('encoder/kernel') for name in finetune.names(state))
  assert any(name.endswith('encoder/scale') for name in finetune.names(state))
  trained = params
  for _ in range(3):
    updates, state = optimizer.update(jax.grad(loss)(trained), state, trained)
    trained = optax.apply_updates(trained, updates)
  trained, params = flat(trained), flat(params)
  for name in params:
    assert same_bits(trained[name], params[name]) == (name == 'encoder/kernel'), name


def adapter_size(name: str, shape: tuple, rank: int) -> int:
  """rank x (inputs + outputs) for a kernel `lora_config` adapts (query, value, out, wi, wo), else 0."""
  module, leaf = name.split('/')[-2:]
  if module.endswith('attention') and leaf in ('query', 'value', 'out'):
    inputs = 2 if leaf == 'out' else 1  # out: [heads, head_dim] -> embed
  elif module in ('wi', 'wo') and leaf == 'kernel':
    inputs = 1
  else:
    return 0
  return rank * (int(np.prod(shape[:inputs])) + int(np.prod(shape[inputs:])))


def test_lora_run_from_a_workdir_trains_only_the_adapters(source, config, tmp_path, capsys):
  """The run starts from the source's parameters, changes only adapters (no optimizer state for the rest), prints
  and records the trainable count, and computes what its merged parameters compute."""
  workdir, base = source
  config.mesh.update(data=1, fsdp=1, tensor=1)
  config.init.workdir = workdir
  config.model.update(lora_rank=2, lora_targets=('query', 'value', 'out', 'wi', 'wo'))
  config.train.update(trainable=('.*_lora_[ab]',), num_steps=2, eval_every=2, checkpoint_every=2)
  config.optimizer.warmup_steps = 1
  config.eval.num_examples = 16
  train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
  loaded = load_experiment(str(tmp_path))
  trained = flat(loaded.params)
  adapters = {n for n in trained if '_lora_' in n}
  assert set(trained) - adapters == set(base)
  for name, value in base.items():
    assert same_bits(trained[name], value), name
  assert all(np.any(trained[n]) for n in adapters if n.endswith('_lora_b'))  # zeros at the start
  saved_state = checkpoints.Checkpointer(str(tmp_path / 'checkpoints')).manager.item_metadata(2)['state']
  moments = [n for n in finetune.names(saved_state['opt_state']) if '/mu/' in n]
  assert sorted(n.split('/mu/')[1] for n in moments) == sorted(adapters)

  expected = sum(adapter_size(name, kernel.shape, rank=2) for name, kernel in base.items())
  assert expected == sum(trained[n].size for n in adapters) > 0
  total = expected + sum(v.size for v in base.values())
  assert metrics_lib.read_metrics(str(tmp_path))[0] == {'step': 0, 'params/total': total, 'params/trainable': expected}
  assert f'{expected:,} trainable of {total:,} parameters' in capsys.readouterr().out

  lora = loaded.model.config
  batch = random_batch(loaded.objective.layout, size=3)
  apply_base = jax.jit(models.EncoderDecoder(dataclasses.replace(lora, lora_rank=0)).apply)
  lora_logits = np.asarray(jax.jit(loaded.model.apply)({'params': loaded.params}, batch))
  merged = models.merge_lora(jax.tree.map(np.asarray, loaded.params), lora.lora_alpha / lora.lora_rank)
  np.testing.assert_allclose(apply_base({'params': merged}, batch), lora_logits, atol=1e-5, rtol=1e-5)
  base_logits = np.asarray(apply_base({'params': load_experiment(workdir).params}, batch))
  assert np.abs(lora_logits - base_logits).max() > 1e-3


def test_fresh_adapters_change_nothing():
  """B = 0 at initialisation (A random): an adapted layer computes what it computes without its adapters."""
  x = np.random.default_rng(0).normal(size=(2, 5, 16)).astype(np.float32)
  lora = layers.LoRA(rank=2, alpha=8.0, targets=('wi', 'wo'))
  adapted = layers.Mlp(32, lora=lora)
  params = nn.unbox(adapted.init(jax.random.PRNGKey(0), x, True))['params']
  assert sorted(params) == ['wi', 'wi_lora_a', 'wi_lora_b', 'wo', 'wo_lora_a', 'wo_lora_b']
  assert all(np.any(params[f'{n}_lora_a']) and not np.any(params[f'{n}_lora_b']) for n in ('wi', 'wo'))
  without = models.merge_lora(params, scale=0.0)  # the adapters dropped
  np.testing.assert_array_equal(adapted.apply({'params': params}, x, True),
                                layers.Mlp(32).apply({'params': without}, x, True))


def test_lora_scanned_decoded_and_quantized_equals_unscanned():
  """Random (non-zero) adapters on every projection: the model computes what its merged kernels compute, scan_layers
  gives the unscanned logits, cached greedy decoding the recomputed one; int8 quantization leaves adapters in float."""
  fields = dict(vocab_size=24, d_model=32, num_heads=4, head_dim=8, mlp_dim=48, dropout_rate=0.0, max_length=32,
                lora_rank=3, lora_targets=('query', 'key', 'value', 'out', 'wi', 'wo'))
  unscanned = models.EncoderDecoder(models.ModelConfig(**fields))
  scanned = models.EncoderDecoder(models.ModelConfig(**fields, scan_layers=True))
  tokens = np.random.default_rng(0).integers(3, 24, (2, 6)).astype(np.int32)
  batch = {f'{s}_{k}': v for s in ('encoder', 'decoder') for k, v in (
      ('input_tokens', tokens), ('segment_ids', np.ones_like(tokens)),
      ('positions', np.broadcast_to(np.arange(6), (2, 6)).astype(np.int32)))}
  boxed = jax.eval_shape(unscanned.init, jax.random.PRNGKey(0), batch)['params']
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda x: rng.normal(0, 0.3, x.shape).astype(np.float32), nn.unbox(boxed))
  logits = np.asarray(jax.jit(unscanned.apply)({'params': params}, batch))
  apply_base = jax.jit(models.EncoderDecoder(dataclasses.replace(unscanned.config, lora_rank=0)).apply)
  merged = models.merge_lora(params, scale=16.0 / 3)
  np.testing.assert_allclose(apply_base({'params': merged}, batch), logits, atol=1e-5, rtol=1e-5)
  without_adapters = models.merge_lora(params, scale=0.0)
  assert np.abs(logits - np.asarray(apply_base({'params': without_adapters}, batch))).max() > 1e-2
  stacked = models.stack_layers(params)
  np.testing.assert_allclose(jax.jit(scanned.apply)({'params': stacked}, batch), logits, atol=1e-5, rtol=1e-5)

  prompts = decoding.encoder_prompts([[5, 6, 7], [9, 3]], 4)
  generate = lambda options: jax.device_get(jax.jit(functools.partial(  # noqa: E731
      decoding.generate, scanned, options))(stacked, prompts, jax.random.PRNGKey(0)).tokens)
  options = decoding.Options(max_new_tokens=5)
  np.testing.assert_array_equal(generate(options), generate(dataclasses.replace(options, use_cache=False)))

  quantized = jax.tree_util.tree_leaves_with_path(quantize.quantize(params, nn.get_partition_spec(boxed)),
                                                  is_leaf=lambda x: isinstance(x, quantize.Int8))
  int8 = {checkpoints.path_name(p) for p, x in quantized if isinstance(x, quantize.Int8)}
  assert {'encoder/layers_0/self_attention/query', 'decoder/layers_1/mlp/wo/kernel'} <= int8
  assert not any('_lora_' in n for n in int8)


def test_hugging_face_export_merges_the_adapters():
  """A GPT-2 with adapters exports as a plain GPT-2 whose kernels hold them: imported back, the same logits."""
  model = hf.model_config(dict(model_type='gpt2', n_embd=32, n_head=4, n_layer=2, vocab_size=50, n_positions=16,
                               activation_function='gelu_new', layer_norm_epsilon=1e-5))
  model.update(lora_rank=2, lora_alpha=4.0, lora_targets=('query', 'value', 'wi'))
  adapted = models.build(model, 50)
  batch = {'decoder_input_tokens': np.arange(2, 16, dtype=np.int32).reshape(2, 7),
           'decoder_segment_ids': np.ones((2, 7), np.int32),
           'decoder_positions': np.broadcast_to(np.arange(7), (2, 7)).astype(np.int32)}
  shapes = nn.unbox(jax.eval_shape(adapted.init, jax.random.PRNGKey(0), batch))['params']
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: rng.normal(0, 0.3, x.shape).astype(np.float32), shapes)
  full = hf.resolved(model, 50)
  exported = hf.hf_config(full)
  plain = hf.model_config(exported)
  imported = hf.params_from_hf(plain, hf.params_to_hf(full, params))
  assert not any('_lora_' in n for n in flat(imported))
  np.testing.assert_allclose(models.build(plain, 50).apply({'params': imported}, batch),
                             adapted.apply({'params': params}, batch), atol=1e-5, rtol=1e-5)


def test_bad_inputs_are_refused_clearly(source, config, tmp_path):
  workdir, _ = source
  config.mesh.update(data=1, fsdp=1, tensor=1)
  config.init.workdir = str(tmp_path / 'nowhere')
  with pytest.raises(ConfigError, match='init.workdir=.*nowhere does not exist'):
    train.setup(config, jax.devices()[:1])
  config.init.workdir = workdir
  config.data.tokenizer = 'bytes'
  with pytest.raises(ConfigError, match="data.tokenizer='bytes', but init.workdir=.* 'sentencepiece'"):
    train.setup(config, jax.devices()[:1])
  config.data.tokenizer = 'sentencepiece'
  config.train.freeze = ('encoder/layer_0/.*',)
  message = r"train.freeze: 'encoder/layer_0/\.\*' matches no parameter .*encoder/layers_0"
  with pytest.raises(ConfigError, match=message):
    train.setup(config, jax.devices()[:1])
  config.train.update(freeze=(), trainable=('.*_lora_[ab]',))
  with pytest.raises(ConfigError, match=r"train.trainable: '\.\*_lora_\[ab\]' matches no parameter"):
    train.setup(config, jax.devices()[:1])
  config.train.trainable = ('.*',)
  config.model.mlp_dim = 48
  params = train.setup(config, jax.devices()[:1]).abstract_state.params  # refused before anything is read
  for init, message in [
      (dict(include=('decoder/.*', 'encoder/block_.*')),
       r"init.include: 'encoder/block_\.\*' matches no parameter of init.workdir=.*; names there include "),
      (dict(include=('encoder/layers_0/mlp/wi/kernel',)),
       r'parameter encoder/layers_0/mlp/wi/kernel has shape \(32, 64\) there but \(32, 48\) in this model'),
      (dict(include=()), r'parameter decoder/layers_0/mlp/wi/kernel has shape'),
      (dict(step=7), r'init.step=7: .* has checkpoints at steps \[6, 12\]')]:
    config.init.update({**dict(include=(), step=0), **init})
    with pytest.raises(ConfigError, match=message):
      finetune.restore(config.init, params)


def test_lora_ablation_config_trains_what_its_docstring_says():
  from configs.ablations import quickstart_lora
  config = quickstart_lora.get_config()
  model = models.build(config.model, config.data.vocab_size)
  batch = {k: np.ones((1, 4), np.int32) for k in ('encoder_input_tokens', 'encoder_segment_ids', 'encoder_positions',
                                                  'decoder_input_tokens', 'decoder_segment_ids', 'decoder_positions')}
  params = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), batch))['params']
  mask = finetune.trainable_mask(params, config.train)
  assert round(100 * finetune.count(params, mask) / finetune.count(params)) == 9  # "about 9% of the parameters"
  assert all(trains == ('_lora_' in name) for name, trains in zip(finetune.names(params), jax.tree.leaves(mask)))


@pytest.mark.parametrize('fields, message', [
    (dict(lora_rank=-1), 'model.lora_rank=-1 must be >= 0'),
    (dict(lora_rank=4, lora_targets=()), 'model.lora_rank=4 needs model.lora_targets'),
    (dict(lora_rank=4, lora_targets=('query', 'wi_0')), "model.lora_targets entry='wi_0' is not one of"),
    (dict(lora_rank=4, activation='swiglu', lora_targets=('wi',)), "model.lora_targets entry='wi' is not one of")])
def test_bad_lora_settings_are_refused(config, fields, message):
  config.model.update(fields)
  with pytest.raises(ConfigError, match=message):
    models.build(config.model, 100)
