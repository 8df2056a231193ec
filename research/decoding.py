"""Autoregressive decoding with a key/value cache: greedy, beam search and sampling.

The prompt is read once (prefill: one parallel pass that fills each attention layer's cache), then one
token per step attends to the cache. Decoder-only prompts are right-padded and may differ in length:
row b's prompt fills positions [0, lengths[b]) and its generated token t sits at position lengths[b] + t,
so every key lives at the cache slot of its position. An encoder-decoder model encodes its input once;
its decoder prompt is the start token. `Options.use_cache=False` recomputes the whole sequence at each
step instead (the reference the cache is tested against, and the benchmark's baseline).

Everything here is a pure function of (params, prompts, rng) with static `Options`: jit it, shard it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research import mesh as mesh_lib, quantize
from research.config import ConfigError, check_choice
from research.data.tokenizer import EOS_ID

Array = jax.Array
METHODS = ('greedy', 'beam', 'sample')
_NEG = -1e9  # the score of an impossible candidate (finite, so sums stay finite)


@dataclasses.dataclass(frozen=True)
class Options:
  """How to decode; `length_penalty` is GNMT's alpha (scores are log p / ((5 + length) / 6) ** alpha)."""
  method: str = 'greedy'
  max_new_tokens: int = 32
  beam_size: int = 4
  length_penalty: float = 0.6
  temperature: float = 1.0  # sample: 0 is greedy
  top_k: int = 0  # sample: only the k most likely tokens (0: all)
  top_p: float = 1.0  # sample: only the most likely tokens whose probabilities add up to top_p (nucleus)
  use_cache: bool = True

  def validate(self) -> 'Options':
    check_choice(self.method, METHODS, 'decoding method')
    for name, ok in (('max_new_tokens', self.max_new_tokens >= 1), ('beam_size', self.beam_size >= 1),
                     ('temperature', self.temperature >= 0), ('top_k', self.top_k >= 0),
                     ('top_p', 0 < self.top_p <= 1), ('length_penalty', self.length_penalty >= 0)):
      if not ok:
        raise ConfigError(f'{name}={getattr(self, name)} is out of range (max_new_tokens, beam_size >= 1; '
                          'temperature, top_k, length_penalty >= 0; 0 < top_p <= 1)')
    return self


@flax.struct.dataclass
class Prompts:
  """A batch of right-padded prompts; every array has the batch as its first axis."""
  tokens: Array  # [batch, width] decoder prompt; it starts with the start token 0
  lengths: Array  # [batch] real prompt tokens (>= 1)
  prefix_lengths: Array  # [batch] tokens attended bidirectionally (prefix LM); 0: causal
  example_ids: Array  # [batch] sampling keys derive from these, so a row's sample does not depend on its batch
  encoder_tokens: Array | None = None  # encoder-decoder: the input [batch, input width], its segments and positions
  encoder_segment_ids: Array | None = None
  encoder_positions: Array | None = None


@flax.struct.dataclass
class Decoded:
  tokens: Array  # [batch, max_new_tokens]: EOS-terminated, 0 after EOS
  scores: Array  # [batch] log-probability of the tokens (beam: divided by the length penalty)


def decoder_prompts(token_lists: list[list[int]], width: int, prefix_lm: bool,
                    example_ids: list[int] | None = None) -> Prompts:
  """Prompts for a decoder-only model: [start token] + tokens, right-padded to `width` (numpy, on the host)."""
  rows = np.zeros((len(token_lists), width), np.int32)
  lengths = np.asarray([len(t) + 1 for t in token_lists], np.int32)
  for row, tokens in zip(rows, token_lists):
    row[1:len(tokens) + 1] = tokens
  ids = np.arange(len(token_lists)) if example_ids is None else example_ids
  return Prompts(rows, lengths, lengths * prefix_lm, np.asarray(ids, np.int32))


def encoder_prompts(token_lists: list[list[int]], width: int, example_ids: list[int] | None = None) -> Prompts:
  """Prompts for an encoder-decoder model: the encoder reads the tokens (right-padded to `width`)."""
  count = len(token_lists)
  encoder = np.zeros((count, width), np.int32)
  for row, tokens in zip(encoder, token_lists):
    row[:len(tokens)] = tokens
  segments = (encoder > 0).astype(np.int32)
  positions = np.where(segments > 0, np.arange(width), 0).astype(np.int32)
  ids = np.arange(count) if example_ids is None else example_ids
  return Prompts(np.zeros((count, 1), np.int32), np.ones(count, np.int32), np.zeros(count, np.int32),
                 np.asarray(ids, np.int32), encoder, segments, positions)


def cache_mask(positions: Array, cache_length: int, prefix_lengths: Array) -> Array:
  """[batch, 1, new tokens, cache length]: a query sees the slots up to its position, and a query inside
  the bidirectional prefix sees the whole prefix."""
  slots = jnp.arange(cache_length)[None, None, :]
  prefix = prefix_lengths[:, None, None]
  visible = (slots <= positions[:, :, None]) | ((slots < prefix) & (positions[:, :, None] < prefix))
  return visible[:, None]


# ----------------------------------------------------------------------------- next-token scorers


class _Cached:
  """Next-token logits from the key/value cache; the state is the 'cache' collection."""

  def __init__(self, model: nn.Module, params: Any, prompts: Prompts, cache_length: int):
    self.model, self.params, self.prompts, self.cache_length = model, params, prompts, cache_length
    self.encoder_decoder = prompts.encoder_tokens is not None
    self.batch_axis = 1 if model.config.scan_layers else 0  # scanned layers stack caches on a leading axis

  def _apply(self, cache, tokens: Array, positions: Array, encoded: Array | None):
    mask = cache_mask(positions, self.cache_length, self.prompts.prefix_lengths)
    args = (encoded, self.prompts.encoder_segment_ids) if self.encoder_decoder else ()
    variables = {'params': self.params, **({'cache': cache} if cache is not None else {})}
    logits, updated = self.model.apply(variables, tokens, positions, mask, *args,
                                       method=self.model.decode_step, mutable=['cache'])
    return logits, updated['cache']

  def start(self) -> tuple[Array, Any]:
    p = self.prompts
    encoded = None
    if self.encoder_decoder:
      encoded = self.model.apply({'params': self.params}, p.encoder_tokens, p.encoder_segment_ids,
                                 p.encoder_positions, method=self.model.encode)
    batch = p.tokens.shape[0]
    full = jnp.broadcast_to(jnp.arange(self.cache_length), (batch, self.cache_length))
    shapes = jax.eval_shape(lambda e: self._apply(None, jnp.zeros_like(full), full, e)[1], encoded)
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    width = p.tokens.shape[1]
    logits, cache = self._apply(cache, p.tokens, full[:, :width], encoded)
    return jnp.take_along_axis(logits, (p.lengths - 1)[:, None, None], axis=1)[:, 0], cache

  def step(self, cache, tokens: Array, positions: Array) -> tuple[Array, Any]:
    logits, cache = self._apply(cache, tokens[:, None], positions[:, None], None)
    return logits[:, 0], cache

  def reorder(self, cache, rows: Array):
    return jax.tree.map(lambda x: jnp.take(x, rows, axis=self.batch_axis), cache)


class _Recompute:
  """Next-token logits by running the decoder over the whole sequence at each step (no cache)."""

  def __init__(self, model: nn.Module, params: Any, prompts: Prompts, cache_length: int):
    self.model, self.params, self.prompts, self.length = model, params, prompts, cache_length

  def _logits(self, state: dict, positions: Array) -> Array:
    tokens = state['tokens']
    ones, arange = jnp.ones_like(tokens), jnp.broadcast_to(jnp.arange(self.length), tokens.shape)
    if 'encoded' in state:
      logits = self.model.apply({'params': self.params}, state['encoded'], self.prompts.encoder_segment_ids, tokens,
                                ones, arange, method=self.model.decode)
    else:
      prefix = (arange < self.prompts.prefix_lengths[:, None]).astype(jnp.int32)
      logits = self.model.apply({'params': self.params}, {
          'decoder_input_tokens': tokens, 'decoder_segment_ids': ones, 'decoder_positions': arange,
          'decoder_causal_attention': prefix})
    return jnp.take_along_axis(logits, positions[:, None, None], axis=1)[:, 0]

  def start(self) -> tuple[Array, dict]:
    p = self.prompts
    tokens = jnp.zeros((p.tokens.shape[0], self.length), jnp.int32)
    state = {'tokens': jax.lax.dynamic_update_slice(tokens, p.tokens, (0, 0))}
    if p.encoder_tokens is not None:
      state['encoded'] = self.model.apply({'params': self.params}, p.encoder_tokens, p.encoder_segment_ids,
                                          p.encoder_positions, method=self.model.encode)
    return self._logits(state, p.lengths - 1), state

  def step(self, state: dict, tokens: Array, positions: Array) -> tuple[Array, dict]:
    write = jnp.arange(self.length)[None, :] == positions[:, None]
    state = {**state, 'tokens': jnp.where(write, tokens[:, None], state['tokens'])}
    return self._logits(state, positions), state

  def reorder(self, state: dict, rows: Array) -> dict:
    return jax.tree.map(lambda x: jnp.take(x, rows, axis=0), state)


def prefill(model: nn.Module, options: Options, params: Any, prompts: Prompts) -> Array:
  """The prefill alone: next-token logits [batch, vocab] after each prompt, as `generate` computes them before its
  first token (`options.use_cache`: the pass that reads the prompt into the cache; else the first full forward
  pass). `params` may be int8-quantized, as for `generate`. Each prompt is read once (beam search reads it once per
  beam). Jit it; the benchmark's prefill latency is this function's."""
  return _scorer(model, options, params, prompts).start()[0]


def _scorer(model: nn.Module, options: Options, params: Any, prompts: Prompts):
  """The next-token scorer `options` asks for, on dequantized weights, with room for the new tokens."""
  params = quantize.dequantize(params, jnp.dtype(model.config.dtype))
  cache_length = prompts.tokens.shape[1] + options.max_new_tokens
  return (_Cached if options.use_cache else _Recompute)(model, params, prompts, cache_length)


# ----------------------------------------------------------------------------- search


def generate(model: nn.Module, options: Options, params: Any, prompts: Prompts, rng: Array | None = None) -> Decoded:
  """Decodes `options.max_new_tokens` tokens after each prompt (fewer if every row has ended).

  `params` may be int8-quantized (`quantize.quantize`): the weights are dequantized inside the computation.
  """
  if options.method == 'beam':
    prompts = jax.tree.map(lambda x: jnp.repeat(x, options.beam_size, axis=0), prompts)
  scorer = _scorer(model, options, params, prompts)
  if options.method == 'beam':
    return _beam_search(scorer, prompts, options)
  return _sample(scorer, prompts, options, jax.random.PRNGKey(0) if rng is None else rng)


def sharded_generate(model: nn.Module, options: Options, mesh: jax.sharding.Mesh, rules, param_shardings: Any
                     ) -> Callable[[Any, Prompts, Array], Decoded]:
  """`generate` jitted once for `options`: parameters in their training shardings, prompts split over the
  data-parallel axes, results replicated."""
  replicated = mesh_lib.replicated(mesh)
  jitted = jax.jit(functools.partial(generate, model, options),
                   in_shardings=(param_shardings, mesh_lib.batch_sharding(mesh, rules), replicated),
                   out_shardings=replicated)

  def run(params, prompts: Prompts, rng: Array) -> Decoded:
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      return jitted(params, prompts, rng)
  return run


def filter_logits(logits: Array, top_k: int, top_p: float) -> Array:
  """Logits with every token outside the top k (0: no limit), then outside the nucleus of mass top_p, set to -1e9.

  The nucleus is the smallest set of most likely tokens (of the top k) whose probabilities add up to at least top_p.
  """
  logits = logits.astype(jnp.float32)
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, _NEG, logits)
  if top_p < 1:
    ordered = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of the more likely tokens
    threshold = jnp.min(jnp.where(before < top_p, ordered, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, _NEG, logits)
  return logits


def _sample(scorer, prompts: Prompts, options: Options, rng: Array) -> Decoded:
  """Greedy (arg-max) or sampled tokens, one per step, until every row has produced EOS."""
  greedy = options.method == 'greedy' or options.temperature == 0
  steps = options.max_new_tokens

  def choose(logits: Array, t) -> tuple[Array, Array]:
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    if greedy:
      token = jnp.argmax(logits, axis=-1)
    else:
      keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(rng, i), t))(prompts.example_ids)
      filtered = filter_logits(logits, options.top_k, options.top_p) / options.temperature
      token = jax.vmap(jax.random.categorical)(keys, filtered)
    token = token.astype(jnp.int32)
    return token, jnp.take_along_axis(log_probs, token[:, None], axis=1)[:, 0]

  logits, state = scorer.start()
  token, log_prob = choose(logits, 0)
  tokens = jnp.zeros((token.shape[0], steps), jnp.int32).at[:, 0].set(token)

  def body(carry):
    t, tokens, done, score, state, previous = carry
    logits, state = scorer.step(state, previous, prompts.lengths + t - 1)
    token, log_prob = choose(logits, t)
    token = jnp.where(done, 0, token)
    tokens = tokens.at[:, t].set(token)
    return t + 1, tokens, done | (token == EOS_ID), score + jnp.where(done, 0.0, log_prob), state, token

  def running(carry):
    return (carry[0] < steps) & ~jnp.all(carry[2])

  carry = (1, tokens, token == EOS_ID, log_prob, state, token)
  _, tokens, _, score, _, _ = jax.lax.while_loop(running, body, carry)
  return Decoded(tokens, score)


def length_penalty(length, alpha: float):
  """GNMT's ((5 + length) / 6) ** alpha."""
  return ((5.0 + length) / 6.0) ** alpha


def _beam_search(scorer, prompts: Prompts, options: Options) -> Decoded:
  """Beam search over rows repeated `beam_size` times; the best finished hypothesis of each example.

  Each step ranks the 2 x beam best extensions of the live beams by log-probability. An extension that
  ends in EOS and ranks within the beam is finished with score log p / length_penalty; the beam best
  others live on. A row stops when its finished hypotheses cannot be beaten by any live beam (whose
  score can only fall); at the end, live beams count as finished at the maximum length. Beam size 1
  with length_penalty 0 is greedy decoding.
  """
  beams, steps, alpha = options.beam_size, options.max_new_tokens, options.length_penalty
  logits, state = scorer.start()
  vocab = logits.shape[-1]
  batch = logits.shape[0] // beams
  first = jnp.arange(batch)[:, None] * beams

  def extend(t, logits, live_seqs, live_scores, done_seqs, done_scores):
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(batch, beams, vocab)
    candidates = (live_scores[..., None] + log_probs).reshape(batch, beams * vocab)
    top_scores, top = jax.lax.top_k(candidates, 2 * beams)
    parents, tokens = top // vocab, (top % vocab).astype(jnp.int32)
    seqs = jnp.take_along_axis(live_seqs, parents[..., None], axis=1).at[:, :, t].set(tokens)
    ends = (tokens == EOS_ID) & (jnp.arange(2 * beams) < beams) & (top_scores > _NEG / 2)
    finished = jnp.where(ends, top_scores / length_penalty(t + 1, alpha), _NEG)
    done_scores, keep = jax.lax.top_k(jnp.concatenate([done_scores, finished], axis=1), beams)
    done_seqs = jnp.take_along_axis(jnp.concatenate([done_seqs, seqs], axis=1), keep[..., None], axis=1)
    live_scores, keep = jax.lax.top_k(jnp.where(tokens == EOS_ID, _NEG, top_scores), beams)
    live_seqs = jnp.take_along_axis(seqs, keep[..., None], axis=1)
    parents, tokens = jnp.take_along_axis(parents, keep, axis=1), jnp.take_along_axis(tokens, keep, axis=1)
    return live_seqs, live_scores, done_seqs, done_scores, (first + parents).reshape(-1), tokens.reshape(-1)

  live_scores = jnp.where(jnp.arange(beams) == 0, 0.0, _NEG) * jnp.ones((batch, 1))  # one beam until step 1
  empty = jnp.zeros((batch, beams, steps), jnp.int32)
  carry = (1, state) + extend(0, logits, empty, live_scores, empty, jnp.full((batch, beams), _NEG))

  def body(carry):
    t, state, live_seqs, live_scores, done_seqs, done_scores, rows, tokens = carry
    state = scorer.reorder(state, rows)
    logits, state = scorer.step(state, tokens, prompts.lengths + t - 1)
    return (t + 1, state) + extend(t, logits, live_seqs, live_scores, done_seqs, done_scores)

  def running(carry):
    t, _, _, live_scores, _, done_scores, _, _ = carry
    best_possible = live_scores[:, 0] / length_penalty(steps, alpha)
    settled = (done_scores[:, -1] > _NEG / 2) & (done_scores[:, -1] >= best_possible)
    return (t < steps) & ~jnp.all(settled)

  _, _, live_seqs, live_scores, done_seqs, done_scores, _, _ = jax.lax.while_loop(running, body, carry)
  scores = jnp.concatenate([done_scores, live_scores / length_penalty(steps, alpha)], axis=1)
  best = jnp.argmax(scores, axis=1)
  seqs = jnp.concatenate([done_seqs, live_seqs], axis=1)
  return Decoded(jnp.take_along_axis(seqs, best[:, None, None], axis=1)[:, 0],
                 jnp.take_along_axis(scores, best[:, None], axis=1)[:, 0])
