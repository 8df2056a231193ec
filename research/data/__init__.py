"""Data: embedded TFDS tasks, a user's own files, tokenizers, and the grain input pipeline."""

from research.data import number_words  # noqa: F401  (registers the embedded TFDS builder)
