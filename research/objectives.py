"""Objectives: how examples are laid out, how a batch is scored, what evaluation reports.

An objective wraps a model and exposes the pure functions the trainer needs:
`loss_fn(params, batch, rng) -> (loss, metrics)` for training (the loss is a mean over
`metrics['loss_weight']` scored items, so micro-batches combine exactly; a batch with `teacher_logits` adds
the distillation term, see `distill.py`) and `eval_fn(params, batch) ->
(sums, predictions)` for evaluation, plus `layout` (for the data pipeline) and `summarize(sums)`.
Adding an objective touches no training code.

| objective  | family          | layout   | trained on                          | evaluation                         |
| seq2seq    | encoder_decoder | seq2seq  | target given the input              | loss, token accuracy, exact match, BLEU, chrF |
| span_corruption | encoder_decoder | seq2seq | T5: noise spans of the input text, each replaced by a sentinel | loss, token accuracy, exact match |
| causal_lm  | decoder_only    | decoder  | every token of input + target       | loss, accuracy, exact match of the continuation, BLEU, chrF |
| prefix_lm  | decoder_only    | decoder  | target; bidirectional over input    | loss, accuracy, exact match, BLEU, chrF |
| mlm        | encoder_only    | encoder  | 15% of tokens: 80% mask/10% random/10% kept | loss, accuracy of masked tokens |
| classify   | encoder_only    | encoder  | the target text as a class label    | accuracy, precision, recall, macro-F1 |

Objectives whose predictions are the target text (`generates_text`) are also scored with BLEU and chrF
against the records' targets (`train.evaluate`, `metrics.generation_scores`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research import decoding, distill
from research.config import ConfigError, check_choice
from research.data import pipeline
from research.data.pipeline import Layout
from research.data.tokenizer import EOS_ID, Tokenizer
from research.metrics import classification_summary, token_summary

Array = jax.Array
FAMILY_OF = {'seq2seq': 'encoder_decoder', 'span_corruption': 'encoder_decoder', 'causal_lm': 'decoder_only', 'prefix_lm': 'decoder_only',
             'mlm': 'encoder_only', 'classify': 'encoder_only'}


def cross_entropy(logits: Array, targets: Array, weights: Array, label_smoothing: float = 0.0,
                  z_loss: float = 0.0) -> tuple[Array, Array, Array]:
  """Token-level cross-entropy in float32 -> (weighted loss sum, weighted correct count, weight sum).

  Label smoothing spreads `label_smoothing` of the target mass uniformly over the vocabulary;
  `z_loss` adds z_loss * log(Z)^2 to keep the softmax normaliser near 1 (as in PaLM / T5X).
  """
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  log_probs = logits - log_z[..., None]
  nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  if label_smoothing:
    nll = (1 - label_smoothing) * nll - label_smoothing * jnp.mean(log_probs, axis=-1)
  loss = nll + z_loss * jnp.square(log_z)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return jnp.sum(loss * weights), jnp.sum(correct * weights), jnp.sum(weights)


class Objective:
  """Shared plumbing: the model, label smoothing and z-loss, initialisation, the train-step loss."""
  layout_kind = ''
  generates_text = False  # whether `describe(prediction)` is the target text (scored with BLEU and chrF)

  def __init__(self, model: nn.Module, config: ml_collections.ConfigDict):
    self.model = model
    self.config = config
    self.label_smoothing = config.objective.label_smoothing
    self.z_loss = config.objective.z_loss

  @property
  def layout(self) -> Layout:
    data = self.config.data
    return Layout(self.layout_kind, data.max_input_length, data.max_target_length)

  def init(self, rng: Array, batch: dict) -> dict:
    """Boxed (logically partitioned) parameters for a batch of this shape."""
    return self.model.init({'params': rng}, batch, deterministic=True)['params']

  def logits(self, params, batch: dict, rng: Array | None) -> Array:
    if rng is None:
      return self.model.apply({'params': params}, batch, deterministic=True)
    return self.model.apply({'params': params}, batch, deterministic=False, rngs={'dropout': rng})

  def token_loss(self, params, batch: dict, rng: Array | None) -> tuple[Array, dict]:
    """Mean cross-entropy of the decoder targets, with the counts the trainer logs."""
    logits = self.logits(params, batch, rng)
    weights = batch['decoder_loss_weights']
    loss_sum, correct, weight = cross_entropy(logits, batch['decoder_target_tokens'], weights,
                                              self.label_smoothing, self.z_loss)
    weight = jnp.maximum(weight, 1.0)
    return distill.mix(loss_sum / weight, {'accuracy': correct / weight, 'target_tokens': weight,
                                           'loss_weight': weight, 'input_tokens': _count(batch, 'encoder_segment_ids')},
                       logits, batch, weights, self.config.get('distill'))

  def loss_fn(self, params, batch: dict, rng: Array) -> tuple[Array, dict]:
    return self.token_loss(params, batch, rng)

  def summarize(self, sums: dict) -> dict[str, float]:
    return token_summary(sums)

  def describe(self, tokenizer: Tokenizer, prediction: np.ndarray) -> str:
    return tokenizer.decode(prediction)


def _count(batch: dict, key: str) -> Array:
  return jnp.sum(batch[key] > 0) if key in batch else jnp.zeros((), jnp.int32)


def _exact(predictions: Array, targets: Array, scored: Array) -> Array:
  """Per example: do predictions equal targets on every scored position?"""
  return jnp.all((predictions == targets) | ~scored, axis=1)


class Seq2Seq(Objective):
  """Supervised sequence-to-sequence (or T5 span corruption of the input text): teacher-forced
  cross-entropy; greedy decodes for exact match. Span-corruption sentinels are the ids right after
  the tokenizer's vocabulary."""
  layout_kind = 'seq2seq'

  def __init__(self, model: nn.Module, config: ml_collections.ConfigDict, tokenizer_vocab_size: int):
    super().__init__(model, config)
    self.first_sentinel = tokenizer_vocab_size

  @property
  def generates_text(self) -> bool:
    """Span corruption generates the hidden spans between sentinels, not the records' target text."""
    return self.config.objective.name != 'span_corruption'

  @property
  def layout(self) -> Layout:
    data, objective = self.config.data, self.config.objective
    if objective.name != 'span_corruption':
      return super().layout
    return Layout('seq2seq', data.max_input_length, data.max_target_length, noise_density=objective.noise_density,
                  mean_noise_span_length=objective.mean_noise_span_length, first_sentinel=self.first_sentinel)

  def describe(self, tokenizer: Tokenizer, prediction: np.ndarray) -> str:
    """Decoded text, with span-corruption sentinels shown as <extra_id_k> (as in T5)."""
    pieces, chunk = [], []
    for token in [int(t) for t in np.asarray(prediction)]:
      if token == EOS_ID:
        break
      if token >= self.first_sentinel:
        pieces += [tokenizer.decode(chunk), f'<extra_id_{token - self.first_sentinel}>']
        chunk = []
      else:
        chunk.append(token)
    return ''.join(pieces + [tokenizer.decode(chunk)])

  def predict(self, params, batch: dict) -> Array:
    """Greedy decodes [batch, max_target_length], EOS-terminated and zero-padded."""
    size = batch['encoder_input_tokens'].shape[0]
    prompts = decoding.Prompts(jnp.zeros((size, 1), jnp.int32), jnp.ones((size,), jnp.int32),
                               jnp.zeros((size,), jnp.int32), batch.get('example_index', jnp.arange(size)),
                               batch['encoder_input_tokens'],
                               batch['encoder_segment_ids'], batch['encoder_positions'])
    options = decoding.Options(max_new_tokens=self.config.data.max_target_length)
    return decoding.generate(self.model, options, params, prompts).tokens

  def eval_fn(self, params, batch: dict) -> tuple[dict, Array]:
    """Metric sums over the batch (so they add up across batches and devices), and the predictions."""
    logits = self.logits(params, batch, None)
    targets = batch['decoder_target_tokens']
    loss_sum, correct, weight = cross_entropy(logits, targets, batch['decoder_loss_weights'])
    predictions = self.predict(params, batch)
    real = (batch['example_index'] >= 0).astype(jnp.float32)
    exact = _exact(predictions, targets, jnp.ones_like(targets, bool))
    return {'loss': loss_sum, 'correct_tokens': correct, 'target_tokens': weight,
            'exact_match': jnp.sum(exact * real), 'examples': jnp.sum(real)}, predictions


class LanguageModel(Objective):
  """Decoder-only LM on input + target; `prefix_lm` scores only the target and sees the input bidirectionally."""
  layout_kind = 'decoder'

  @property
  def generates_text(self) -> bool:
    """Continues each input; plain text (data.input_key='': no prompt) is scored by perplexity, not decoded."""
    return bool(self.config.data.input_key)

  @property
  def layout(self) -> Layout:
    data = self.config.data
    return Layout('decoder', data.max_input_length, data.max_target_length,
                  prefix_lm=self.config.objective.name == 'prefix_lm')

  def eval_fn(self, params, batch: dict) -> tuple[dict, Array]:
    logits = self.logits(params, batch, None)
    targets = batch['decoder_target_tokens']
    loss_sum, correct, weight = cross_entropy(logits, targets, batch['decoder_loss_weights'])
    prompt = batch['decoder_prompt']
    if self.generates_text:
      predictions = self.continue_prompts(params, batch)
    else:  # the teacher-forced next-token guesses: free, where greedy decoding from nothing would not be
      predictions = jnp.where(batch['decoder_loss_weights'] > 0, jnp.argmax(logits, axis=-1), 0)
    # Position i predicts token i + 1 of the decoder input: the model generates where that is no prompt.
    continuation = jnp.concatenate([prompt[:, 1:], jnp.zeros_like(prompt[:, :1])], axis=1) == 0
    real = (batch['example_index'] >= 0).astype(jnp.float32)
    exact = _exact(predictions, targets, continuation & (batch['decoder_segment_ids'] > 0))
    return {'loss': loss_sum, 'correct_tokens': correct, 'target_tokens': weight,
            'exact_match': jnp.sum(exact * real), 'examples': jnp.sum(real)}, predictions

  def continue_prompts(self, params, batch: dict) -> Array:
    """Greedy continuations of the prompts (the decoder inputs marked by `decoder_prompt`), aligned with the
    decoder targets: position i holds the token generated after reading position i, 0 where none was."""
    data = self.config.data
    width = data.max_input_length + 1  # the start token, the input and its EOS
    prompt = batch['decoder_prompt'][:, :width] > 0
    lengths = jnp.maximum(jnp.sum(prompt, axis=1), 1)
    prefix = lengths if 'decoder_causal_attention' in batch else jnp.zeros_like(lengths)
    prompts = decoding.Prompts(jnp.where(prompt, batch['decoder_input_tokens'][:, :width], 0), lengths, prefix,
                               batch['example_index'])
    steps = data.max_target_length
    generated = decoding.generate(self.model, decoding.Options(max_new_tokens=steps), params, prompts).tokens
    offset = jnp.arange(batch['decoder_input_tokens'].shape[1])[None, :] - (lengths - 1)[:, None]
    aligned = jnp.take_along_axis(generated, jnp.clip(offset, 0, steps - 1), axis=1)
    return jnp.where((offset >= 0) & (offset < steps), aligned, 0)

  def describe(self, tokenizer: Tokenizer, prediction: np.ndarray) -> str:
    return tokenizer.decode([t for t in np.asarray(prediction) if t])


class MaskedLM(Objective):
  """BERT's masked-LM: 15% of real tokens are scored; of those 80% become [MASK], 10% a random token, 10% stay.

  Masking happens on device from the step's RNG, so it is reproducible and resumes exactly. [MASK]
  is the first id past the tokenizer's vocabulary (the model's table has room for it).
  """
  layout_kind = 'encoder'
  extra_tokens = 1

  def __init__(self, model: nn.Module, config: ml_collections.ConfigDict, tokenizer_vocab_size: int):
    super().__init__(model, config)
    self.mask_id = tokenizer_vocab_size
    self.rate = config.objective.mask_rate

  def corrupt(self, rng: Array, batch: dict) -> tuple[dict, Array]:
    tokens = batch['encoder_input_tokens']
    choose, replace, random_ids = jax.random.split(rng, 3)
    maskable = (batch['encoder_segment_ids'] > 0) & (tokens != EOS_ID)
    selected = maskable & (jax.random.uniform(choose, tokens.shape) < self.rate)
    r = jax.random.uniform(replace, tokens.shape)
    random_tokens = jax.random.randint(random_ids, tokens.shape, EOS_ID + 2, self.mask_id)
    corrupted = jnp.where(selected & (r < 0.8), self.mask_id, jnp.where(selected & (r < 0.9), random_tokens, tokens))
    return {**batch, 'encoder_input_tokens': corrupted}, selected

  def _scores(self, params, batch: dict, corrupted: dict, selected: Array, dropout_rng: Array | None):
    logits = self.logits(params, corrupted, dropout_rng)
    return logits, cross_entropy(logits, batch['encoder_input_tokens'], selected.astype(jnp.float32),
                                 self.label_smoothing, self.z_loss)

  def loss_fn(self, params, batch: dict, rng: Array) -> tuple[Array, dict]:
    mask_rng, dropout_rng = jax.random.split(rng)
    _, (loss_sum, correct, weight) = self._scores(params, batch, *self.corrupt(mask_rng, batch), dropout_rng)
    weight = jnp.maximum(weight, 1.0)
    return loss_sum / weight, {'accuracy': correct / weight, 'target_tokens': weight, 'loss_weight': weight,
                               'input_tokens': _count(batch, 'encoder_segment_ids')}

  def eval_fn(self, params, batch: dict) -> tuple[dict, Array]:
    # Each example's masks come from its index alone: the same at every evaluation, whatever the batch size,
    # the example's row or the mesh, so evaluations compare.
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.PRNGKey(0), batch['example_index'])
    corrupted, selected = jax.vmap(self.corrupt)(keys, batch)
    logits, (loss_sum, correct, weight) = self._scores(params, batch, corrupted, selected, None)
    real = (batch['example_index'] >= 0).astype(jnp.float32)
    predictions = jnp.where(batch['encoder_segment_ids'] > 0, jnp.argmax(logits, axis=-1), 0)
    return {'loss': loss_sum, 'correct_tokens': correct, 'target_tokens': weight,
            'examples': jnp.sum(real)}, predictions

  def describe(self, tokenizer: Tokenizer, prediction: np.ndarray) -> str:
    return tokenizer.decode([t for t in np.asarray(prediction) if 0 < t < self.mask_id])


class Classify(Objective):
  """Sequence classification from the encoder's pooled output; the target text names the class."""
  layout_kind = 'encoder'

  def __init__(self, model: nn.Module, config: ml_collections.ConfigDict):
    super().__init__(model, config)
    self.classes = tuple(config.data.classes)
    if config.data.pack:
      raise ConfigError('classification reads one label per row: set data.pack=False')
    if len(self.classes) != config.model.num_classes:
      raise ConfigError(f'data.classes has {len(self.classes)} names but model.num_classes='
                        f'{config.model.num_classes}; make them agree')

  @property
  def layout(self) -> Layout:
    data = self.config.data
    return Layout('encoder', data.max_input_length, data.max_target_length, classes=self.classes)

  def loss_fn(self, params, batch: dict, rng: Array) -> tuple[Array, dict]:
    logits = self.logits(params, batch, rng)
    real = (batch['encoder_segment_ids'][:, 0] > 0).astype(jnp.float32)
    loss_sum, correct, weight = cross_entropy(logits, batch['label'], real, self.label_smoothing, self.z_loss)
    weight = jnp.maximum(weight, 1.0)
    return distill.mix(loss_sum / weight, {'accuracy': correct / weight, 'target_tokens': jnp.zeros(()),
                                           'loss_weight': weight, 'input_tokens': _count(batch, 'encoder_segment_ids')},
                       logits, batch, real, self.config.get('distill'))

  def eval_fn(self, params, batch: dict) -> tuple[dict, Array]:
    logits = self.logits(params, batch, None)
    real = (batch['example_index'] >= 0).astype(jnp.float32)
    loss_sum, _, _ = cross_entropy(logits, batch['label'], real)
    predictions = jnp.argmax(logits, axis=-1)
    count = len(self.classes)
    confusion = jnp.zeros((count, count)).at[batch['label'], predictions].add(real)
    return {'loss': loss_sum, 'confusion': confusion}, predictions

  def summarize(self, sums: dict) -> dict[str, float]:
    summary = classification_summary(sums['confusion'])
    return {'loss': float(sums['loss']) / max(summary['examples'], 1.0), **summary}

  def describe(self, tokenizer: Tokenizer, prediction: np.ndarray) -> str:
    return self.classes[int(prediction)]


def check_family(config: ml_collections.ConfigDict) -> None:
  name = config.objective.name
  check_choice(name, tuple(FAMILY_OF), 'objective.name')
  if FAMILY_OF[name] != config.model.family:
    raise ConfigError(f'objective.name={name!r} needs model.family={FAMILY_OF[name]!r}, not {config.model.family!r}')
  if name == 'classify' and config.model.head != 'classifier' or name == 'mlm' and config.model.head != 'mlm':
    raise ConfigError(f"objective.name={name!r} needs model.head={'classifier' if name == 'classify' else 'mlm'!r}")


def extra_tokens(config: ml_collections.ConfigDict) -> int:
  """Ids the objective needs beyond the tokenizer's vocabulary: [MASK] for MLM, the sentinels of span corruption."""
  if config.objective.name == 'span_corruption':
    objective = config.objective
    if not 0 < objective.noise_density < 1 or objective.mean_noise_span_length < 1:
      raise ConfigError('span corruption needs 0 < objective.noise_density < 1 and objective.mean_noise_span_length >= 1')
    return pipeline.num_noise_spans(config.data.max_input_length, objective.noise_density,
                                    objective.mean_noise_span_length)[1]
  return MaskedLM.extra_tokens if config.objective.name == 'mlm' else 0


def build(config: ml_collections.ConfigDict, model: nn.Module, tokenizer_vocab_size: int) -> Objective:
  check_family(config)
  name = config.objective.name
  if name in ('seq2seq', 'span_corruption'):
    return Seq2Seq(model, config, tokenizer_vocab_size)
  if name in ('causal_lm', 'prefix_lm'):
    return LanguageModel(model, config)
  if name == 'mlm':
    return MaskedLM(model, config, tokenizer_vocab_size)
  return Classify(model, config)
