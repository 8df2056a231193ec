"""Optimizer and learning-rate schedule from `config.optimizer`, built with optax."""

from __future__ import annotations

import jax
import ml_collections
import optax

from research.config import ConfigError, check_choice

OPTIMIZERS = ('adamw', 'adafactor')
SCHEDULES = ('cosine', 'rsqrt', 'constant')


def schedule(opt: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """Linear warmup to `learning_rate`, then cosine decay to `end_learning_rate_factor` x peak at
  `num_steps`, or inverse-square-root decay (continuous at the end of warmup), or constant."""
  check_choice(opt.schedule, SCHEDULES, 'optimizer.schedule')
  peak, warmup = opt.learning_rate, opt.warmup_steps
  if warmup < 0 or (opt.schedule == 'cosine' and warmup >= num_steps):
    raise ConfigError(f'optimizer.warmup_steps={warmup} must be in [0, train.num_steps={num_steps})')
  warm = optax.linear_schedule(0.0, peak, warmup) if warmup else optax.constant_schedule(peak)
  if opt.schedule == 'cosine':
    decay = optax.cosine_decay_schedule(peak, num_steps - warmup, alpha=opt.end_learning_rate_factor)
  elif opt.schedule == 'rsqrt':
    decay = lambda step: peak * jax.lax.rsqrt((step + max(warmup, 1)) / max(warmup, 1))  # noqa: E731
  else:
    decay = optax.constant_schedule(peak)
  return optax.join_schedules([warm, decay], [warmup])


def decay_mask(params) -> object:
  """Weight decay applies to matrices (kernels, embeddings), not to biases or norm scales."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make(opt: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
  check_choice(opt.name, OPTIMIZERS, 'optimizer.name')
  lr = schedule(opt, num_steps)
  if opt.name == 'adamw':
    core = optax.adamw(lr, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay, mask=decay_mask)
  else:
    # Adafactor as in T5: factored second moments, update clipping, relative step size.
    core = optax.adafactor(lr, decay_rate=opt.adafactor_decay_rate, clipping_threshold=1.0,
                           multiply_by_parameter_scale=opt.multiply_by_parameter_scale,
                           weight_decay_rate=opt.weight_decay or None, weight_decay_mask=decay_mask)
  clip = optax.clip_by_global_norm(opt.grad_clip_norm) if opt.grad_clip_norm > 0 else optax.identity()
  return optax.chain(clip, core)
