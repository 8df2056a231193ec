"""From text to decoded text with a trained (or imported) workdir: prompts read and checked, batched, decoded.

  decoder = TextDecoder(analysis.load_experiment('workdirs/quickstart'), decoding.Options('beam', beam_size=4))
  for record in decoder.decode(read_prompts(['three hundred and five', 'twelve'])):
    print(record['output'])

A prompt that cannot be decoded (empty, too long, a malformed JSON line) becomes a record with an 'error'
and its line number; the other prompts are decoded as usual.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterable

import jax

from research import decoding, mesh as mesh_lib, quantize
from research.analysis import LoadedExperiment
from research.config import ConfigError
from research.data.tokenizer import EOS_ID


@dataclasses.dataclass(frozen=True)
class Prompt:
  line: int  # 1-based line of the input
  text: str | None
  id: Any = None  # the "id" of a JSON input line, passed through
  error: str | None = None


def read_prompts(lines: Iterable[str | bytes]) -> list[Prompt]:
  """One prompt per line: the line itself, or a JSON object with an "input" (or "prompt") string and an
  optional "id" when the line starts with '{'. Lines given as bytes must be UTF-8."""
  prompts = []
  for number, line in enumerate(lines, start=1):
    if isinstance(line, bytes):
      try:
        line = line.decode('utf-8')
      except UnicodeDecodeError as e:
        prompts.append(Prompt(number, None, error=f'not valid UTF-8 (byte {e.start + 1})'))
        continue
    line = line.rstrip('\r\n')
    if not line.lstrip().startswith('{'):
      prompts.append(Prompt(number, line) if line.strip() else Prompt(number, None, error='empty prompt'))
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      prompts.append(Prompt(number, None, error=f'not valid JSON ({e.msg} at column {e.colno})'))
      continue
    text = record.get('input', record.get('prompt')) if isinstance(record, dict) else None
    if not isinstance(text, str):
      prompts.append(Prompt(number, None, error='a JSON line needs an "input" (or "prompt") string'))
    elif not text.strip():
      prompts.append(Prompt(number, None, record.get('id'), error='empty prompt'))
    else:
      prompts.append(Prompt(number, text, record.get('id')))
  return prompts


def check_decodable(config) -> None:
  """Refuses a model without a decoder (before its checkpoint is read)."""
  if config.model.family not in ('decoder_only', 'encoder_decoder'):
    raise ConfigError(f'decoding needs a decoder, but this checkpoint is an {config.model.family} model '
                      f'(objective {config.objective.name}); evaluate it with experiments/evaluate.py')


class TextDecoder:
  """Decodes text prompts with a loaded experiment's model on its mesh, optionally with int8 weights."""

  def __init__(self, loaded: LoadedExperiment, options: decoding.Options, batch_size: int = 16,
               int8: bool = False):
    config = loaded.config
    check_decodable(config)
    self.family = config.model.family
    self.options = options.validate()
    self.loaded = loaded
    self.max_length = config.model.max_length
    if self.family == 'encoder_decoder' and options.max_new_tokens > self.max_length:
      raise ConfigError(f'max_new_tokens={options.max_new_tokens} exceeds model.max_length={self.max_length}')
    exp = loaded.experiment
    self.batch_size = -(-batch_size // mesh_lib.data_parallel_size(exp.mesh)) * mesh_lib.data_parallel_size(exp.mesh)
    params, shardings = loaded.params, exp.state_shardings.params
    self.float_bytes = quantize.nbytes(params)
    if int8:
      params = quantize.quantize(params, exp.param_axes)
      shardings = quantize.shardings(params, shardings)
      params = jax.device_put(params, shardings)
    self.params, self.param_bytes = params, quantize.nbytes(params)
    self._generate = decoding.sharded_generate(loaded.model, options, exp.mesh, exp.rules, shardings)

  def encode(self, text: str) -> list[int]:
    """The prompt's token ids as the model was trained to read them; ValueError if they do not fit."""
    ids = list(self.loaded.tokenizer.encode(text)) + [EOS_ID]
    if self.family == 'encoder_decoder':
      if len(ids) > self.max_length:
        raise ValueError(f'the prompt is {len(ids)} tokens (with EOS); the model reads at most '
                         f'model.max_length={self.max_length}')
    elif 1 + len(ids) + self.options.max_new_tokens > self.max_length:
      raise ValueError(f'the prompt is {len(ids) + 1} tokens (with the start token and EOS); with max_new_tokens='
                       f'{self.options.max_new_tokens} that exceeds model.max_length={self.max_length}: '
                       'shorten the prompt or lower max_new_tokens')
    return ids

  def decode(self, prompts: list[Prompt], seed: int = 0) -> list[dict]:
    """One record per prompt, in order: the output text, its tokens and score, or the prompt's error."""
    records, ready = {}, []
    for prompt in prompts:
      if prompt.error is None:
        try:
          ready.append((prompt, self.encode(prompt.text)))
        except ValueError as e:
          prompt = dataclasses.replace(prompt, error=str(e))
      if prompt.error is not None:
        records[prompt.line] = _record(prompt, error=prompt.error)
    if ready:
      width = max(len(ids) for _, ids in ready) + (self.family == 'decoder_only')
      rng = jax.random.PRNGKey(seed)
      for start in range(0, len(ready), self.batch_size):
        chunk = ready[start:start + self.batch_size]
        padding = self.batch_size - len(chunk)
        token_lists = [ids for _, ids in chunk] + [[EOS_ID]] * padding
        lines = [p.line for p, _ in chunk] + [0] * padding
        if self.family == 'decoder_only':
          batch = decoding.decoder_prompts(token_lists, width, self.loaded.config.objective.name == 'prefix_lm', lines)
        else:
          batch = decoding.encoder_prompts(token_lists, width, lines)
        decoded = jax.device_get(self._generate(self.params, batch, rng))
        for (prompt, _), tokens, score in zip(chunk, decoded.tokens, decoded.scores):
          ended = list(tokens).index(EOS_ID) + 1 if EOS_ID in tokens else len(tokens)
          records[prompt.line] = _record(prompt, output=self.loaded.objective.describe(self.loaded.tokenizer, tokens),
                                         tokens=[int(t) for t in tokens[:ended]], score=float(score))
    return [records[p.line] for p in prompts]


def _record(prompt: Prompt, **fields) -> dict:
  record = {'line': prompt.line}
  if prompt.id is not None:
    record['id'] = prompt.id
  if prompt.text is not None:
    record['input'] = prompt.text
  return {**record, **fields}
