"""Averages of logged steps, and the writer that records metrics (metrics.jsonl + TensorBoard)."""

from __future__ import annotations

import json
from typing import Mapping

import numpy as np
import tensorboardX

from research import files

METRICS_FILE = 'metrics.jsonl'


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
