"""experiments/evaluate.py: the training loop's evaluation numbers from a workdir, int8 weights, results files,
clear errors; and the generation metrics (BLEU, chrF) against the textbook formula and their properties."""

import collections
import json
import math
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import research
from research import config as config_lib, evaluation, metrics as metrics_lib, train
from research.config import ConfigError
from research.data import sources
from tests.conftest import REPO, tiny_config


def training_evaluations(workdir) -> dict[int, dict]:
  """The eval records of the workdir's metrics.jsonl by step, without the 'eval/' prefix."""
  return {r['step']: {k[len('eval/'):]: v for k, v in r.items() if k.startswith('eval/')}
          for r in metrics_lib.read_metrics(str(workdir)) if 'eval/loss' in r}


def assert_same_metrics(result: dict, logged: dict):
  assert set(logged) <= set(result)
  for key, value in logged.items():
    assert result[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


@pytest.fixture(scope='module')
def workdir(tmp_path_factory, data_dir):
  """A tiny seq2seq run on 1 device: 12 steps, evaluated on 64 examples and checkpointed at steps 6 and 12
  (one layer each side: it compiles faster)."""
  path = tmp_path_factory.mktemp('seq2seq')
  config = tiny_config(data_dir)
  config.model.update(num_encoder_layers=1, num_decoder_layers=1)
  train.train_and_evaluate(config, str(path), devices=jax.devices()[:1])
  return path


def test_all_steps_reproduce_the_training_evaluations_and_write_matching_files(workdir, tmp_path):
  """Every kept checkpoint, evaluated on 8 devices (data=8), gives the training loop's eval record (1 device)."""
  results, examples = evaluation.evaluate_workdir(str(workdir), all_steps=True)
  logged = training_evaluations(workdir)
  assert [r['step'] for r in results] == sorted(logged) == [6, 12]
  for result in results:
    assert result['split'] == 'validation' and result['int8'] is False and result['examples'] == 64
    assert {'bleu', 'chrf', 'exact_match'} <= set(logged[result['step']])
    assert_same_metrics(result, logged[result['step']])
  assert len(examples) == 2 and all(isinstance(text, str) for example in examples for text in example)

  json_path, markdown_path = evaluation.write_results(results, str(tmp_path / 'out'))
  assert (json_path, markdown_path) == (str(tmp_path / 'out' / 'validation.json'),
                                         str(tmp_path / 'out' / 'validation.md'))
  assert json.loads(open(json_path).read()) == results
  header, rule, *rows = [line.strip('|').split('|') for line in open(markdown_path).read().splitlines()]
  columns = [c.strip() for c in header]
  assert columns[0] == 'step' and {'loss', 'accuracy', 'bleu', 'chrf', 'examples', 'param_bytes'} <= set(columns)
  assert len(rule) == len(columns) and len(rows) == len(results)
  for row, result in zip(rows, results):
    for column, cell in zip(columns, row):
      assert float(cell) == pytest.approx(result[column], rel=1e-3), column


def test_int8_weights_on_a_sharded_mesh_lose_little_and_take_less_memory(workdir):
  """int8 parameters sharded fsdp=4 x tensor=2: nearly the float loss, under half the bytes of float32."""
  (result,), _ = evaluation.evaluate_workdir(str(workdir), step=12, int8=True, mesh='fsdp=4,tensor=2')
  assert result['int8'] is True and result['step'] == 12
  assert result['loss'] == pytest.approx(training_evaluations(workdir)[12]['loss'], rel=0.03)
  float_params = research.load_experiment(str(workdir)).params
  assert result['float_param_bytes'] == sum(x.nbytes for x in jax.tree.leaves(float_params))
  assert result['param_bytes'] < 0.5 * result['float_param_bytes']


@pytest.fixture(scope='module')
def classifier_workdir(tmp_path_factory, data_dir):
  """configs/classifier_quickstart.py shrunk: 3 steps on 1 device, evaluated and checkpointed at step 3 (byte
  tokenizer: the digit-count target would train a SentencePiece model of its own)."""
  path = tmp_path_factory.mktemp('classifier')
  config = config_lib.load_config_file(f'{REPO}/configs/classifier_quickstart.py')
  tiny = tiny_config(data_dir)
  config.data.update(data_dir=data_dir, tokenizer='bytes')
  config.model.update(d_model=32, num_heads=2, mlp_dim=64, num_encoder_layers=1)
  config.train.update(tiny.train.to_dict(), num_steps=3, eval_every=3, checkpoint_every=3)
  config.optimizer.warmup_steps = 1
  config.eval.update(tiny.eval.to_dict())
  train.train_and_evaluate(config, str(path), devices=jax.devices()[:1])
  return path


def test_classifier_reports_classification_metrics(classifier_workdir):
  # 20 rows per batch would not split over 8 devices: rounded up to 24.
  (result,), examples = evaluation.evaluate_workdir(str(classifier_workdir), batch_size=20)
  assert result['step'] == 3 and result['examples'] == 64
  assert {'accuracy', 'precision', 'recall', 'f1'} <= set(result) and not {'bleu', 'chrf'} & set(result)
  assert_same_metrics(result, training_evaluations(classifier_workdir)[3])
  classes = train.saved_config(str(classifier_workdir)).data.classes
  assert len(examples) == 2 and all(prediction in classes for _, _, prediction in examples)


def test_command_line_writes_the_results_and_prints_the_table(classifier_workdir, tmp_path):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}  # one CPU device
  command = [sys.executable, f'{REPO}/experiments/evaluate.py', f'--workdir={classifier_workdir}', '--split=test',
             '--num_examples=10', f'--output_dir={tmp_path}']
  result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  (record,) = json.loads((tmp_path / 'test.json').read_text())
  assert record['step'] == 3 and record['split'] == 'test' and record['examples'] == 10
  assert (tmp_path / 'test.md').read_text() in result.stdout
  assert result.stdout.count(' -> ') == 2
  result = subprocess.run(command[:2] + [f'--workdir={tmp_path}'], env=env, capture_output=True, text=True,
                          timeout=300)
  assert (result.returncode, result.stderr) == (2, f'error: {tmp_path} holds no config.json; is it a training '
                                                   'workdir?\n')


def test_bad_inputs_are_refused_with_one_line_that_says_why(classifier_workdir, tmp_path):
  workdir = str(classifier_workdir)
  with pytest.raises(ConfigError, match=r"number_words has no split 'tset'; it has .*validation"):
    evaluation.evaluate_workdir(workdir, split='tset')
  with pytest.raises(ConfigError, match=r'has no checkpoint at step 7; it has steps \[3\]'):
    evaluation.evaluate_workdir(workdir, step=7)
  with pytest.raises(ConfigError, match='--step or --all_steps, not both'):
    evaluation.evaluate_workdir(workdir, step=3, all_steps=True)
  with pytest.raises(ConfigError, match="--mesh=pipe=2: unknown mesh axis 'pipe'"):
    evaluation.evaluate_workdir(workdir, mesh='pipe=2')
  with pytest.raises(ConfigError, match='needs 3 devices but 8 are available'):
    evaluation.evaluate_workdir(workdir, mesh='tensor=3')
  with pytest.raises(ConfigError, match='holds no config.json'):
    evaluation.evaluate_workdir(str(tmp_path))
  shutil.copy(os.path.join(workdir, train.CONFIG_FILE), tmp_path)
  with pytest.raises(ConfigError, match='holds no complete checkpoint yet'):
    evaluation.evaluate_workdir(str(tmp_path))
  assert not (tmp_path / 'checkpoints').exists()

  (tmp_path / 'train.tsv').write_text('one\t1\n')
  data = tiny_config('').data
  data.update(source='files', train_files=str(tmp_path / 'train.tsv'))
  assert sources.open_named_split(data, 'train') == [{'input': 'one', 'target': '1'}]
  with pytest.raises(ConfigError, match=r"data.source='files' has no split 'test'; it has 'train' "
                                        r"\(data.train_files='.*train.tsv'\)$"):
    sources.open_named_split(data, 'test')


def textbook_bleu(hypotheses: list[str], references: list[str]) -> float:
  """Papineni et al. (2002): clipped n-gram precisions (n = 1..4) pooled over the corpus, geometric mean,
  brevity penalty exp(1 - r/c) when the hypotheses are shorter than the references."""
  matches, totals = np.zeros(4), np.zeros(4)
  for hypothesis, reference in zip(hypotheses, references):
    hyp, ref = hypothesis.split(), reference.split()
    for n in range(1, 5):
      hyp_grams = collections.Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
      ref_grams = collections.Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
      matches[n - 1] += sum(min(count, ref_grams[gram]) for gram, count in hyp_grams.items())
      totals[n - 1] += sum(hyp_grams.values())
  hyp_length = sum(len(h.split()) for h in hypotheses)
  ref_length = sum(len(r.split()) for r in references)
  brevity = 1.0 if hyp_length > ref_length else math.exp(1 - ref_length / hyp_length)
  return 100 * brevity * math.exp(np.mean(np.log(matches / totals)))


def test_bleu_is_the_textbook_formula():
  hypotheses = ['the cat sat on the mat', 'a quick brown fox jumps over the dog', 'it is raining today']
  references = ['the cat is on the mat', 'the quick brown fox jumps over the lazy dog', 'it is raining today']
  expected = textbook_bleu(hypotheses, references)
  assert 0 < expected < 100
  assert metrics_lib.generation_scores(hypotheses, references)['bleu'] == pytest.approx(expected, rel=1e-9)


def test_bleu_of_one_word_targets_uses_unigrams():
  """Without any 2-gram in the corpus, BLEU is the unigram precision (times the brevity penalty), not 0."""
  references = ['76007', '62204', '1892543', '42']
  assert metrics_lib.generation_scores(references, references)['bleu'] == pytest.approx(100)
  half = metrics_lib.generation_scores(['76007', '62205', '1892543', '43'], references)['bleu']
  assert half == pytest.approx(50)


def test_generation_scores_bounds_and_order_invariance():
  references = ['seventy six thousand seven', 'one hundred four', 'two million and three', 'nine hundred']
  perfect = metrics_lib.generation_scores(references, references)
  assert perfect == {'bleu': pytest.approx(100), 'chrf': pytest.approx(100)}
  disjoint = metrics_lib.generation_scores(['xq zzk wv', 'pj', 'qqq xx', 'vvv'], references)
  assert disjoint['bleu'] < 1 and disjoint['chrf'] < 5
  partial = ['seventy six thousand seven', 'one hundred five', 'two million and three', 'eight hundred']
  scores = metrics_lib.generation_scores(partial, references)
  for name in ('bleu', 'chrf'):
    assert disjoint[name] < scores[name] < perfect[name]
  order = [2, 0, 3, 1]
  shuffled = metrics_lib.generation_scores([partial[i] for i in order], [references[i] for i in order])
  assert shuffled == pytest.approx(scores)
