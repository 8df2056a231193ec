"""The embedded task, the file source, tokenizers and the grain pipeline."""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from research.config import ConfigError
from research.data import number_words, pipeline, sources, tokenizer as tokenizer_lib


def _words_to_number(words: str) -> int:
  """An independent parser of the task's English, to check the generator's labels."""
  units = {w: i for i, w in enumerate(number_words._UNITS)}
  tens = {w: 10 * (i + 2) for i, w in enumerate(number_words._TENS)}
  total = current = 0
  for word in words.split():
    for part in word.split('-'):
      if part in units:
        current += units[part]
      elif part in tens:
        current += tens[part]
      elif part == 'hundred':
        current *= 100
      else:
        total += current * {'thousand': 1000, 'million': 10**6}[part]
        current = 0
  return total + current


def test_number_words_are_correct():
  rng = np.random.default_rng(0)
  for n in list(range(0, 1100)) + [int(x) for x in rng.integers(0, 10**7, 2000)]:
    assert _words_to_number(number_words.to_words(n)) == n


def test_prepared_splits_do_not_overlap(config):
  """Every prepared example, read in bulk by TFDS's own reader (one at a time takes ~10x longer)."""
  targets = {}
  for split in ('train', 'validation', 'test'):
    source = tfds.data_source(config.data.name, split=split, data_dir=config.data.data_dir)
    examples = source.__getitems__(list(range(len(source))))
    targets[split] = {example['target'] for example in examples}
    assert len(targets[split]) == len(examples) > 0  # no duplicates within a split either
    for example in examples[::997]:
      assert str(_words_to_number(example['input'].decode())) == example['target'].decode()
  assert not targets['train'] & targets['validation']
  assert not targets['train'] & targets['test']
  assert not targets['validation'] & targets['test']


def _batches(config, seed, count, process_index=0, process_count=1, batch_size=8):
  records = sources.open_split(config.data, 'train')
  tokenizer = sources.tokenizer_for(config.data, records)
  layout = pipeline.Layout('seq2seq', config.data.max_input_length, config.data.max_target_length)
  it = pipeline.train_iterator(records, tokenizer, config.data, layout, global_batch_size=batch_size, seed=seed,
                               process_index=process_index, process_count=process_count)
  return [next(it) for _ in range(count)]


def test_same_seed_same_batches_and_another_seed_differs(config):
  a, b, c = _batches(config, 0, 3), _batches(config, 0, 3), _batches(config, 1, 3)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  assert not np.array_equal(a[0]['encoder_input_tokens'], c[0]['encoder_input_tokens'])


def test_process_shards_tile_the_global_batch(config):
  whole = _batches(config, 0, 2)
  halves = [_batches(config, 0, 2, process_index=p, process_count=2, batch_size=8) for p in range(2)]
  for step in range(2):
    stacked = np.concatenate([halves[0][step]['encoder_input_tokens'], halves[1][step]['encoder_input_tokens']])
    np.testing.assert_array_equal(stacked, whole[step]['encoder_input_tokens'])


def test_batch_layout_shift_right_and_weights(config):
  batch = _batches(config, 0, 1)[0]
  targets, inputs = batch['decoder_target_tokens'], batch['decoder_input_tokens']
  np.testing.assert_array_equal(inputs[:, 0], 0)
  np.testing.assert_array_equal(inputs[:, 1:], np.where(batch['decoder_positions'][:, 1:] == 0, 0, targets[:, :-1]))
  np.testing.assert_array_equal(batch['decoder_loss_weights'], targets != 0)
  assert all(tokenizer_lib.EOS_ID in row for row in targets)


def test_packing_keeps_every_example_and_restarts_positions(config):
  config.data.update(pack=True, max_input_length=64, max_target_length=32)
  packed = _batches(config, 0, 1)[0]
  segments, positions = packed['encoder_segment_ids'], packed['encoder_positions']
  assert segments.max() > 1  # several examples share a row
  for row in range(len(segments)):
    for seg in set(segments[row]) - {0}:
      np.testing.assert_array_equal(positions[row][segments[row] == seg], np.arange((segments[row] == seg).sum()))
  # The decoder input restarts (0) at the first position of every packed target.
  starts = packed['decoder_positions'] == 0
  assert (packed['decoder_input_tokens'][starts] == 0).all()


def test_tokenizers_round_trip(config):
  records = sources.open_split(config.data, 'train')
  spm = sources.tokenizer_for(config.data, records)
  for tok in (spm, tokenizer_lib.ByteTokenizer()):
    for i in range(20):
      text = records[i]['input']
      ids = tok.encode(text) + [tokenizer_lib.EOS_ID, 7, 7]
      assert tok.decode(ids) == text
  assert tokenizer_lib.ByteTokenizer().decode(tokenizer_lib.ByteTokenizer().encode('héllo')) == 'héllo'


def test_a_given_vocabulary_file_is_used_as_it_is(config, tmp_path):
  records = sources.open_split(config.data, 'train')
  trained = sources.tokenizer_for(config.data, records)
  (tmp_path / 'spiece.model').write_bytes(trained.serialized)
  config.data.vocab_file = str(tmp_path / 'spiece.model')
  assert sources.tokenizer_for(config.data, []).serialized == trained.serialized  # no training data needed
  config.data.vocab_file = str(tmp_path / 'missing.model')
  with pytest.raises(ConfigError, match='missing.model.* does not exist'):
    sources.tokenizer_for(config.data, [])


def test_user_files_tsv_and_jsonl(tmp_path, config):
  (tmp_path / 'train.tsv').write_text('one two\t12\nthree\t3\n')
  (tmp_path / 'eval.jsonl').write_text(json.dumps({'input': 'four', 'target': '4'}) + '\n')
  config.data.update(source='files', train_files=str(tmp_path / 'train.tsv'), eval_files=str(tmp_path / 'eval.jsonl'),
                     tokenizer='bytes')
  assert list(sources.open_split(config.data, 'train')) == [{'input': 'one two', 'target': '12'},
                                                             {'input': 'three', 'target': '3'}]
  assert list(sources.open_split(config.data, 'eval')) == [{'input': 'four', 'target': '4'}]


@pytest.mark.parametrize('name, content, message', [
    ('bad.tsv', 'a\tb\nno tab here\n', 'bad.tsv:2: expected 2 tab-separated fields'),
    ('bad.jsonl', '{"input": "a", "target": "b"}\n\n{"input": "a"\n', 'bad.jsonl:3: not valid JSON'),
    ('keys.jsonl', '{"question": "a", "answer": "b"}\n', "keys.jsonl:1: needs keys 'input' and 'target'"),
    ('empty.tsv', '\n', 'holds no examples'),
])
def test_malformed_files_name_the_file_and_line(tmp_path, name, content, message):
  (tmp_path / name).write_text(content)
  with pytest.raises(ConfigError, match=message):
    sources.read_pairs(str(tmp_path / name))


def test_missing_files_and_unknown_tfds_names_are_refused(config, tmp_path):
  config.data.update(source='files', train_files=str(tmp_path / 'nope.tsv'))
  with pytest.raises(ConfigError, match='no file matches'):
    sources.open_split(config.data, 'train')
  config.data.update(source='tfds', name='number_wordz')
  with pytest.raises(ConfigError, match="data.name='number_wordz'"):
    sources.open_split(config.data, 'train')
  config.data.update(name='number_words', input_key='question')
  with pytest.raises(ConfigError, match='it has input, target'):
    sources.open_split(config.data, 'train')
