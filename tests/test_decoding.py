"""Decoding against independent references: the full forward pass at every step, brute-force search, numpy."""

import dataclasses
import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import quickstart
from research import decoding, mesh as mesh_lib, models
from research.data.tokenizer import EOS_ID

VOCAB = 24

# (family, model fields): the position schemes, norms, attention variants and scan_layers.
VARIANTS = {
    'gpt': ('decoder_only', dict(position_embedding='learned', use_bias=True, activation='gelu_tanh')),
    'llama': ('decoder_only', dict(position_embedding='rotary', norm='rmsnorm', activation='swiglu', num_kv_heads=1)),
    'relative_scanned': ('decoder_only', dict(position_embedding='relative', scan_layers=True, norm_position='post')),
    't5': ('encoder_decoder', dict(position_embedding='relative', norm='rmsnorm', scale_attention=False,
                                   tie_embeddings=False)),
    'transformer_scanned': ('encoder_decoder', dict(position_embedding='sinusoidal', scan_layers=True,
                                                    num_kv_heads=2)),
}


def build(family: str, vocab: int = VOCAB, scale: float = 3.0, **fields):
  config = models.ModelConfig(vocab_size=vocab, d_model=32, num_heads=4, head_dim=8, mlp_dim=48,
                              num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0, max_length=64, **fields)
  model = models.MODELS[family](config)
  batch = {'decoder_input_tokens': np.zeros((1, 4), np.int32), 'decoder_segment_ids': np.ones((1, 4), np.int32),
           'decoder_positions': np.arange(4, dtype=np.int32)[None], 'encoder_input_tokens': np.zeros((1, 4), np.int32),
           'encoder_segment_ids': np.ones((1, 4), np.int32), 'encoder_positions': np.arange(4, dtype=np.int32)[None]}
  boxed = model.init({'params': jax.random.PRNGKey(1)}, batch)['params']
  # Larger weights than the initialisation make the distributions peaked, so decodes differ between rows.
  params = jax.tree.map(lambda x: x * scale, nn.unbox(boxed))
  return model, params, nn.get_partition_spec(boxed)


def generate(model, options, params, prompts, rng=None):
  """`decoding.generate`, jitted (as every caller does)."""
  rng = jax.random.PRNGKey(0) if rng is None else rng
  return jax.device_get(jax.jit(functools.partial(decoding.generate, model, options))(params, prompts, rng))


def random_prompts(family: str, lengths, seed: int = 0, vocab: int = VOCAB, prefix_lm: bool = False):
  rng = np.random.default_rng(seed)
  token_lists = [list(rng.integers(3, vocab, n)) for n in lengths]
  if family == 'decoder_only':
    return decoding.decoder_prompts(token_lists, max(lengths) + 1, prefix_lm), token_lists
  return decoding.encoder_prompts(token_lists, max(lengths)), token_lists


def full_logits(model, params, prompts, row: int, generated: list[int], width: int = 24) -> np.ndarray:
  """Reference: the model's ordinary forward pass over one row's prompt + generated tokens (no cache).

  The sequence is right-padded to `width` (one compilation); causal attention keeps padding out of its logits.
  """
  p = jax.tree.map(np.asarray, prompts)
  batch = {}
  if p.encoder_tokens is not None:
    batch = {'encoder_input_tokens': p.encoder_tokens[row:row + 1], 'encoder_segment_ids': p.encoder_segment_ids[row:row + 1],
             'encoder_positions': p.encoder_positions[row:row + 1]}
    sequence = [0] + generated
  else:
    sequence = list(p.tokens[row, :p.lengths[row]]) + generated
  decoder = np.zeros((1, width), np.int32)
  decoder[0, :len(sequence)] = sequence
  batch.update(decoder_input_tokens=decoder, decoder_segment_ids=np.ones_like(decoder),
               decoder_positions=np.arange(width, dtype=np.int32)[None])
  if p.encoder_tokens is None:
    batch['decoder_causal_attention'] = (np.arange(width) < p.prefix_lengths[row])[None].astype(np.int32)
  return np.asarray(_jitted_apply(model)({'params': params}, batch))[0, :len(sequence)]


_APPLY = {}


def _jitted_apply(model):
  return _APPLY.setdefault(id(model), jax.jit(model.apply))


def reference_greedy(model, params, prompts, steps: int) -> np.ndarray:
  """Greedy decoding by re-running the full forward pass for each new token, one row at a time."""
  out = np.zeros((len(prompts.lengths), steps), np.int32)
  for row in range(len(prompts.lengths)):
    generated = []
    offset = int(prompts.lengths[row]) - 1
    for _ in range(steps):
      token = int(np.argmax(full_logits(model, params, prompts, row, generated)[offset + len(generated)]))
      generated.append(token)
      if token == EOS_ID:
        break
    out[row, :len(generated)] = generated
  return out


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_cached_logits_equal_full_recompute(variant):
  """Prefill + one cached step per token gives the logits of the full forward pass at every position."""
  family, fields = VARIANTS[variant]
  model, params, _ = build(family, **fields)
  prefix_lm = variant == 'gpt'
  prompts, _ = random_prompts(family, [5, 2, 7], prefix_lm=prefix_lm)
  forced = np.random.default_rng(1).integers(3, VOCAB, (3, 6)).astype(np.int32)

  @jax.jit
  def cached(params):
    scorer = decoding._Cached(model, params, prompts, prompts.tokens.shape[1] + forced.shape[1])
    logits, cache = scorer.start()
    steps = [logits]
    for t in range(forced.shape[1] - 1):
      logits, cache = scorer.step(cache, jnp.asarray(forced[:, t]), jnp.asarray(prompts.lengths) + t)
      steps.append(logits)
    return jnp.stack(steps, axis=1)
  got = np.asarray(cached(params))
  for row in range(3):
    reference = full_logits(model, params, prompts, row, list(forced[row, :-1]))
    offset = int(prompts.lengths[row]) - 1
    np.testing.assert_allclose(got[row], reference[offset:offset + forced.shape[1]], atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize('variant,seed,scale', [('llama', 3, 3.0), ('t5', 1, 1.0), ('transformer_scanned', 0, 3.0)])
def test_greedy_equals_recomputed_greedy(variant, seed, scale):
  """Cached greedy = greedy by full recompute (this module's and a step-by-step reference); rows end at EOS."""
  family, fields = VARIANTS[variant]
  model, params, _ = build(family, vocab=6, scale=scale, **fields)  # few tokens: EOS early in some rows only
  prompts, _ = random_prompts(family, [3, 1, 4, 2, 5, 2], seed=seed, vocab=6)
  options = decoding.Options(max_new_tokens=8)
  cached = generate(model, options, params, prompts)
  recomputed = generate(model, dataclasses.replace(options, use_cache=False), params, prompts)
  reference = reference_greedy(model, params, prompts, 8)
  np.testing.assert_array_equal(cached.tokens, reference)
  np.testing.assert_array_equal(recomputed.tokens, reference)
  np.testing.assert_allclose(cached.scores, recomputed.scores, atol=1e-4)
  ended = [list(row).index(EOS_ID) if EOS_ID in row else None for row in reference]
  assert len(set(ended)) > 1, f'the rows should end at different steps, got {ended}'


@pytest.mark.parametrize('variant', ['gpt', 't5'])
def test_beam_of_one_is_greedy(variant):
  family, fields = VARIANTS[variant]
  model, params, _ = build(family, vocab=8, **fields)
  prompts, _ = random_prompts(family, [3, 1, 4, 2], vocab=8)
  greedy = generate(model, decoding.Options(max_new_tokens=7), params, prompts)
  beam = generate(model, decoding.Options('beam', max_new_tokens=7, beam_size=1, length_penalty=0.0),
                           params, prompts)
  np.testing.assert_array_equal(beam.tokens, greedy.tokens)
  np.testing.assert_allclose(beam.scores, greedy.scores, atol=1e-4)


def brute_force_best(model, params, prompts, row: int, vocab: int, steps: int, alpha: float):
  """The best hypothesis by enumeration: every sequence ending in EOS within `steps`, or of length `steps`."""
  offset = int(prompts.lengths[row]) - 1
  best = (-np.inf, None)
  for length in range(1, steps + 1):
    for seq in itertools.product(range(vocab), repeat=length):
      if EOS_ID in seq[:-1] or (length < steps and seq[-1] != EOS_ID):
        continue
      logits = full_logits(model, params, prompts, row, list(seq[:-1]))
      log_probs = jax.nn.log_softmax(logits[offset:offset + length], axis=-1)
      score = float(sum(log_probs[i, t] for i, t in enumerate(seq))) / decoding.length_penalty(length, alpha)
      best = max(best, (score, seq))
  return best


@pytest.mark.parametrize('variant,alpha', [('llama', 0.0), ('transformer_scanned', 1.0)])
def test_beam_search_finds_the_best_sequence(variant, alpha):
  """With a beam as wide as the search space, beam search returns the exact optimum of its score."""
  family, fields = VARIANTS[variant]
  vocab, steps = 4, 3
  model, params, _ = build(family, vocab=vocab, **fields)
  prompts, _ = random_prompts(family, [2, 3], vocab=vocab)
  beam = generate(model, decoding.Options('beam', max_new_tokens=steps, beam_size=vocab ** (steps - 1),
                                                   length_penalty=alpha), params, prompts)
  for row in range(2):
    score, seq = brute_force_best(model, params, prompts, row, vocab, steps, alpha)
    expected = np.zeros(steps, np.int32)
    expected[:len(seq)] = seq
    np.testing.assert_array_equal(beam.tokens[row], expected)
    np.testing.assert_allclose(beam.scores[row], score, atol=1e-4)


def test_filter_logits_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 30)).astype(np.float32) * 2
  for top_k, top_p in [(0, 1.0), (5, 1.0), (0, 0.7), (8, 0.5), (1, 1.0), (0, 1e-6)]:
    got = np.asarray(decoding.filter_logits(jnp.asarray(logits), top_k, top_p)) > -1e8
    for row, kept in zip(logits, got):
      order = np.argsort(-row)
      allowed = set(order[:top_k or len(row)])
      probs = np.where(np.isin(np.arange(len(row)), list(allowed)), np.exp(row - row.max()), 0)
      probs /= probs.sum()  # the nucleus is taken within the top k (as in Hugging Face's warpers)
      cumulative = np.cumsum(probs[order])
      nucleus = set(order[:int(np.searchsorted(cumulative, top_p)) + 1]) if top_p < 1 else set(order)
      assert set(np.flatnonzero(kept)) == allowed & nucleus, (top_k, top_p)


def test_sampling_follows_the_filtered_distribution():
  """Token frequencies of many samples match softmax(logits / temperature) over the kept tokens."""
  logits = jnp.asarray([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
  for temperature, top_k, top_p in [(1.0, 0, 1.0), (0.5, 3, 1.0), (2.0, 0, 0.8)]:
    filtered = decoding.filter_logits(logits, top_k, top_p) / temperature
    keys = jax.random.split(jax.random.PRNGKey(0), 20_000)
    draws = np.asarray(jax.vmap(lambda k: jax.random.categorical(k, filtered[0]))(keys))
    kept = np.asarray(filtered[0]) > -1e7
    expected = np.where(kept, np.exp(np.asarray(logits[0]) / temperature), 0)
    expected /= expected.sum()
    np.testing.assert_allclose(np.bincount(draws, minlength=6) / len(draws), expected, atol=0.015)


def test_sampling_is_seeded_and_limited_by_top_k():
  model, params, _ = build('decoder_only', **VARIANTS['llama'][1])
  prompts, _ = random_prompts('decoder_only', [3, 5, 2, 4])
  sample = lambda seed, **kw: generate(  # noqa: E731
      model, decoding.Options('sample', max_new_tokens=6, **kw), params, prompts, jax.random.PRNGKey(seed)).tokens
  np.testing.assert_array_equal(sample(3), sample(3))
  assert not np.array_equal(sample(3, temperature=3.0), sample(4, temperature=3.0))
  greedy = generate(model, decoding.Options(max_new_tokens=6), params, prompts).tokens
  np.testing.assert_array_equal(sample(5, top_k=1), greedy)
  np.testing.assert_array_equal(sample(6, temperature=0.0), greedy)
  # A row's sample depends on its example id, not on the rest of the batch.
  alone = jax.tree.map(lambda x: x[2:3], prompts)
  single = generate(model, decoding.Options('sample', max_new_tokens=6), params, alone,
                             jax.random.PRNGKey(3)).tokens
  np.testing.assert_array_equal(single[0], sample(3)[2])


@pytest.mark.parametrize('method', ['greedy', 'beam'])
def test_sharded_decoding_equals_one_device(method):
  """fsdp=4 x tensor=2 over 8 devices gives the single-device result."""
  family, fields = VARIANTS['t5' if method == 'beam' else 'llama']
  model, params, axes = build(family, **fields)
  prompts, _ = random_prompts(family, [3, 1, 4, 2, 5, 2, 6, 3])
  options = decoding.Options(method, max_new_tokens=5, beam_size=2)
  rules = mesh_lib.rules(quickstart.get_config().mesh)
  results = []
  for sizes in ({'data': 1, 'fsdp': 1, 'tensor': 1}, {'data': 1, 'fsdp': 4, 'tensor': 2}):
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:int(np.prod(list(sizes.values())))]).reshape(
        tuple(sizes.values())), mesh_lib.AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)
    shardings = mesh_lib.logical_shardings(axes, mesh, rules)
    run = decoding.sharded_generate(model, options, mesh, rules, shardings)
    results.append(jax.device_get(run(jax.device_put(params, shardings), prompts, jax.random.PRNGKey(0))))
  np.testing.assert_array_equal(results[0].tokens, results[1].tokens)
  np.testing.assert_allclose(results[0].scores, results[1].scores, atol=1e-4)


def test_options_are_checked():
  with pytest.raises(ValueError, match="decoding method.*'beam'"):
    decoding.Options('beams').validate()
  with pytest.raises(ValueError, match='top_p=0'):
    decoding.Options('sample', top_p=0).validate()
