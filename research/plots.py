"""Figures as PNG files (matplotlib, no display needed): training curves, attention maps, per-layer bars.

Each function writes one file and closes its figure, so scripts can draw hundreds without leaking memory.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import matplotlib

matplotlib.use('Agg')  # files only: works on headless machines and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from research import files  # noqa: E402

_MAX_LABELS = 64


def _save(figure, path) -> None:
  destination = files.path(path)
  destination.parent.mkdir(parents=True, exist_ok=True)
  with destination.open('wb') as f:  # epath: local disk or gs://
    figure.savefig(f, format='png', dpi=100)
  plt.close(figure)


def training_curves(runs: Mapping[str, Sequence[dict]], metric: str, path, title: str = '') -> bool:
  """`metric` against step, one line per run (named by its key), from records as `metrics.read_metrics`
  returns them; False (and no file) when no run has the metric."""
  curves = {name: [(r['step'], r[metric]) for r in records if metric in r] for name, records in runs.items()}
  curves = {name: points for name, points in curves.items() if points}
  if not curves:
    return False
  figure, axes = plt.subplots(figsize=(6, 4), layout='constrained')
  for name, points in curves.items():
    steps, values = zip(*points)
    axes.plot(steps, values, marker='o' if len(points) < 20 else None, markersize=3, label=name)
  axes.set(xlabel='step', ylabel=metric, title=title or metric)
  if 'loss' in metric and all(v > 0 for points in curves.values() for _, v in points):
    axes.set_yscale('log')  # losses fall by orders of magnitude: the late differences between runs show
  axes.grid(alpha=0.3)
  if len(curves) > 1 or title:
    axes.legend()
  _save(figure, path)
  return True


def attention_maps(weights: np.ndarray, query_tokens: Sequence[str], key_tokens: Sequence[str], path,
                   title: str = '') -> None:
  """One heatmap per head of `weights` [heads, queries, keys] in a grid; tokens label the axes (up to
  `_MAX_LABELS` of them: longer sequences would only show a smear of text)."""
  heads = weights.shape[0]
  columns = min(heads, 4)
  rows = math.ceil(heads / columns)
  size = min(0.25 * max(len(query_tokens), len(key_tokens)) + 1.5, 8.0)  # inches per head
  labelled = max(len(query_tokens), len(key_tokens)) <= _MAX_LABELS
  figure, grid = plt.subplots(rows, columns, figsize=(columns * size + 1, rows * size + 0.6), squeeze=False,
                              layout='constrained')
  for head, axes in enumerate(grid.flat):
    if head >= heads:
      axes.axis('off')
      continue
    image = axes.imshow(weights[head], vmin=0.0, vmax=1.0, cmap='viridis', aspect='auto')
    axes.set_title(f'head {head}', fontsize=9)
    if labelled:
      axes.set_xticks(range(len(key_tokens)), key_tokens, rotation=90, fontsize=7)
      axes.set_yticks(range(len(query_tokens)), query_tokens, fontsize=7)
  figure.colorbar(image, ax=grid.ravel().tolist(), shrink=0.8)
  figure.suptitle(title, fontsize=10)
  _save(figure, path)


def per_layer(rows: Sequence[Mapping], value: str, path, title: str = '') -> None:
  """A horizontal bar per row (a layer or a tensor, labelled by its 'name'), its length the row's `value`."""
  names = [row['name'] for row in rows]
  figure, axes = plt.subplots(figsize=(7, 0.25 * len(rows) + 1.2), layout='constrained')
  axes.barh(range(len(rows)), [row[value] for row in rows], color='tab:blue')
  axes.set_yticks(range(len(rows)), names, fontsize=7)
  axes.invert_yaxis()  # first row on top, as in the table
  axes.set(xlabel=value, title=title or value)
  axes.grid(axis='x', alpha=0.3)
  _save(figure, path)
