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

# What the models read; segment ids are 0 on padding, positions restart in each packed segment.
FEATURES = ('encoder_input_tokens', 'encoder_segment_ids', 'encoder_positions', 'decoder_input_tokens',
            'decoder_target_tokens', 'decoder_segment_ids', 'decoder_positions', 'decoder_loss_weights')


@dataclasses.dataclass(frozen=True)
class Encode(grain.transforms.Map):
  """{'input', 'target'} text -> token arrays ending in EOS, truncated to the configured lengths."""
  tokenizer: Tokenizer
  max_input_length: int
  max_target_length: int

  def map(self, example):
    return {'inputs': _ids(self.tokenizer.encode(example['input']), self.max_input_length),
            'targets': _ids(self.tokenizer.encode(example['target']), self.max_target_length)}


def _ids(ids: list[int], length: int) -> np.ndarray:
  return np.asarray(ids[:length - 1] + [EOS_ID], np.int32)


def pad_example(example: dict, input_length: int, target_length: int) -> dict:
  """One example padded to fixed lengths, in the packed layout (one segment)."""
  out = {}
  for key, length in (('inputs', input_length), ('targets', target_length)):
    n = len(example[key])
    out[key] = np.pad(example[key], (0, length - n))
    out[f'{key}_segment_ids'] = (np.arange(length) < n).astype(np.int32)
    out[f'{key}_positions'] = np.where(np.arange(length) < n, np.arange(length), 0).astype(np.int32)
  return out


def model_features(batch: dict) -> dict:
  """Packed-layout arrays -> model features; the decoder input is the target shifted right per segment."""
  targets = batch['targets']
  shifted = np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
  decoder_input = np.where(batch['targets_positions'] == 0, 0, shifted)
  return {
      'encoder_input_tokens': batch['inputs'],
      'encoder_segment_ids': batch['inputs_segment_ids'],
      'encoder_positions': batch['inputs_positions'],
      'decoder_input_tokens': decoder_input.astype(np.int32),
      'decoder_target_tokens': targets,
      'decoder_segment_ids': batch['targets_segment_ids'],
      'decoder_positions': batch['targets_positions'],
      'decoder_loss_weights': (batch['targets_segment_ids'] > 0).astype(np.float32),
  }


def local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size % process_count:
    raise ValueError(f'batch size {global_batch_size} is not divisible by the {process_count} processes')
  return global_batch_size // process_count


def train_iterator(records: Records, tokenizer: Tokenizer, data: ml_collections.ConfigDict, *,
                   global_batch_size: int, seed: int, process_index: int = 0, process_count: int = 1):
  """An endless, checkpointable iterator of this process's share of each global training batch."""
  batch_size = local_batch_size(global_batch_size, process_count)
  encode = Encode(tokenizer, data.max_input_length, data.max_target_length)
  examples = grain.MapDataset.source(records).shuffle(seed=seed).repeat().map(encode)
  if data.pack:
    # Packing consumes a variable number of examples per batch, so each process packs its own
    # interleaved share of the stream.
    ds = grain.experimental.FirstFitPackIterDataset(
        examples[process_index::process_count].to_iter_dataset(),
        length_struct={'inputs': data.max_input_length, 'targets': data.max_target_length},
        num_packing_bins=batch_size, seed=seed)
    ds = ds.batch(batch_size, drop_remainder=True)
  else:
    padded = examples.map(lambda ex: pad_example(ex, data.max_input_length, data.max_target_length))
    ds = padded.batch(batch_size, drop_remainder=True)[process_index::process_count].to_iter_dataset(
        grain.ReadOptions(num_threads=data.read_threads, prefetch_buffer_size=8 * data.read_threads))
  return iter(ds.map(model_features))


def eval_batches(records: Records, tokenizer: Tokenizer, data: ml_collections.ConfigDict, *,
                 global_batch_size: int, num_examples: int, process_index: int = 0, process_count: int = 1):
  """The first `num_examples` (0 = all) of `records`, in order, as this process's share of each batch.

  Every process yields the same number of batches (collectives need that); slots past the end are
  padding with `example_index` -1 and zero segment ids, so they weigh nothing in any metric.
  """
  batch_size = local_batch_size(global_batch_size, process_count)
  total = len(records) if num_examples <= 0 else min(num_examples, len(records))
  encode = Encode(tokenizer, data.max_input_length, data.max_target_length)
  empty = {'inputs': np.zeros([0], np.int32), 'targets': np.zeros([0], np.int32)}
  for start in range(0, total, global_batch_size):
    first = start + process_index * batch_size
    indices = [i if i < total else -1 for i in range(first, first + batch_size)]
    examples = [pad_example(encode.map(records[i]) if i >= 0 else empty, data.max_input_length,
                            data.max_target_length) for i in indices]
    batch = model_features({k: np.stack([ex[k] for ex in examples]) for k in examples[0]})
    batch['example_index'] = np.asarray(indices, np.int32)
    yield batch
