"""research/distill.py: the KL term against numpy, and a student trained on a teacher's soft targets."""

import jax
import numpy as np
import pytest

from research import distill, metrics as metrics_lib, train
from research.config import ConfigError


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_kl_divergence_matches_numpy_over_the_shared_ids():
  rng = np.random.default_rng(0)
  student, teacher = rng.normal(size=(2, 3, 10)), rng.normal(size=(2, 3, 12))  # the teacher's table is padded
  weights = np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
  t = 2.0
  p_teacher = np.exp(_log_softmax(teacher[..., :10] / t))
  expected = t ** 2 * np.sum(np.sum(p_teacher * (_log_softmax(teacher[..., :10] / t) - _log_softmax(student / t)),
                                    -1) * weights)
  assert float(distill.kl_divergence(student, teacher, weights, t)) == pytest.approx(expected, rel=1e-5)
  assert float(distill.kl_divergence(student, student, weights, t)) == pytest.approx(0.0, abs=1e-5)


@pytest.fixture
def student(config, trained_workdir):
  """A smaller student of the 12-step tiny run, without dropout so that its logits can be recomputed."""
  config.model.update(d_model=16, mlp_dim=32, dropout_rate=0.0)
  config.mesh.update(data=1, fsdp=1, tensor=1)
  config.distill.update(teacher_workdir=str(trained_workdir[0]), weight=0.7, temperature=2.0)
  return config


def test_the_distilled_loss_is_the_mix_of_cross_entropy_and_the_teacher_term(student):
  exp = train.setup(student, devices=jax.devices()[:1])
  teacher = train.load_teacher(exp)
  state = train.init_state(exp)
  batch = train.to_global(exp, next(train.pipeline.eval_batches(
      exp.eval_records, exp.tokenizer, exp.objective.layout, global_batch_size=16, num_examples=16)))
  student_logits = np.asarray(exp.objective.logits(state.params, batch, None), np.float64)
  teacher_logits = np.asarray(teacher.logits(teacher.params, batch), np.float64)
  _, metrics = train.make_train_step(exp, teacher=teacher)(state, batch)

  targets, weights = np.asarray(batch['decoder_target_tokens']), np.asarray(batch['decoder_loss_weights'])
  nll = -np.take_along_axis(_log_softmax(student_logits), targets[..., None], -1)[..., 0]
  cross_entropy = np.sum(nll * weights) / weights.sum()
  t = 2.0
  p_teacher = np.exp(_log_softmax(teacher_logits / t))
  kl = t ** 2 * np.sum(np.sum(p_teacher * (_log_softmax(teacher_logits / t) - _log_softmax(student_logits / t)),
                              -1) * weights) / weights.sum()
  assert float(metrics['student_loss']) == pytest.approx(cross_entropy, rel=1e-4)
  assert float(metrics['distill_kl']) == pytest.approx(kl, rel=1e-4)
  assert float(metrics['loss']) == pytest.approx(0.3 * cross_entropy + 0.7 * kl, rel=1e-4)


def test_a_student_trained_on_the_teacher_alone_moves_towards_it(student, tmp_path):
  student.distill.weight = 1.0  # no labels: everything the student learns comes from the teacher
  train.train_and_evaluate(student, str(tmp_path), devices=jax.devices()[:1])
  records = [r for r in metrics_lib.read_metrics(str(tmp_path)) if 'train/distill_kl' in r]
  kl = {r['step']: r['train/distill_kl'] for r in records}
  assert all(r['train/loss'] == pytest.approx(r['train/distill_kl']) for r in records)
  assert np.mean([kl[s] for s in (10, 11, 12)]) < 0.7 * np.mean([kl[s] for s in (1, 2, 3)])


def test_unusable_teachers_are_refused(student, tmp_path):
  student.data.tokenizer = 'bytes'
  with pytest.raises(ConfigError, match='uses another tokenizer than this run'):
    train.load_teacher(train.setup(student, devices=jax.devices()[:1]))
  student.distill.teacher_workdir = str(tmp_path)
  with pytest.raises(ConfigError, match='holds no config.json'):
    train.load_teacher(train.setup(student, devices=jax.devices()[:1]))
  student.distill.teacher_workdir = 'x'
  student.distill.weight = 1.5
  with pytest.raises(ConfigError, match=r'distill.weight must be in \(0, 1\]'):
    train.setup(student, devices=jax.devices()[:1])
