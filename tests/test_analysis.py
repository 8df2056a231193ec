"""research/analysis.py and experiments/analyze.py: attention weights against a numpy recomputation and identities,
parameter statistics and checkpoint comparison against numpy, and the walkthrough script end to end."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import jax
import matplotlib.image
import numpy as np
import pytest

from research import analysis, config as config_lib, models, plots, train
from research.config import ConfigError
from research.data.tokenizer import EOS_ID
from tests.conftest import REPO, tiny_config

INPUTS, TARGETS = ['three hundred and twelve', 'five'], ['312', '5']


def fresh(config, devices=None) -> analysis.LoadedExperiment:
  """An experiment as `load_experiment` returns it, with random parameters (numpy: no initialisation to compile)."""
  exp = train.setup(config, devices)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: rng.normal(0.0, 0.5, x.shape).astype(x.dtype), exp.abstract_state.params)
  return analysis.LoadedExperiment(config, exp.model, params, [], exp.tokenizer, 0, exp.objective, exp)


def softmax(logits: np.ndarray) -> np.ndarray:
  e = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


@pytest.fixture(scope='module')
def seq2seq(data_dir):
  """The tiny quickstart model (2+2 layers, 2 heads), on a mesh of all 8 devices: two texts fill 8 rows."""
  return fresh(tiny_config(data_dir))


def test_attention_rows_are_distributions_over_real_earlier_keys(seq2seq):
  attention = analysis.attention_weights(seq2seq, INPUTS, TARGETS)
  assert list(attention.weights) == ['encoder/layers_0/self_attention', 'encoder/layers_1/self_attention',
                                     'decoder/layers_0/self_attention', 'decoder/layers_0/cross_attention',
                                     'decoder/layers_1/self_attention', 'decoder/layers_1/cross_attention']
  tokenizer = seq2seq.tokenizer
  assert attention.tokens['encoder'][1] == [analysis.token_label(tokenizer, t)
                                            for t in tokenizer.encode('five') + [EOS_ID]]
  assert attention.tokens['decoder'][1][0] == '<s>'  # the decoder reads the start token, then the target
  assert len(attention.tokens['decoder'][0]) == len(tokenizer.encode('312')) + 1
  for name, weights in attention.weights.items():
    assert weights.shape[:2] == (2, 2)  # the texts (not the mesh's padding rows), num_heads
    for index in range(2):
      real, queries, keys = attention.example(name, index)
      np.testing.assert_allclose(real.sum(axis=-1), 1.0, atol=1e-5)
      assert np.all(weights[index, :, :len(queries), len(keys):] == 0)  # padding keys
      if name.endswith('/self_attention') and name.startswith('decoder'):
        earlier = np.tril(np.ones(real.shape[1:], bool))  # causal
        assert np.all(real[:, ~earlier] == 0) and np.all(real[:, earlier] > 0)
      else:
        assert np.all(real > 0)


def test_attention_equals_numpy_softmax_of_the_layers_own_projections(seq2seq):
  """Unpadded, one example: softmax(q k^T / sqrt(d)) from the captured normalised inputs and the layer's kernels."""
  tokenizer, params = seq2seq.tokenizer, seq2seq.params
  encoder = np.array([tokenizer.encode(INPUTS[0]) + [EOS_ID]])
  targets = tokenizer.encode(TARGETS[0]) + [EOS_ID]
  decoder = np.array([[0] + targets[:-1]])
  batch = {'encoder_input_tokens': encoder, 'encoder_segment_ids': np.ones_like(encoder),
           'encoder_positions': np.arange(encoder.shape[1])[None], 'decoder_input_tokens': decoder,
           'decoder_segment_ids': np.ones_like(decoder), 'decoder_positions': np.arange(decoder.shape[1])[None]}
  apply = jax.jit(lambda params, batch: seq2seq.model.apply({'params': params}, batch, capture_intermediates=True,
                                                            mutable=['intermediates'])[1]['intermediates'])
  captured = apply(params, batch)
  attention = analysis.attention_weights(seq2seq, INPUTS, TARGETS)
  head_dim = seq2seq.model.config.head_dim
  cases = {'encoder/layers_1/self_attention': (captured['encoder']['layers_1']['self_attention_norm'],) * 2,
           'decoder/layers_1/cross_attention': (captured['decoder']['layers_1']['cross_attention_norm'],
                                                captured['encoder'])}
  for name, (query_input, key_input) in cases.items():
    kernels = params
    for part in name.split('/'):
      kernels = kernels[part]
    q = np.einsum('le,ehd->hld', np.asarray(query_input['__call__'][0][0]), kernels['query']) / np.sqrt(head_dim)
    k = np.einsum('le,ehd->hld', np.asarray(key_input['__call__'][0][0]), kernels['key'])
    weights, _, _ = attention.example(name, 0)
    np.testing.assert_allclose(weights, softmax(np.einsum('hqd,hkd->hqk', q, k)), atol=1e-5)


def test_scanned_layers_give_the_unscanned_weights_and_prefix_lm_sees_its_prefix_both_ways(data_dir):
  config = config_lib.load_config_file(f'{REPO}/configs/decoder_quickstart.py')
  config.data.data_dir = data_dir
  config.model.update(d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=64, num_decoder_layers=2)
  config.train.batch_size = config.eval.batch_size = 8
  exp = fresh(config, jax.devices()[:1])
  config.model.scan_layers = True
  scanned = fresh(config, jax.devices()[:1])
  scanned.params = models.stack_layers(exp.params)
  plain = analysis.attention_weights(exp, INPUTS, TARGETS)
  stacked = analysis.attention_weights(scanned, INPUTS, TARGETS)
  assert list(plain.weights) == list(stacked.weights) == ['decoder/layers_0/self_attention',
                                                          'decoder/layers_1/self_attention']
  for name, weights in plain.weights.items():
    np.testing.assert_allclose(stacked.weights[name], weights, atol=1e-6)
    assert weights.shape[1] == 4  # query heads, though keys and values have 2
  weights, queries, _ = plain.example('decoder/layers_0/self_attention')
  prefix = len(exp.tokenizer.encode(INPUTS[0])) + 2  # the start token, the input, its EOS
  assert queries[0] == '<s>' and queries[prefix - 1] == '</s>'
  assert np.all(weights[:, :prefix, :prefix] > 0)  # bidirectional over the input
  assert np.all(weights[:, :prefix, prefix:] == 0) and np.all(np.triu(weights[:, prefix:, prefix:], k=1) == 0)


def test_encoder_only_reads_inputs_alone_and_bad_requests_are_refused(data_dir, seq2seq):
  config = config_lib.load_config_file(f'{REPO}/configs/encoder_quickstart.py')
  config.data.data_dir = data_dir
  config.model.update(d_model=32, num_heads=2, mlp_dim=64, num_encoder_layers=1)
  config.train.batch_size = config.eval.batch_size = 8
  attention = analysis.attention_weights(fresh(config, jax.devices()[:1]), INPUTS)
  assert list(attention.weights) == ['encoder/layers_0/self_attention'] and list(attention.tokens) == ['encoder']
  assert attention.weights['encoder/layers_0/self_attention'].shape[:2] == (2, 2)
  with pytest.raises(ConfigError, match='encoder_decoder model reads a target too'):
    analysis.attention_weights(seq2seq, INPUTS)
  with pytest.raises(ConfigError, match='2 inputs but 1 targets'):
    analysis.attention_weights(seq2seq, INPUTS, TARGETS[:1])
  with pytest.raises(ConfigError, match="unknown attention layer 'encoder/layers_0/self_atention'; nearest valid "
                                        'keys: encoder/layers_0/self_attention'):
    attention.example('encoder/layers_0/self_atention')


def tree(seed: int = 0) -> dict:
  """Parameters shaped like a model's: scanned layers (2 x [3, 4]), an embedding with known zeros, a norm."""
  rng = np.random.default_rng(seed)
  embedding = rng.normal(size=(5, 4)).astype(np.float32)
  embedding[1] = 0.0  # 4 of 20 values
  return {'token_embed': {'embedding': embedding},
          'decoder': {'layers': {'mlp': {'wi': {'kernel': rng.normal(size=(2, 3, 4)).astype(np.float32)}},
                                 'mlp_norm': {'scale': rng.normal(size=(2, 4)).astype(np.float32)}},
                      'final_norm': {'scale': np.zeros(4, np.float32)}}}


def test_parameter_stats_match_numpy_per_tensor_and_per_layer():
  params = tree()
  rows = {row['name']: row for row in analysis.parameter_stats(params)}
  assert list(rows) == ['token_embed/embedding', 'decoder/final_norm/scale', 'decoder/layers_0/mlp/wi/kernel',
                        'decoder/layers_0/mlp_norm/scale', 'decoder/layers_1/mlp/wi/kernel',
                        'decoder/layers_1/mlp_norm/scale']
  tensors = {'token_embed/embedding': params['token_embed']['embedding'],
             'decoder/layers_1/mlp/wi/kernel': params['decoder']['layers']['mlp']['wi']['kernel'][1]}
  for name, x in tensors.items():
    row = rows[name]
    assert row['shape'] == x.shape and row['size'] == x.size
    assert row['norm'] == pytest.approx(np.linalg.norm(x.astype(np.float64)), rel=1e-9)
    assert row['rms'] == pytest.approx(np.sqrt(np.mean(np.square(x, dtype=np.float64))), rel=1e-9)
    assert row['max_abs'] == pytest.approx(np.abs(x).max())
  assert rows['token_embed/embedding']['sparsity'] == pytest.approx(4 / 20)
  assert rows['decoder/final_norm/scale'] == {'name': 'decoder/final_norm/scale', 'shape': (4,), 'size': 4,
                                              'norm': 0.0, 'rms': 0.0, 'max_abs': 0.0, 'sparsity': 1.0}

  layers = {row['name']: row for row in analysis.parameter_stats(params, by_layer=True)}
  assert list(layers) == ['token_embed', 'decoder/final_norm', 'decoder/layers_0', 'decoder/layers_1']
  layer = np.concatenate([params['decoder']['layers']['mlp']['wi']['kernel'][0].ravel(),
                          params['decoder']['layers']['mlp_norm']['scale'][0]]).astype(np.float64)
  assert layers['decoder/layers_0']['tensors'] == 2 and layers['decoder/layers_0']['size'] == 16
  assert layers['decoder/layers_0']['norm'] == pytest.approx(np.linalg.norm(layer), rel=1e-9)
  assert layers['decoder/layers_0']['max_abs'] == pytest.approx(np.abs(layer).max())


def test_compare_finds_the_one_changed_tensor_and_refuses_other_architectures():
  params = tree()
  same = analysis.compare(params, models.unstack_layers(tree()))  # scanned and unscanned compare alike
  assert all(r['relative_difference'] == 0 and r['max_abs_difference'] == 0 for r in same)
  assert all(r['cosine'] == pytest.approx(1.0) for r in same if r['norm_a'])
  assert {r['name']: r['cosine'] for r in same}['decoder/final_norm/scale'] == 1.0  # zero vs zero: the same

  changed = tree()
  kernel = changed['decoder']['layers']['mlp']['wi']['kernel']
  before = kernel[1].astype(np.float64)
  kernel[1] += 0.1 * np.random.default_rng(1).normal(size=kernel[1].shape).astype(np.float32)
  after = kernel[1].astype(np.float64)
  rows = analysis.compare(params, changed)
  assert [r['name'] for r in rows if r['relative_difference'] > 0] == ['decoder/layers_1/mlp/wi/kernel']
  row = {r['name']: r for r in rows}['decoder/layers_1/mlp/wi/kernel']
  assert row['relative_difference'] == pytest.approx(np.linalg.norm(after - before) / np.linalg.norm(before))
  cosine = np.sum(after * before) / np.linalg.norm(after) / np.linalg.norm(before)
  assert row['cosine'] == pytest.approx(cosine) and row['cosine'] < 1
  assert row['norm_b'] == pytest.approx(np.linalg.norm(after))
  by_layer = analysis.compare(params, changed, by_layer=True)
  assert [r['name'] for r in by_layer if r['relative_difference'] > 0] == ['decoder/layers_1']

  wider = tree()
  wider['decoder']['layers']['mlp']['wi']['kernel'] = np.zeros((2, 3, 5), np.float32)
  with pytest.raises(ConfigError, match=r'differ in tensor decoder/layers_0/mlp/wi/kernel: shape \(3, 4\) in the '
                                        r'first, \(3, 5\) in the second'):
    analysis.compare(params, wider)
  fewer = tree()
  del fewer['decoder']['final_norm']
  with pytest.raises(ConfigError, match='different tensors: decoder/final_norm/scale is only in the first'):
    analysis.compare(params, fewer)


def test_training_curves_draw_one_line_per_run_and_nothing_without_the_metric(tmp_path):
  runs = {'a': [{'step': 1, 'train/loss': 3.0}, {'step': 2, 'train/loss': 2.0}, {'step': 2, 'eval/loss': 2.5}],
          'b': [{'step': 1, 'train/loss': 3.5}, {'step': 2, 'train/loss': 1.0}]}
  assert plots.training_curves(runs, 'train/loss', tmp_path / 'loss.png', 'two runs')
  assert matplotlib.image.imread(tmp_path / 'loss.png').std() > 0.05
  assert not plots.training_curves(runs, 'eval/bleu', tmp_path / 'bleu.png')
  assert not (tmp_path / 'bleu.png').exists()


def test_walkthrough_writes_non_trivial_figures_and_a_summary(trained_workdir, tmp_path):
  workdir = trained_workdir[0]  # the tiny quickstart, 2 + 2 layers, checkpoints at steps 6 and 12
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}  # one CPU device
  command = [sys.executable, f'{REPO}/experiments/analyze.py', f'--workdir={workdir}', f'--output_dir={tmp_path}']
  result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
  assert result.returncode == 0, result.stderr
  figures = re.findall(r'^wrote (.*\.png)$', result.stdout, flags=re.M)
  assert sorted(figures) == sorted(str(p) for p in tmp_path.glob('*.png'))
  names = {os.path.basename(f) for f in figures}
  assert {'attention_encoder_layers_0_self_attention.png', 'attention_decoder_layers_0_cross_attention.png',
          'curve_train_loss.png', 'curve_eval_exact_match.png', 'parameter_norms.png', 'comparison.png'} <= names
  assert len([n for n in names if n.startswith('attention_')]) == 6  # every layer's self and cross attention
  for figure in figures:
    pixels = matplotlib.image.imread(figure)[..., :3]
    assert pixels.shape[0] >= 200 and pixels.shape[1] >= 300, figure
    assert pixels.std() > 0.05, figure
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, figure  # drawn, not one flat colour

  summary = (tmp_path / 'summary.md').read_text()
  headings = re.findall(r'^#+ .*$', summary, flags=re.M)
  assert headings == [f'# Analysis of {workdir}', '## Attention', '## Training curves', '## Parameters',
                      '### Per tensor', '## Comparison with step 6']
  assert all(f'![{name}]({name})' in summary for name in names)
  assert '| encoder/layers_0 | 10 |' in summary  # 10 tensors per encoder layer: 4 attention, 2 MLP, 2 x 2 norms
  assert 'a = step 6, b = step 12' in summary and 'checkpoint step 12 (kept: 6, 12)' in summary
