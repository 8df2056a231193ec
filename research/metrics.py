"""Metrics in one place: what evaluation reports (token, classification and generation scores), averages of
logged steps, and the writer that records them (metrics.jsonl + TensorBoard).

Periodic evaluation during training and experiments/evaluate.py both summarise with these functions, so
their numbers agree.
"""

from __future__ import annotations

import json
import math
from typing import Mapping

import numpy as np
import sacrebleu
import tensorboardX

from research import files

METRICS_FILE = 'metrics.jsonl'


def token_summary(sums) -> dict[str, float]:
  """Per-token loss, perplexity and accuracy, and per-example exact match, from sums over the examples."""
  tokens = max(float(sums['target_tokens']), 1.0)
  loss = float(sums['loss']) / tokens
  out = {'loss': loss, 'perplexity': math.exp(min(loss, 50.0)), 'accuracy': float(sums['correct_tokens']) / tokens}
  if 'exact_match' in sums:
    out['exact_match'] = float(sums['exact_match']) / max(float(sums['examples']), 1.0)
  out['examples'] = float(sums['examples'])
  return out


def classification_summary(confusion: np.ndarray) -> dict[str, float]:
  """Accuracy and macro-averaged precision, recall and F1 from a confusion matrix [true, predicted].

  A class never predicted has precision 0; a class absent from the labels is left out of the averages.
  """
  confusion = np.asarray(confusion, np.float64)
  true_positives = np.diag(confusion)
  predicted, actual = confusion.sum(axis=0), confusion.sum(axis=1)
  present = actual > 0
  precision = np.divide(true_positives, predicted, out=np.zeros_like(true_positives), where=predicted > 0)
  recall = np.divide(true_positives, actual, out=np.zeros_like(true_positives), where=present)
  denominator = precision + recall
  f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(true_positives), where=denominator > 0)
  return {'accuracy': float(true_positives.sum() / max(confusion.sum(), 1.0)),
          'precision': float(precision[present].mean()), 'recall': float(recall[present].mean()),
          'f1': float(f1[present].mean()), 'examples': float(confusion.sum())}


def generation_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
  """Corpus BLEU and chrF (0-100; sacrebleu: 13a tokenization, exponential smoothing) of generated texts against
  one reference each. BLEU uses the n-gram orders the texts have (sacrebleu's effective order): a corpus of
  one-word targets is scored on unigrams instead of 0; with 4-grams present it is the standard BLEU."""
  return {'bleu': sacrebleu.BLEU(effective_order=True).corpus_score(predictions, [references]).score,
          'chrf': sacrebleu.corpus_chrf(predictions, [references]).score}


def mean_over_steps(history: list[Mapping[str, np.ndarray]]) -> dict[str, float]:
  return {k: float(np.mean([float(h[k]) for h in history])) for k in history[0]}


class MetricWriter:
  """Appends {'step': s, **metrics} lines to workdir/metrics.jsonl and scalars to TensorBoard.

  On resume from step `resume_step`, records after that step (written by the interrupted run and
  about to be recomputed) are dropped, so the history has each step once. Only process 0 writes.
  Object stores (gs://) cannot append: there the whole file is rewritten at each write.
  """

  def __init__(self, workdir: str, resume_step: int | None, enabled: bool = True):
    self.enabled = enabled
    self.path = files.path(workdir) / METRICS_FILE
    if not enabled:
      return
    self._lines = [json.dumps(r) + '\n' for r in read_metrics(workdir)
                   if resume_step is not None and r['step'] <= resume_step]
    files.write_atomic(self.path, ''.join(self._lines).encode())
    self._append = not files.is_remote(self.path)
    self._tensorboard = tensorboardX.SummaryWriter(str(files.path(workdir) / 'tensorboard'))

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    self._lines.append(json.dumps({'step': step, **{k: float(v) for k, v in metrics.items()}}) + '\n')
    if self._append:
      with self.path.open('a') as f:
        f.write(self._lines[-1])
    else:
      files.write_atomic(self.path, ''.join(self._lines).encode())
    for key, value in metrics.items():
      self._tensorboard.add_scalar(key, float(value), step)
    self._tensorboard.flush()

  def close(self) -> None:
    if self.enabled:
      self._tensorboard.close()


def read_metrics(workdir: str) -> list[dict]:
  """All records of workdir/metrics.jsonl (empty if there is none)."""
  path = files.path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  lines = [line for line in path.read_text().splitlines() if line.strip()]
  records = []
  for i, line in enumerate(lines):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      if i != len(lines) - 1:  # only the last line can be cut short by a killed run
        raise
  return records
