"""Analytic model FLOPs against XLA's count and by hand; experiments/benchmark.py end to end (train and decode
modes) and its flag errors; decoding.prefill, which the decode mode times, against the full forward pass."""

import dataclasses
import functools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import decoder_quickstart, quickstart
from research import decoding, flops, quantize, train
from research.data.tokenizer import ByteTokenizer
from research.models import ModelConfig
from tests import test_decoding
from tests.conftest import REPO


@pytest.mark.parametrize('base', [quickstart, decoder_quickstart], ids=['encoder_decoder', 'decoder_only'])
def test_analytic_flops_match_xla_cost_analysis(base):
  """XLA's FLOPs for the train step's forward and backward pass (value_and_grad of the objective's loss; the
  optimizer update is not model FLOPs) on one device, from the lowered HLO: the compiled step's count agrees to
  0.2% here, without the seconds of compiling.

  XLA counts every matmul as we do, plus each elementwise operation (norms, softmax, activations, the loss over
  the vocabulary): O(tokens x width) against the matmuls' O(tokens x width^2), ~0.5% at width 256. So XLA's count
  must be at least the analytic one and at most a few per cent above it. The decoder-only quickstart adds SwiGLU
  (three MLP matrices) and grouped-query attention (smaller key/value projections) to the count.
  """
  config = base.get_config()
  config.model.update(d_model=256, num_heads=4, head_dim=0, mlp_dim=1024, dropout_rate=0.0, max_length=128)
  config.data.update(max_input_length=64, max_target_length=64)
  config.mesh.update(data=1, fsdp=1, tensor=1)
  config.train.batch_size = config.eval.batch_size = 4
  exp = train.setup(config, devices=jax.devices()[:1], tokenizer=ByteTokenizer())
  batch = train.example_batch(exp.objective.layout, 4)
  grad = jax.jit(jax.value_and_grad(exp.objective.loss_fn, has_aux=True))
  xla = grad.lower(exp.abstract_state.params, batch, jax.random.PRNGKey(0)).cost_analysis()['flops']
  lengths = [batch[f'{stack}_input_tokens'].shape[1] if f'{stack}_input_tokens' in batch else 0
             for stack in ('encoder', 'decoder')]
  analytic = flops.train_flops(exp.model.config, config.model.family, 4, *lengths)
  assert analytic <= xla <= 1.03 * analytic, (xla, analytic)


def test_flops_by_hand():
  """One decoder layer, d_model 4, 2 heads of 2, MLP 8, vocabulary 10, one sequence of 3 tokens."""
  model = ModelConfig(vocab_size=10, d_model=4, num_heads=2, head_dim=2, mlp_dim=8, num_encoder_layers=0,
                      num_decoder_layers=1)
  projections = 4 * (2 * 3 * 4 * 4)  # query, key, value, output: 3 tokens x 4 x 4, 2 FLOPs per multiply-add
  mlp = 2 * (2 * 3 * 4 * 8)  # two 4 x 8 matrices
  scores_and_values = 2 * (2 * 3 * 3 * 4)  # 3 x 3 scores over 2 heads x 2 dims, then the same for the values
  head = 2 * 3 * 4 * 10
  assert flops.forward_flops(model, 'decoder_only', 1, decoder_length=3) == {
      'encoder': 0, 'decoder': projections + mlp, 'attention': scores_and_values, 'head': head}
  assert flops.train_flops(model, 'decoder_only', 1, decoder_length=3) == 3 * (projections + mlp + scores_and_values
                                                                               + head)


def test_flops_scale_with_the_architecture():
  """Layers, gated activations, grouped-query attention, cross-attention lengths and heads move the count as
  the formulas say."""
  base = ModelConfig(vocab_size=512, d_model=64, num_heads=4, head_dim=16, mlp_dim=256, num_encoder_layers=2,
                     num_decoder_layers=3)
  batch, encoder_length, decoder_length = 2, 32, 8

  def count(family='encoder_decoder', enc=encoder_length, **changes):
    return flops.forward_flops(dataclasses.replace(base, **changes), family, batch, enc, decoder_length)
  one = count()
  doubled = count(num_encoder_layers=4, num_decoder_layers=6)
  assert {k: 2 * v for k, v in one.items() if k != 'head'} == {k: v for k, v in doubled.items() if k != 'head'}
  assert doubled['head'] == one['head'] == 2 * batch * decoder_length * 64 * 512
  gated = count(activation='swiglu')  # one more d_model x mlp_dim matrix per layer
  assert gated['decoder'] - one['decoder'] == 3 * 2 * batch * decoder_length * 64 * 256
  multi_query = count(num_kv_heads=1)  # keys and values: 1 head instead of 4, in self- and cross-attention
  assert one['encoder'] - multi_query['encoder'] == 2 * 2 * 2 * batch * encoder_length * 64 * 3 * 16
  assert multi_query['attention'] == one['attention']  # every query head still scores every key
  longer_input = count(enc=2 * encoder_length)  # the decoder's cross-attention keys and values read the encoder
  assert longer_input['decoder'] - one['decoder'] == 3 * 2 * 2 * batch * encoder_length * 64 * 64
  classifier = count('encoder_only', head='classifier', num_classes=7)
  assert classifier['decoder'] == 0 and classifier['head'] == 2 * batch * 64 * (64 + 7)
  assert flops.train_flops(base, 'encoder_decoder', batch, encoder_length, decoder_length) == 3 * sum(one.values())


def test_published_peaks_match_device_kinds():
  assert flops.published_peak('NVIDIA H100 80GB HBM3', 'bfloat16') == 989.4e12
  assert flops.published_peak('NVIDIA H100 PCIe', 'float32') == 378e12
  assert flops.published_peak('TPU v5 lite', 'bfloat16') == 197e12  # v5e, not v5p
  assert flops.published_peak('TPU v5', 'float32') == 459e12
  assert flops.published_peak('cpu', 'float32') is None


def run_benchmark(*args, devices: int = 8):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}'}
  return subprocess.run([sys.executable, os.path.join(REPO, 'experiments', 'benchmark.py'), *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300)


def test_benchmark_runs_and_skips_layouts_that_do_not_fit(tmp_path):
  output = tmp_path / 'benchmark.json'
  result = run_benchmark('--sizes=tiny', '--meshes=fsdp=4,tensor=2;data=3', '--steps=2', '--warmup=1',
                         '--batch_size=8', '--seq_len=16', '--config.model.activation=swiglu', f'--output={output}')
  assert result.returncode == 0, result.stderr
  ran, skipped = json.loads(output.read_text())
  for record in (ran, skipped):
    assert record['device_count'] == 8 and record['device_kind'] == 'cpu' and record['jax_version'] == jax.__version__
    assert record['date'] and record['overrides'] == ['--config.model.activation=swiglu']
  assert ran['status'] == 'ok' and ran['mesh'] == {'data': 1, 'fsdp': 4, 'tensor': 2}
  assert ran['model']['activation'] == 'swiglu' and ran['model']['d_model'] == 128
  assert ran['tokens_per_step'] == 8 * (16 + 16) and ran['tokens_per_s'] > 0
  assert ran['model_flops_per_step'] == flops.train_flops(ModelConfig(**ran['model']), 'encoder_decoder', 8, 16, 16)
  assert 0 < ran['mfu'] <= 1 and ran['peak_flops_source'].startswith('measured')
  for key in ('compile_s', 'step_s_median', 'step_s_mean', 'xla_flops_per_step', 'peak_memory_bytes',
              'compiled_memory_bytes', 'host_max_rss_bytes', 'param_count'):
    assert ran[key] > 0, key
  assert skipped['status'] == 'skipped' and skipped['layout'] == 'data=3'
  assert 'needs 3 devices but 8 are available' in skipped['reason']
  assert 'tiny  data=3' in result.stdout and 'skipped: mesh data=3' in result.stdout


@pytest.mark.parametrize('config, devices, mesh, weights', [
    ('quickstart.py', 1, 'data=-1', ['float', 'int8']), ('decoder_quickstart.py', 2, 'fsdp=2', ['int8']),
], ids=['encoder_decoder_on_1_device', 'decoder_only_on_2_devices'])
def test_decode_benchmark_runs_each_weights_and_cache_setting(tmp_path, config, devices, mesh, weights):
  """Every case compiles generate and prefill (seconds each): the sharded decoder-only run takes int8 weights only
  (their scales' shardings are the new part there); float weights on a mesh are test_decoding's."""
  output = tmp_path / 'decode.json'
  result = run_benchmark('--mode=decode', f'--config={os.path.join(REPO, "configs", config)}', '--sizes=tiny',
                         f'--meshes={mesh};data=3', '--batch_sizes=2', '--prompt_lens=8', '--new_tokens=4',
                         f'--weights={",".join(weights)}', '--cache=on,off', '--steps=1', '--warmup=0',
                         f'--output={output}', devices=devices)
  assert result.returncode == 0, result.stderr
  records = json.loads(output.read_text())
  ran = {(r['weights'], r['cache']): r for r in records if r['status'] == 'ok'}
  skipped = [r for r in records if r['status'] != 'ok']
  assert list(ran) == [(w, c) for w in weights for c in ('on', 'off')]
  decoder_only = config == 'decoder_quickstart.py'
  for r in ran.values():
    assert r['mode'] == 'decode' and r['device_count'] == devices and r['layout'] == mesh
    assert r['family'] == ('decoder_only' if decoder_only else 'encoder_decoder') and r['model']['d_model'] == 128
    assert (r['batch_size'], r['prompt_len'], r['new_tokens'], r['method']) == (2, 8, 4, 'greedy')
    assert (r['prompt_width'], r['encoder_length']) == ((9, None) if decoder_only else (1, 8))  # + start token
    for key in ('compile_s', 'prefill_compile_s', 'generate_s_median', 'generate_s_mean', 'prefill_s_median',
                'prefill_s_mean', 'tokens_per_s', 'param_bytes', 'param_count', 'peak_memory_bytes',
                'compiled_memory_bytes', 'host_max_rss_bytes'):
      assert r[key] > 0, key
    # The loop runs until every row has produced EOS, at most new_tokens; the first token comes from the prefill.
    assert 1 <= r['tokens_per_row'] <= 4 and r['decode_steps'] == r['tokens_per_row'] - 1
    assert r['tokens_per_row'] == 4 or r['rows_ended_with_eos'] == 2
    assert r['tokens_per_row'] <= r['generated_tokens'] <= 2 * r['tokens_per_row']
    assert r['tokens_per_s'] == pytest.approx(r['generated_tokens'] / r['generate_s_median'])
    if r['tokens_per_row'] > 1:
      assert r['token_s'] == pytest.approx((r['generate_s_median'] - r['prefill_s_median']) / r['decode_steps'])
  if 'float' in weights:  # int8 values and float32 scales take about a quarter of the float32 weights
    for cache in ('on', 'off'):
      assert ran['int8', cache]['param_bytes'] < 0.4 * ran['float', cache]['param_bytes']
      assert ran['int8', cache]['param_count'] == ran['float', cache]['param_count']
  assert len(skipped) == len(ran) and all(r['layout'] == 'data=3' and r['status'] == 'skipped' for r in skipped)
  assert 'needs 3 devices but' in skipped[0]['reason']
  assert f'tiny  {mesh}' in result.stdout and 'tokens/row' in result.stdout
  assert 'int8     off    skipped: mesh data=3' in result.stdout


@pytest.mark.parametrize('base, cases', [
    (quickstart, [('float', True), ('int8', False)]), (decoder_quickstart, [('int8', True), ('float', False)]),
], ids=['encoder_decoder', 'decoder_only'])
def test_prefill_logits_are_the_first_step_of_generate(base, cases):
  """decoding.prefill on the benchmark's kind of model (train.setup's, with random parameters), float or int8
  weights, cache on or off: the full forward pass's logits at each row's last prompt position (on the dequantized
  weights), from which generate picks its first token. The decoder-only quickstart is a prefix LM. Each family
  takes two of the four weights x cache cases (every compilation costs seconds)."""
  config = base.get_config()
  config.model.update(d_model=32, num_heads=2, head_dim=0, mlp_dim=64, num_encoder_layers=1, num_decoder_layers=1)
  config.mesh.update(data=1, fsdp=1, tensor=1)
  exp = train.setup(config, devices=jax.devices()[:1], tokenizer=ByteTokenizer())
  rng = np.random.default_rng(0)  # drawn on the host: compiling the initialisers would take seconds
  params = jax.tree.map(lambda x: rng.normal(0, 0.3, x.shape).astype(x.dtype), exp.abstract_state.params)
  prompts, _ = test_decoding.random_prompts(config.model.family, [5, 2, 7], vocab=exp.tokenizer.vocab_size,
                                            prefix_lm=config.objective.name == 'prefix_lm')
  quantized = jax.jit(functools.partial(quantize.quantize, logical_axes=exp.param_axes))(params)
  weights = {'float': params, 'int8': quantized}
  for name, use_cache in cases:
    reference = np.stack([test_decoding.full_logits(exp.model, jax.jit(quantize.dequantize)(weights[name]), prompts,
                                                    row, [])[-1] for row in range(3)])
    options = decoding.Options(max_new_tokens=3, use_cache=use_cache)
    logits = jax.jit(functools.partial(decoding.prefill, exp.model, options))(weights[name], prompts)
    assert logits.shape == reference.shape
    np.testing.assert_allclose(logits, reference, atol=2e-4, rtol=2e-4)
  first = test_decoding.generate(exp.model, options, weights[name], prompts).tokens[:, 0]
  np.testing.assert_array_equal(first, np.argmax(reference, axis=1))


@pytest.mark.parametrize('flags, message', [
    (['--sizes=tiny,huge'], "error: --sizes: unknown size 'huge'; valid sizes: tiny, small, base, large, xl, config"),
    (['--meshes=fsdp=4,tensr=2'], "error: --meshes=fsdp=4,tensr=2: unknown mesh axis 'tensr'; give axis=size "
                                  'pairs separated by "," with axes data, fsdp, tensor'),
    (['--mode=decode', f'--config={os.path.join(REPO, "configs", "classifier_quickstart.py")}'],
     "error: --mode=decode: model.family='encoder_only' has no decoder to generate with"),
    (['--batch_sizes=1,8'], 'error: --batch_sizes applies to --mode=decode only (this run is --mode=train)'),
], ids=['unknown size', 'malformed mesh', 'decode without a decoder', 'decode flag in train mode'])
def test_bad_flags_fail_in_one_line(flags, message):
  result = run_benchmark(*flags)
  assert result.returncode == 2
  assert result.stderr.startswith(message) and len(result.stderr.strip().splitlines()) == 1
  assert 'Traceback' not in result.stderr
