"""Knowledge distillation (Hinton et al. 2015): a teacher's softened predictions as extra targets.

The train step runs the teacher on each (micro-)batch inside the same jitted computation and hands its
logits to the objective as `batch['teacher_logits']`; the objective's loss becomes

  (1 - weight) * cross-entropy(student, labels) + weight * temperature^2 * KL(teacher_T || student_T)

over the same scored positions, where `_T` is a softmax at `temperature` (the T^2 keeps the gradient scale
independent of T). The teacher costs one extra forward pass per step and its parameters' memory.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from research.config import ConfigError

Array = jax.Array
OBJECTIVES = ('seq2seq', 'span_corruption', 'causal_lm', 'prefix_lm', 'classify')


@dataclasses.dataclass
class Teacher:
  """A trained model the student learns from: `logits(params, batch)` and its parameters on the student's mesh."""
  logits: Callable[[Any, dict], Array]
  params: Any
  shardings: Any
  workdir: str


def check(config: ml_collections.ConfigDict) -> None:
  distill = config.get('distill')
  if not distill or not distill.teacher_workdir:  # none, or a config saved before distillation existed
    return
  if config.objective.name not in OBJECTIVES:
    raise ConfigError(f'distillation supports objective.name in {", ".join(OBJECTIVES)}, not '
                      f'{config.objective.name!r} (MLM masks inside the loss, where the teacher cannot see them)')
  if not 0 < distill.weight <= 1:
    raise ConfigError(f'distill.weight must be in (0, 1], got {distill.weight}')
  if distill.temperature <= 0:
    raise ConfigError(f'distill.temperature must be positive, got {distill.temperature}')


def kl_divergence(student_logits: Array, teacher_logits: Array, weights: Array, temperature: float) -> Array:
  """Weighted sum over positions of temperature^2 * KL(softmax(teacher/T) || softmax(student/T)).

  Both are compared over the ids they share (a table padded to another multiple has extra, unused ids).
  """
  size = min(student_logits.shape[-1], teacher_logits.shape[-1])
  student = jax.nn.log_softmax(student_logits[..., :size].astype(jnp.float32) / temperature, axis=-1)
  teacher = jax.nn.log_softmax(teacher_logits[..., :size].astype(jnp.float32) / temperature, axis=-1)
  kl = jnp.sum(jnp.exp(teacher) * (teacher - student), axis=-1)
  return temperature ** 2 * jnp.sum(kl * weights)


def mix(loss: Array, metrics: dict, student_logits: Array, batch: dict, weights: Array,
        distill: ml_collections.ConfigDict) -> tuple[Array, dict]:
  """The loss with the teacher term mixed in when the batch carries teacher logits; `loss` is the mean
  cross-entropy over `weights`. Logs both parts."""
  if 'teacher_logits' not in batch:
    return loss, metrics
  kl = kl_divergence(student_logits, batch['teacher_logits'], weights, distill.temperature)
  kl = kl / jnp.maximum(jnp.sum(weights), 1.0)
  mixed = (1 - distill.weight) * loss + distill.weight * kl
  return mixed, {**metrics, 'student_loss': loss, 'distill_kl': kl}
