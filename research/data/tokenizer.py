"""Tokenizers: SentencePiece trained on the training split (cached), or raw UTF-8 bytes.

Both share T5's special ids: 0 = padding (also the decoder's start token), 1 = end of sequence,
2 = unknown. The vocabulary the model sees is `vocab_size`.
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import Iterable, Protocol

import numpy as np
import sentencepiece as spm

from research import files

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


class Tokenizer(Protocol):
  """Text <-> ids; `decode` stops at EOS and skips padding and ids past the vocabulary (model-only ids)."""

  vocab_size: int

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: Iterable[int]) -> str: ...


class ByteTokenizer:
  """UTF-8 bytes shifted past the special ids: needs no training, works for any text."""

  _OFFSET = 3
  vocab_size = 256 + _OFFSET

  def encode(self, text: str) -> list[int]:
    return [b + self._OFFSET for b in text.encode('utf-8')]

  def decode(self, ids: Iterable[int]) -> str:
    data = bytes(i - self._OFFSET for i in _until_eos(ids) if self._OFFSET <= i < self.vocab_size)
    return data.decode('utf-8', errors='replace')


class SentencePieceTokenizer:
  """A SentencePiece model; `serialized` is the model file's bytes (saved into every workdir)."""

  def __init__(self, serialized: bytes):
    self.serialized = serialized
    self._sp = spm.SentencePieceProcessor(model_proto=serialized)
    self.vocab_size = self._sp.get_piece_size()

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def decode(self, ids: Iterable[int]) -> str:
    return self._sp.decode([i for i in _until_eos(ids) if EOS_ID < i < self.vocab_size])


def _until_eos(ids: Iterable[int]) -> list[int]:
  ids = [int(i) for i in np.asarray(ids).reshape(-1)]
  return ids[:ids.index(EOS_ID)] if EOS_ID in ids else ids


def train_sentencepiece(texts: Iterable[str], vocab_size: int, model_type: str, cache_dir: str,
                        name: str) -> SentencePieceTokenizer:
  """Trains (once) a `model_type` ('unigram' or 'bpe') model on `texts` and caches it as `cache_dir/name.model`.

  `cache_dir` may be local or gs:// (next to a TFDS dataset on Cloud Storage). The cache file is written
  atomically, so a crash never leaves a half-written model behind.
  """
  path = files.path(cache_dir) / f'{name}.model'
  if path.exists():
    return SentencePieceTokenizer(path.read_bytes())
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type=model_type,
      pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1, hard_vocab_limit=False,
      split_digits=True, character_coverage=1.0, num_threads=os.cpu_count() or 1,
      minloglevel=2)
  path.parent.mkdir(parents=True, exist_ok=True)
  files.write_atomic(path, model.getvalue())
  return SentencePieceTokenizer(model.getvalue())


def fingerprint(*parts: object) -> str:
  """A short stable hash, to name caches after what they were built from."""
  return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]
