"""experiments/decode.py and research/inference.py: text in, JSONL out, bad lines reported, same decodes as training."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from research import analysis, config as config_lib, convert, decoding, inference, train
from research.config import ConfigError
from research.data import pipeline
from tests.conftest import REPO, tiny_config


def _train(config, workdir) -> str:
  config.mesh.update(data=1, fsdp=1, tensor=1)
  config.train.update(num_steps=6, eval_every=6, checkpoint_every=6)
  train.train_and_evaluate(config, str(workdir), devices=jax.devices()[:1])
  return str(workdir)


@pytest.fixture(scope='module')
def seq2seq_workdir(tmp_path_factory, data_dir):
  """A T5 (v1.0) layout, so that it can also be exported to Hugging Face."""
  config = tiny_config(data_dir)
  config.model.update(norm='rmsnorm', position_embedding='relative', scale_attention=False)
  return _train(config, tmp_path_factory.mktemp('seq2seq'))


@pytest.fixture(scope='module')
def prefix_lm_workdir(tmp_path_factory, data_dir):
  config = tiny_config(data_dir)
  config.model.update(family='decoder_only', position_embedding='rotary', num_kv_heads=1)
  config.objective.name = 'prefix_lm'
  return _train(config, tmp_path_factory.mktemp('prefix_lm'))


def test_read_prompts_reports_bad_lines_by_number():
  prompts = inference.read_prompts(['seven', '', '{"input": "two", "id": 7}', '{"input": 3}', '{oops',
                                    b'\xff\xfe', b'ninety\n', '{"prompt": "  "}'])
  assert [(p.line, p.text, p.id) for p in prompts if p.error is None] == [(1, 'seven', None), (3, 'two', 7),
                                                                         (7, 'ninety', None)]
  errors = {p.line: p.error for p in prompts if p.error}
  assert set(errors) == {2, 4, 5, 6, 8}
  assert 'empty' in errors[2] and 'JSON' in errors[5] and 'UTF-8' in errors[6] and '"input"' in errors[4]


@pytest.mark.parametrize('workdir_fixture', ['seq2seq_workdir', 'prefix_lm_workdir'])
def test_decoded_text_equals_the_training_evaluation(workdir_fixture, request):
  """decode's greedy outputs for eval-split inputs are the training evaluation's predictions for them:
  the prompts are laid out as training lays out its examples."""
  workdir = request.getfixturevalue(workdir_fixture)
  loaded = analysis.load_experiment(workdir)
  exp = train.setup(loaded.config, devices=jax.devices()[:1])
  layout = exp.objective.layout
  batch = next(pipeline.eval_batches(exp.eval_records, exp.tokenizer, layout, global_batch_size=8, num_examples=8))
  _, predictions, indices = jax.device_get(train.make_eval_step(exp)(loaded.params, train.to_global(exp, batch)))
  expected = [exp.objective.describe(exp.tokenizer, p) for p in predictions]
  texts = [exp.eval_records[int(i)]['input'] for i in indices]
  decoder = inference.TextDecoder(loaded, decoding.Options(max_new_tokens=loaded.config.data.max_target_length),
                                  batch_size=3)
  records = decoder.decode(inference.read_prompts(texts))
  assert [r['output'] for r in records] == expected
  assert [r['line'] for r in records] == list(range(1, 9))


def test_decode_command_writes_jsonl_and_keeps_going_after_bad_lines(seq2seq_workdir, tmp_path):
  prompts = tmp_path / 'prompts.txt'
  too_long = ' '.join(['seven hundred'] * 40)
  prompts.write_text(f'three hundred five\n\n{too_long}\n{{"input": "forty-two", "id": "q"}}\n')
  output = tmp_path / 'out.jsonl'
  result = subprocess.run([sys.executable, 'experiments/decode.py', f'--workdir={seq2seq_workdir}',
                           f'--prompts={prompts}', f'--output={output}', '--method=beam', '--beam_size=3',
                           '--int8'], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stderr
  records = [json.loads(line) for line in output.read_text().splitlines()]
  assert [r['line'] for r in records] == [1, 2, 3, 4]
  assert 'output' in records[0] and records[3]['id'] == 'q' and 'output' in records[3]
  assert records[1]['error'] == 'empty prompt' and 'model.max_length' in records[2]['error']
  assert 'line 2: empty prompt' in result.stderr and 'line 3:' in result.stderr
  assert 'in int8 (float:' in result.stderr
  assert records[0]['tokens'][-1] == 1 or len(records[0]['tokens']) == 10  # EOS-terminated or at the limit


def test_decode_from_an_exported_hugging_face_checkpoint_matches_the_workdir(seq2seq_workdir, tmp_path):
  """Export the workdir to the Hugging Face layout, decode from it (imported on the fly): the same outputs."""
  hf_dir = str(tmp_path / 'hf')
  convert.export_hf(seq2seq_workdir, hf_dir)
  runs = []
  for source in (f'--workdir={seq2seq_workdir}', f'--from_hf={hf_dir}'):
    result = subprocess.run([sys.executable, 'experiments/decode.py', source, '--max_new_tokens=8'],
                            input='three hundred five\nnine thousand twelve\n', cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    runs.append([json.loads(line) for line in result.stdout.splitlines()])
  assert [r['tokens'] for r in runs[0]] == [r['tokens'] for r in runs[1]]


def test_sharded_decoding_of_a_workdir_equals_one_device(prefix_lm_workdir):
  texts = ['three hundred five', 'forty-two', 'nine thousand twelve', 'one million', 'six']
  options = decoding.Options('sample', max_new_tokens=6, top_k=5)
  outputs = []
  for mesh in (None, {'fsdp': 2, 'tensor': 2, 'data': -1}):
    decoder = inference.TextDecoder(analysis.load_experiment(prefix_lm_workdir, mesh=mesh), options, batch_size=4)
    outputs.append(decoder.decode(inference.read_prompts(texts), seed=1))
  assert [r['tokens'] for r in outputs[0]] == [r['tokens'] for r in outputs[1]]
  np.testing.assert_allclose([r['score'] for r in outputs[0]], [r['score'] for r in outputs[1]], atol=1e-4)


def test_a_model_without_a_decoder_is_refused_before_loading(seq2seq_workdir, tmp_path):
  """An encoder-only workdir (here: only its config; the check comes before any checkpoint is read)."""
  config = train.saved_config(seq2seq_workdir)
  config.model.update(family='encoder_only', head='mlm')
  config.objective.name = 'mlm'
  (tmp_path / train.CONFIG_FILE).write_text(config_lib.to_json(config))
  result = subprocess.run([sys.executable, 'experiments/decode.py', f'--workdir={tmp_path}'],
                          input='x\n', cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr
  assert result.stderr.startswith('error: decoding needs a decoder, but this checkpoint is an encoder_only model')


def test_unknown_method_and_bad_options_are_refused(seq2seq_workdir):
  loaded = analysis.load_experiment(seq2seq_workdir)
  with pytest.raises(ConfigError, match="decoding method='beams'.*did you mean 'beam'"):
    inference.TextDecoder(loaded, decoding.Options('beams'))
  with pytest.raises(ConfigError, match='max_new_tokens=100 exceeds model.max_length=64'):
    inference.TextDecoder(loaded, decoding.Options(max_new_tokens=100))
