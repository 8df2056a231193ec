"""The embedded default task: English number words -> digits.

"three hundred forty-two thousand one hundred seven" -> "342107" (and 'digits': "6", for
classification). The model must parse a small
grammar (units, teens, tens, hundreds, the thousand/million scales, implicit zeros), which a small
encoder-decoder learns in minutes on a CPU; exact match on held-out numbers says whether it did.

Splits are disjoint by construction: a number's split is decided by a hash of its value, so no
number of the validation or test split is ever generated for training.
"""

from __future__ import annotations

import hashlib

import numpy as np
import tensorflow_datasets as tfds

_UNITS = ('zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen '
          'fifteen sixteen seventeen eighteen nineteen').split()
_TENS = 'twenty thirty forty fifty sixty seventy eighty ninety'.split()
MAX_DIGITS = 7  # up to 9,999,999
_SPLIT_SIZES = {'train': 100_000, 'validation': 2_000, 'test': 2_000}
_SPLIT_OF_BUCKET = ['validation', 'test'] + ['train'] * 18  # 5% / 5% / 90% of all numbers


def _below_thousand(n: int) -> list[str]:
  words = []
  if n >= 100:
    words += [_UNITS[n // 100], 'hundred']
    n %= 100
  if n >= 20:
    words.append(_TENS[n // 10 - 2] + (f'-{_UNITS[n % 10]}' if n % 10 else ''))
  elif n or not words:
    words.append(_UNITS[n])
  return words


def to_words(n: int) -> str:
  """English words for 0 <= n < 10**9, e.g. 342107 -> 'three hundred forty-two thousand one hundred seven'."""
  if not 0 <= n < 10**9:
    raise ValueError(f'{n} is outside [0, 10**9)')
  if n == 0:
    return 'zero'
  words = []
  for scale, name in ((10**6, 'million'), (10**3, 'thousand')):
    if n >= scale:
      words += _below_thousand(n // scale) + [name]
      n %= scale
  if n:
    words += _below_thousand(n)
  return ' '.join(words)


def split_of(n: int) -> str:
  """The split a number belongs to, from a hash of its value (stable across runs and machines)."""
  bucket = int.from_bytes(hashlib.sha256(str(n).encode()).digest()[:4], 'little') % len(_SPLIT_OF_BUCKET)
  return _SPLIT_OF_BUCKET[bucket]


def generate(split: str, count: int, seed: int = 0):
  """Yields `count` distinct (number, words) pairs of `split`: digit count uniform in 1..MAX_DIGITS."""
  rng = np.random.default_rng([seed, ['train', 'validation', 'test'].index(split)])
  seen = set()
  while len(seen) < count:
    digits = int(rng.integers(1, MAX_DIGITS + 1))
    n = int(rng.integers(0 if digits == 1 else 10**(digits - 1), 10**digits))
    if n in seen or split_of(n) != split:
      continue
    seen.add(n)
    yield n, to_words(n)


class NumberWords(tfds.core.GeneratorBasedBuilder):
  """Number words -> digits, generated locally (no download)."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'Numbers below 10**7; splits disjoint by a hash of the number.',
                   '1.1.0': "Adds 'digits', the digit count as text: a 7-class classification target."}

  def __init__(self, **kwargs):
    kwargs.setdefault('file_format', 'array_record')
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({'input': tfds.features.Text(), 'target': tfds.features.Text(),
                                             'digits': tfds.features.Text()}),
        supervised_keys=('input', 'target'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split, count) for split, count in _SPLIT_SIZES.items()}

  def _generate_examples(self, split: str, count: int):
    for n, words in generate(split, count):
      yield n, {'input': words, 'target': str(n), 'digits': str(len(str(n)))}
