"""Where examples come from: a TFDS dataset (array_record, no TensorFlow) or a user's TSV/JSONL files.

Either way a split is a random-access sequence of {'input': str, 'target': str}, which the grain
pipeline shuffles, tokenizes and batches the same way. TFDS catalog corpora map onto it by their
feature keys: a translation pair ('en' -> 'de'), one text feature for language modelling (the other
key '' reads as the empty string), or a text and a ClassLabel, whose integer becomes its class name.
"""

from __future__ import annotations

import difflib
import glob
import json
import os
from typing import Sequence

import grain
import ml_collections
import tensorflow_datasets as tfds

from research import files
from research.config import ConfigError, check_choice
from research.data import tokenizer as tokenizer_lib

Records = Sequence[dict]


def open_split(data: ml_collections.ConfigDict, split: str) -> Records:
  """The examples of `split` ('train' or 'eval') as a random-access sequence of {'input', 'target'}."""
  if data.source == 'tfds':
    return _tfds_split(data, data.train_split if split == 'train' else data.eval_split)
  if data.source == 'files':
    return _file_split(data.train_files if split == 'train' else data.eval_files, data, split)
  raise ConfigError(f"data.source={data.source!r} is not one of 'tfds', 'files'")


def open_named_split(data: ml_collections.ConfigDict, name: str) -> Records:
  """The examples of the split called `name`: any split of the TFDS dataset (or a slice, 'test[:500]'); for
  files, `data.train_split` (read from data.train_files) or `data.eval_split` (data.eval_files)."""
  check_choice(data.source, ('tfds', 'files'), 'data.source')
  if data.source == 'tfds':
    return _tfds_split(data, name)
  keys = {data.train_split: 'train', data.eval_split: 'eval'}
  if name not in keys:
    configured = ', '.join(f'{split!r} (data.{key}_files={data[key + "_files"]!r})'
                           for split, key in keys.items() if data[key + '_files'])
    raise ConfigError(f"data.source='files' has no split {name!r}; it has {configured or 'none configured'}")
  return _file_split(data[f'{keys[name]}_files'], data, keys[name])


def tokenizer_for(data: ml_collections.ConfigDict, train: Records) -> tokenizer_lib.Tokenizer:
  """The tokenizer named by `data.tokenizer`; SentencePiece is trained once and cached next to the data."""
  if data.tokenizer == 'bytes':
    return tokenizer_lib.ByteTokenizer()
  if data.tokenizer != 'sentencepiece':
    raise ConfigError(f"data.tokenizer={data.tokenizer!r} is not one of 'sentencepiece', 'bytes'")
  if data.get('vocab_file'):  # a given model (e.g. an imported T5's spiece.model, local or gs://), not trained here
    vocab_file = files.path(data.vocab_file)
    if not vocab_file.exists():
      raise ConfigError(f'data.vocab_file={data.vocab_file!r} does not exist')
    return tokenizer_lib.SentencePieceTokenizer(vocab_file.read_bytes())
  check_choice(data.tokenizer_model_type, ('unigram', 'bpe'), 'data.tokenizer_model_type')
  count = min(len(train), data.tokenizer_train_examples)
  name = 'spm_{}_{}_{}'.format(data.tokenizer_model_type, data.vocab_size, tokenizer_lib.fingerprint(
      data.source, data.name, data.train_split, data.train_files, data.input_key, data.target_key, count))
  # Both sides of each pair train one shared vocabulary; an absent side ('' key) and class names are left out.
  sides = ('input',) if data.classes else ('input', 'target')
  texts = (text for i in range(count) for side in sides if (text := train[i][side]))
  return tokenizer_lib.train_sentencepiece(texts, data.vocab_size, data.tokenizer_model_type, _cache_dir(data), name)


def _cache_dir(data: ml_collections.ConfigDict) -> str:
  if data.source == 'tfds':  # the dataset's versioned directory, local or gs://
    return os.fspath(_builder(data).data_dir)
  return os.path.dirname(os.path.abspath(_expand(data.train_files, 'data.train_files')[0]))


# Catalog builders that register only when TensorFlow is importable (pip install -r requirements-tf.txt).
NEEDS_TENSORFLOW = ('c4', 'glue', 'wmt14_translate', 'wmt15_translate', 'wmt16_translate', 'wmt17_translate',
                    'wmt18_translate', 'wmt19_translate', 'wmt_t2t_translate', 'super_glue')


def _builder(data: ml_collections.ConfigDict):
  try:
    return tfds.builder(data.name, data_dir=data.data_dir or None)
  except tfds.core.registered.DatasetNotFoundError as e:
    base = data.name.split('/')[0].split(':')[0]
    if base in NEEDS_TENSORFLOW:
      hint = ('; this catalog builder registers only when TensorFlow is importable: '
              'pip install -r requirements-tf.txt')
    else:
      close = difflib.get_close_matches(base, sorted(set(tfds.list_builders(with_community_datasets=False))), n=3)
      hint = f'; did you mean {", ".join(close)}?' if close else ''
    raise ConfigError(f'data.name={data.name!r}: TFDS does not know this dataset '
                      f'({str(e).splitlines()[0]}){hint}') from None


def _tfds_split(data: ml_collections.ConfigDict, split: str) -> Records:
  builder = _builder(data)
  features = builder.info.features
  for field in ('input_key', 'target_key'):
    if data[field] and data[field] not in features:
      raise ConfigError(f'data.{field}={data[field]!r} is not a feature of {data.name}; it has {", ".join(features)}')
  if not (data.input_key or data.target_key):
    raise ConfigError(f'data.input_key and data.target_key are both empty; {data.name} has {", ".join(features)}')
  if split.split('[')[0] not in builder.info.splits and builder.info.splits:
    raise ConfigError(f'{data.name} has no split {split!r}; it has {", ".join(builder.info.splits)}')
  labels = features[data.target_key] if data.target_key else None
  labels = labels if isinstance(labels, tfds.features.ClassLabel) else None
  if labels is not None and data.classes and tuple(data.classes) != tuple(labels.names):
    raise ConfigError(f'data.classes={tuple(data.classes)} differs from the labels of {data.name}.{data.target_key} '
                      f'{tuple(labels.names)} (in class-id order)')
  download = data.get('download', True)
  if not download and not builder.is_prepared():
    raise ConfigError(f'{data.name} is not prepared at {builder.data_dir} and data.download=False; prepare it there '
                      f'(tfds build {data.name} --data_dir={data.data_dir or "<default>"} --file_format=array_record) '
                      f'or set data.download=True')
  # Prepares the dataset (download_and_prepare, as array_record) into data_dir on first use when allowed.
  source = tfds.data_source(data.name, split=split, data_dir=data.data_dir or None, download=download)

  def text(example, key):
    if not key:
      return ''
    return labels.int2str(int(example[key])) if labels is not None and key == data.target_key else _text(example[key])
  return grain.MapDataset.source(source).map(lambda ex: {
      'input': text(ex, data.input_key), 'target': text(ex, data.target_key)})


def _text(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def _expand(spec: str, key: str) -> list[str]:
  """Comma-separated paths or glob patterns -> existing files, or a ConfigError naming what is missing."""
  if not spec:
    raise ConfigError(f"{key} is empty; data.source='files' needs TSV or JSONL files of input/target pairs")
  paths = []
  for pattern in spec.split(','):
    matches = sorted(glob.glob(pattern))
    if not matches:
      raise ConfigError(f'{key}: no file matches {pattern!r}')
    paths += matches
  return paths


def _file_split(spec: str, data: ml_collections.ConfigDict, split: str) -> Records:
  records = []
  for path in _expand(spec, f'data.{split}_files'):
    records += read_pairs(path, data.input_key, data.target_key)
  return records


def read_pairs(path: str, input_key: str = 'input', target_key: str = 'target') -> list[dict]:
  """Reads a .tsv (input<TAB>target) or .jsonl ({input_key: ..., target_key: ...}) file.

  A malformed line raises a ConfigError naming the file and the line number.
  """
  jsonl = path.endswith(('.jsonl', '.json'))
  if not jsonl and not path.endswith(('.tsv', '.txt')):
    raise ConfigError(f'{path}: unknown file type; use .tsv (input<TAB>target) or .jsonl')
  records = []
  with open(path, encoding='utf-8') as f:
    for number, line in enumerate(f, 1):
      line = line.rstrip('\n')
      if not line.strip():
        continue
      if jsonl:
        records.append(_jsonl_record(line, path, number, input_key, target_key))
      else:
        fields = line.split('\t')
        if len(fields) != 2:
          raise ConfigError(f'{path}:{number}: expected 2 tab-separated fields (input, target), got {len(fields)}')
        records.append({'input': fields[0], 'target': fields[1]})
  if not records:
    raise ConfigError(f'{path}: holds no examples')
  return records


def _jsonl_record(line: str, path: str, number: int, input_key: str, target_key: str) -> dict:
  try:
    obj = json.loads(line)
  except json.JSONDecodeError as e:
    raise ConfigError(f'{path}:{number}: not valid JSON ({e.msg})') from None
  if not isinstance(obj, dict) or input_key not in obj or target_key not in obj:
    keys = ', '.join(obj) if isinstance(obj, dict) else type(obj).__name__
    raise ConfigError(f'{path}:{number}: needs keys {input_key!r} and {target_key!r} (data.input_key, '
                      f'data.target_key); found {keys}')
  return {'input': str(obj[input_key]), 'target': str(obj[target_key])}
