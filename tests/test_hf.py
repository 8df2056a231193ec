"""Hugging Face interop: logits parity with `transformers` (PyTorch) and exact export -> import round trips."""

import json
import os

import jax
import numpy as np
import pytest

from research import hf, models
from research.config import ConfigError

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

GPT2 = [dict(n_embd=32, n_head=4, n_layer=2, vocab_size=97, n_positions=40),
        dict(n_embd=24, n_head=2, n_layer=3, vocab_size=61, n_positions=16, activation_function='gelu', n_inner=40)]
BERT = [dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=48, vocab_size=90,
             max_position_embeddings=40),
        dict(hidden_size=24, num_attention_heads=3, num_hidden_layers=1, intermediate_size=64, vocab_size=70,
             max_position_embeddings=24, hidden_act='relu')]
T5 = [dict(d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, vocab_size=80, feed_forward_proj='relu',
           relative_attention_num_buckets=32, tie_word_embeddings=True),  # T5 v1.0
      dict(d_model=24, d_kv=16, d_ff=40, num_layers=2, num_decoder_layers=3, num_heads=2, vocab_size=64,
           feed_forward_proj='gated-gelu', relative_attention_num_buckets=8, relative_attention_max_distance=20,
           tie_word_embeddings=False)]  # T5 v1.1


def _hf_model(kind, settings, classifier=False):
  torch.manual_seed(0)
  if kind == 'gpt2':
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**settings)).eval()
  if kind == 'bert':
    config = transformers.BertConfig(**settings, num_labels=3)
    cls = transformers.BertForSequenceClassification if classifier else transformers.BertForMaskedLM
    return cls(config).eval()
  tie = settings.pop('tie_word_embeddings', True)
  config = transformers.T5Config(**settings)
  config.tie_word_embeddings = tie  # transformers 5 ignores this as a constructor argument
  settings['tie_word_embeddings'] = tie
  model = transformers.T5ForConditionalGeneration(config).eval()
  model.encoder.embed_tokens = model.decoder.embed_tokens = model.shared  # as in every released T5
  return model


def _randomise(model):
  """Random norms and biases too (the HF initialisation leaves them at 1 and 0)."""
  generator = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for parameter in model.parameters():
      parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))


def _ours(directory):
  hf_config, tensors = hf.read(directory)
  model_config = hf.model_config(hf_config)
  model = models.build(model_config, model_config.vocab_size)
  return model_config, model, hf.params_from_hf(model_config, tensors)


def _tokens(vocab, shape, seed):
  return np.random.default_rng(seed).integers(2, vocab, shape).astype(np.int32)


def _batch(family, inputs, targets):
  def seq(prefix, tokens):
    return {f'{prefix}_input_tokens': tokens, f'{prefix}_segment_ids': np.ones_like(tokens),
            f'{prefix}_positions': np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape).astype(np.int32)}
  if family == 'decoder_only':
    return seq('decoder', inputs)
  if family == 'encoder_only':
    return seq('encoder', inputs)
  return {**seq('encoder', inputs), **seq('decoder', targets)}


@pytest.mark.parametrize('kind, settings, classifier', [('gpt2', s, False) for s in GPT2] + [
    ('bert', s, False) for s in BERT] + [('bert', BERT[0], True)] + [('t5', s, False) for s in T5])
def test_imported_logits_match_transformers(tmp_path, kind, settings, classifier):
  reference = _hf_model(kind, settings, classifier)
  _randomise(reference)
  if kind == 'bert':  # inputs here are all of token type 0; give it a non-zero embedding to fold in
    assert reference.bert.embeddings.token_type_embeddings.weight.abs().sum() > 0
  reference.save_pretrained(tmp_path)
  model_config, model, params = _ours(str(tmp_path))
  vocab = model_config.vocab_size
  inputs, targets = _tokens(vocab, (2, 11), 0), _tokens(vocab, (2, 7), 1)
  ours = np.asarray(model.apply({'params': params}, _batch(model_config.family, inputs, targets)))
  with torch.no_grad():
    if kind == 't5':
      theirs = reference(input_ids=torch.tensor(inputs, dtype=torch.long),
                         decoder_input_ids=torch.tensor(targets, dtype=torch.long)).logits
    else:
      theirs = reference(input_ids=torch.tensor(inputs, dtype=torch.long)).logits
  theirs = theirs.numpy()
  assert ours.shape == theirs.shape
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


@pytest.mark.parametrize('kind, settings, classifier', [('gpt2', GPT2[0], False), ('bert', BERT[0], False),
                                                        ('bert', BERT[1], True), ('t5', T5[0], False),
                                                        ('t5', T5[1], False)])
def test_export_then_import_is_exact(tmp_path, kind, settings, classifier):
  _hf_model(kind, settings, classifier).save_pretrained(tmp_path / 'hf')
  model_config, model, params = _ours(str(tmp_path / 'hf'))
  # Fresh random parameters of this model (not the imported ones), exported and imported back.
  batch = _batch(model_config.family, _tokens(10, (1, 4), 0), _tokens(10, (1, 3), 1))
  fresh = jax.tree.map(np.asarray, model.init(jax.random.PRNGKey(5), batch)['params'])
  fresh = jax.tree.map(lambda x: getattr(x, 'value', x), fresh, is_leaf=lambda x: hasattr(x, 'names'))
  full = hf.resolved(model_config, model_config.vocab_size)
  hf.write(str(tmp_path / 'out'), hf.hf_config(full), hf.params_to_hf(full, fresh))
  _, _, again = _ours(str(tmp_path / 'out'))
  jax.tree.map(np.testing.assert_array_equal, again, fresh)
  # ... and the exported directory loads in transformers, giving the same logits.
  exported = transformers.AutoConfig.from_pretrained(tmp_path / 'out')
  assert exported.model_type == kind


def test_bad_checkpoints_are_refused_by_name(tmp_path):
  _hf_model('gpt2', GPT2[0]).save_pretrained(tmp_path)
  config, tensors = hf.read(str(tmp_path))
  model_config = hf.model_config(config)
  missing = {k: v for k, v in tensors.items() if k != 'transformer.h.1.mlp.c_fc.weight'}
  with pytest.raises(ConfigError, match="no tensor 'transformer.h.1.mlp.c_fc.weight'"):
    hf.params_from_hf(model_config, missing)
  with pytest.raises(ConfigError, match='tensors this model does not use: transformer.h.2.ln_1.weight'):
    hf.params_from_hf(model_config, {**tensors, 'transformer.h.2.ln_1.weight': np.ones(32, np.float32)})
  wrong = dict(tensors)
  wrong['transformer.h.0.mlp.c_fc.weight'] = np.ones((32, 100), np.float32)
  model = models.build(model_config, model_config.vocab_size)
  expected = jax.eval_shape(model.init, jax.random.PRNGKey(0), _batch('decoder_only', np.ones((1, 4), np.int32), None))
  with pytest.raises(ConfigError, match=r"\['decoder'\]\['layers_0'\]\['mlp'\]\['wi'\]\['kernel'\] has shape "
                                        r'\(32, 100\), the model expects \(32, 128\)'):
    hf.check_shapes(jax.tree.map(lambda x: getattr(x, 'value', x), expected['params'],
                                 is_leaf=lambda x: hasattr(x, 'names')), hf.params_from_hf(model_config, wrong))
  with pytest.raises(ConfigError, match="model_type 'llama' is not supported"):
    hf.model_config({**config, 'model_type': 'llama'})
  with pytest.raises(ConfigError, match="activation_function='swish' is not supported"):
    hf.model_config({**config, 'activation_function': 'swish'})
  os.remove(tmp_path / 'model.safetensors')
  with pytest.raises(ConfigError, match='has neither model.safetensors nor pytorch_model.bin'):
    hf.read(str(tmp_path))


def test_models_with_features_hf_lacks_are_not_exported():
  config = hf.model_config(json.loads(json.dumps(transformers.GPT2Config(**GPT2[0]).to_dict())))
  config.position_embedding = 'rotary'
  with pytest.raises(ConfigError, match=r"model.position_embedding='rotary' \(gpt2 needs 'learned'\)"):
    hf.hf_config(hf.resolved(config, config.vocab_size))


def test_import_fine_tune_export_through_workdirs(tmp_path, data_dir):
  """HF GPT-2 -> workdir (step 0) -> 3 training steps here -> HF layout -> transformers gives our logits."""
  import subprocess
  import sys

  from research import config as config_lib, convert, metrics as metrics_lib, train
  from research.analysis import load_experiment
  from tests.conftest import REPO
  reference = _hf_model('gpt2', dict(n_embd=32, n_head=4, n_layer=2, vocab_size=300, n_positions=64))
  reference.save_pretrained(tmp_path / 'hf')
  workdir = tmp_path / 'workdir'
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  env.pop('XLA_FLAGS', None)
  result = subprocess.run([sys.executable, f'{REPO}/experiments/convert_checkpoint.py', f'--from_hf={tmp_path / "hf"}',
                           f'--workdir={workdir}'], env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  imported = load_experiment(str(workdir))
  assert imported.step == 0 and imported.config.model.family == 'decoder_only'
  np.testing.assert_array_equal(imported.params['decoder']['layers_1']['mlp']['wo']['kernel'],
                                reference.transformer.h[1].mlp.c_proj.weight.detach().numpy())

  config = config_lib.load_config_file(str(workdir / 'config.py'))
  config.data.data_dir = data_dir
  config.train.update(num_steps=3, log_every=1, eval_every=3, checkpoint_every=3, batch_size=8)
  config.optimizer.warmup_steps = 1
  config.eval.update(batch_size=8, num_examples=8)
  (workdir / 'config.json').write_text(config_lib.to_json(config))  # the documented way to change it
  train.train_and_evaluate(config, str(workdir), devices=jax.devices()[:1])
  assert [r['step'] for r in metrics_lib.read_metrics(str(workdir)) if 'train/loss' in r] == [1, 2, 3]

  convert.export_hf(str(workdir), str(tmp_path / 'exported'))
  exported = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / 'exported').eval()
  trained = load_experiment(str(workdir))
  tokens = _tokens(300, (2, 9), 3)
  ours = np.asarray(trained.model.apply({'params': trained.params}, _batch('decoder_only', tokens, None)))
  with torch.no_grad():
    theirs = exported(input_ids=torch.tensor(tokens, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
  assert not np.allclose(trained.params['token_embed']['embedding'], imported.params['token_embed']['embedding'])
