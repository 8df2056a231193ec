"""The grain input pipeline: shuffle by seed, tokenize, pad or pack, batch, shard by process.

Training order is a pure function of (seed, global step): global batch k holds examples
[k*B, (k+1)*B) of the seeded, per-epoch reshuffled stream, and process p reads its contiguous
slice of it. The iterator's state is therefore the global step alone, whatever the process count.
"""

from __future__ import annotations

import dataclasses

import grain
import grain.experimental
import ml_collections
import numpy as np

from research.data.sources import Records
from research.data.tokenizer import EOS_ID, Tokenizer

# Model features (see Layout.features): segment ids are 0 on padding, positions restart in each packed segment.


@dataclasses.dataclass(frozen=True)
class Layout:
  """How an objective arranges an (input, target) example into model features.

  'seq2seq': input -> encoder, target -> decoder. 'decoder': input and target as one sequence for a
  decoder-only model; with `prefix_lm` the input is a bidirectional prefix and only the target is
  scored, else every token is. 'encoder': the input alone; with `classes`, the target text names the
  label (`classes.index(target)`).
  """
  kind: str
  max_input_length: int
  max_target_length: int
  prefix_lm: bool = False
  classes: tuple[str, ...] = ()
  noise_density: float = 0.0  # > 0: T5 span corruption of the input text (seq2seq)
  mean_noise_span_length: float = 3.0
  first_sentinel: int = 0  # sentinel k is first_sentinel + k (ids past the tokenizer's vocabulary)

  def lengths(self) -> dict[str, int]:
    """Per-token arrays and their maximum lengths (what packing packs)."""
    if self.kind == 'seq2seq':
      return {'inputs': self.max_input_length, 'targets': self.max_target_length}
    if self.kind == 'decoder':
      total = self.max_input_length + self.max_target_length
      return {'targets': total, 'prefix': total, 'scored': total}
    return {'inputs': self.max_input_length}

  def arrange(self, inputs: np.ndarray, targets: np.ndarray, target_text: str) -> dict:
    if self.kind == 'seq2seq':
      return {'inputs': inputs, 'targets': targets}
    if self.kind == 'decoder':
      # The input's EOS separates it from the target. Decoder inputs are shifted right by one, so
      # positions 0..len(inputs) read only the input: that is the bidirectional prefix.
      prefix = np.zeros(len(inputs) + len(targets), np.int32)
      prefix[:len(inputs) + 1] = 1
      scored = np.ones_like(prefix)
      if self.prefix_lm:
        scored[:len(inputs)] = 0
      return {'targets': np.concatenate([inputs, targets]), 'prefix': prefix, 'scored': scored}
    example = {'inputs': inputs}
    if self.classes:
      if target_text not in self.classes:
        raise ValueError(f'label {target_text!r} is not one of data.classes {self.classes}')
      example['label'] = np.int32(self.classes.index(target_text))
    return example

  def corrupt(self, example: dict, rng: np.random.Generator) -> dict:
    """T5 span corruption: noise spans of the input become sentinels; the target lists them."""
    inputs, targets = span_corruption(example['inputs'][:-1], self.noise_density, self.mean_noise_span_length,
                                      self.first_sentinel, rng)
    return {'inputs': _ids(inputs, self.max_input_length), 'targets': _ids(targets, self.max_target_length)}

  def empty(self) -> dict:
    example = {key: np.zeros([0], np.int32) for key in self.lengths()}
    if self.kind == 'encoder' and self.classes:
      example['label'] = np.int32(0)
    return example

  def features(self, batch: dict) -> dict:
    """Packed-layout arrays -> model features; decoder inputs are targets shifted right per segment."""
    out = {}
    if 'inputs' in batch:
      out.update(encoder_input_tokens=batch['inputs'], encoder_segment_ids=batch['inputs_segment_ids'],
                 encoder_positions=batch['inputs_positions'])
    if 'label' in batch:
      out['label'] = batch['label']
    if 'targets' in batch:
      targets = batch['targets']
      shifted = np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
      weights = (batch['targets_segment_ids'] > 0) & (batch.get('scored', 1) > 0)
      if 'prefix' in batch:
        out['decoder_prompt'] = batch['prefix']  # decoder inputs that come from the input text
      if self.prefix_lm:
        out['decoder_causal_attention'] = batch['prefix']
      out.update(decoder_input_tokens=np.where(batch['targets_positions'] == 0, 0, shifted).astype(np.int32),
                 decoder_target_tokens=targets, decoder_segment_ids=batch['targets_segment_ids'],
                 decoder_positions=batch['targets_positions'], decoder_loss_weights=weights.astype(np.float32))
    return out


@dataclasses.dataclass(frozen=True)
class Encode(grain.transforms.Map):
  """{'input', 'target'} text -> token arrays ending in EOS, truncated, arranged by the layout.

  A decoder-only layout drops an empty input, so a text corpus trains as plain language modelling."""
  tokenizer: Tokenizer
  layout: Layout

  def map(self, example):
    inputs = _ids(self.tokenizer.encode(example['input']), self.layout.max_input_length)
    if self.layout.kind == 'decoder' and not example['input']:
      inputs = inputs[:0]  # language modelling (data.input_key=''): the text alone, from the start token
    targets = _ids(self.tokenizer.encode(example['target']), self.layout.max_target_length)
    return self.layout.arrange(inputs, targets, example['target'])


@dataclasses.dataclass(frozen=True)
class SpanCorrupt(grain.transforms.RandomMap):
  layout: Layout

  def random_map(self, example, rng: np.random.Generator):
    return self.layout.corrupt(example, rng)


def _ids(ids, length: int) -> np.ndarray:
  return np.asarray(list(ids)[:length - 1] + [EOS_ID], np.int32)


def num_noise_spans(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
  """(noise tokens, noise spans) for a sequence of `length` tokens, as T5 rounds them."""
  noise = min(max(int(round(length * noise_density)), 1), length - 1)
  return noise, max(int(round(noise / mean_noise_span_length)), 1)


def random_spans_noise_mask(length: int, noise_density: float, mean_noise_span_length: float,
                            rng: np.random.Generator) -> np.ndarray:
  """T5's noise mask: alternating non-noise / noise spans with random lengths; starts with non-noise."""
  noise, spans = num_noise_spans(length, noise_density, mean_noise_span_length)

  def segment_lengths(items: int) -> np.ndarray:  # `items` split at random into `spans` non-empty parts
    cuts = np.sort(rng.choice(np.arange(1, items), spans - 1, replace=False)) if spans > 1 else np.array([], int)
    return np.diff(np.concatenate([[0], cuts, [items]]))
  interleaved = np.stack([segment_lengths(length - noise), segment_lengths(noise)], axis=1).reshape(-1)
  return np.repeat(np.arange(len(interleaved)) % 2 == 1, interleaved)


def span_corruption(tokens: np.ndarray, noise_density: float, mean_noise_span_length: float, first_sentinel: int,
                    rng: np.random.Generator) -> tuple[list[int], list[int]]:
  """(inputs, targets) without EOS: each noise span of `tokens` becomes one sentinel in the inputs, and
  the targets are each sentinel followed by the span it replaced."""
  tokens = [int(t) for t in tokens]
  if len(tokens) < 2:
    return tokens, []
  noise = random_spans_noise_mask(len(tokens), noise_density, mean_noise_span_length, rng)
  inputs, targets, sentinel = [], [], first_sentinel - 1
  for i, (token, is_noise) in enumerate(zip(tokens, noise)):
    starts_span = is_noise and (i == 0 or not noise[i - 1])
    sentinel += starts_span
    if is_noise:
      if starts_span:
        inputs.append(sentinel)
        targets.append(sentinel)
      targets.append(token)
    else:
      inputs.append(token)
  return inputs, targets


def pad_example(example: dict, lengths: dict[str, int]) -> dict:
  """One example padded to fixed lengths, in the packed layout (one segment)."""
  out = {k: v for k, v in example.items() if k not in lengths}
  for key, length in lengths.items():
    n = len(example[key])
    out[key] = np.pad(example[key], (0, length - n))
    out[f'{key}_segment_ids'] = (np.arange(length) < n).astype(np.int32)
    out[f'{key}_positions'] = np.where(np.arange(length) < n, np.arange(length), 0).astype(np.int32)
  return out


def _eval_example(encode: Encode, records: Records, index: int) -> dict:
  """Example `index` (-1: padding); its span corruption, if any, depends on the index alone."""
  if index < 0:
    return encode.layout.empty()
  example = encode.map(records[index])
  return encode.layout.corrupt(example, np.random.default_rng(index)) if encode.layout.noise_density else example


def local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size % process_count:
    raise ValueError(f'batch size {global_batch_size} is not divisible by the {process_count} processes')
  return global_batch_size // process_count


def train_iterator(records: Records, tokenizer: Tokenizer, data: ml_collections.ConfigDict, layout: Layout, *,
                   global_batch_size: int, seed: int, process_index: int = 0, process_count: int = 1):
  """An endless, checkpointable iterator of this process's share of each global training batch."""
  batch_size = local_batch_size(global_batch_size, process_count)
  examples = grain.MapDataset.source(records).shuffle(seed=seed).repeat().map(Encode(tokenizer, layout))
  if layout.noise_density:
    examples = examples.random_map(SpanCorrupt(layout), seed=seed)
  if data.pack:
    # Packing consumes a variable number of examples per batch, so each process packs its own
    # interleaved share of the stream.
    ds = grain.experimental.FirstFitPackIterDataset(
        examples[process_index::process_count].to_iter_dataset(),
        length_struct=layout.lengths(),
        num_packing_bins=batch_size, seed=seed)
    ds = ds.batch(batch_size, drop_remainder=True)
  else:
    padded = examples.map(lambda ex: pad_example(ex, layout.lengths()))
    ds = padded.batch(batch_size, drop_remainder=True)[process_index::process_count].to_iter_dataset(
        grain.ReadOptions(num_threads=data.read_threads, prefetch_buffer_size=8 * data.read_threads))
  return iter(ds.map(layout.features))


def eval_batches(records: Records, tokenizer: Tokenizer, layout: Layout, *, global_batch_size: int, num_examples: int, process_index: int = 0, process_count: int = 1):
  """The first `num_examples` (0 = all) of `records`, in order, as this process's share of each batch.

  Every process yields the same number of batches (collectives need that); slots past the end are
  padding with `example_index` -1 and zero segment ids, so they weigh nothing in any metric.
  """
  batch_size = local_batch_size(global_batch_size, process_count)
  total = len(records) if num_examples <= 0 else min(num_examples, len(records))
  encode = Encode(tokenizer, layout)
  for start in range(0, total, global_batch_size):
    first = start + process_index * batch_size
    indices = [i if i < total else -1 for i in range(first, first + batch_size)]
    examples = [pad_example(_eval_example(encode, records, i), layout.lengths()) for i in indices]
    batch = layout.features({k: np.stack([ex[k] for ex in examples]) for k in examples[0]})
    batch['example_index'] = np.asarray(indices, np.int32)
    yield batch
