"""The three families, their variants and objectives, against references and identities."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import config as config_lib, layers, models, objectives, train
from research import metrics as metrics_lib
from research.data import pipeline
from research.data.tokenizer import EOS_ID
from tests.conftest import REPO, random_batch, tiny_config


def test_t5_relative_buckets_match_known_values():
  rel = jnp.array([0, -1, 1, -8, -200, 200])
  np.testing.assert_array_equal(layers.t5_relative_bucket(rel, True, 32, 128), [0, 1, 17, 8, 15, 31])
  rel = jnp.array([5, 0, -3, -20, -1000])  # unidirectional: the future is bucket 0
  np.testing.assert_array_equal(layers.t5_relative_bucket(rel, False, 32, 128), [0, 0, 3, 17, 31])


def test_rotary_matches_numpy_and_depends_only_on_relative_position():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, 5, 2, 8)).astype(np.float32)
  positions = np.array([[0, 1, 2, 7, 30]])
  got = np.asarray(layers.rotary(jnp.asarray(x), jnp.asarray(positions)))
  want = np.empty_like(x)
  for i, p in enumerate(positions[0]):
    for j in range(4):
      angle = p * 10_000.0 ** (-j / 4)
      a, b = x[0, i, :, j], x[0, i, :, j + 4]
      want[0, i, :, j] = a * np.cos(angle) - b * np.sin(angle)
      want[0, i, :, j + 4] = b * np.cos(angle) + a * np.sin(angle)
  np.testing.assert_allclose(got, want, atol=1e-5)
  q, k = jnp.asarray(x[:, :1]), jnp.asarray(x[:, 1:2])
  dot = lambda pq, pk: float(jnp.sum(layers.rotary(q, jnp.array([[pq]])) * layers.rotary(k, jnp.array([[pk]]))))
  assert dot(3, 1) == pytest.approx(dot(13, 11), rel=1e-4)


def test_grouped_query_attention_equals_multi_head_with_shared_key_values():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 6, 16)).astype(np.float32)
  mask = layers.causal_mask(6)
  gqa = layers.MultiHeadAttention(num_heads=4, head_dim=8, num_kv_heads=2)
  params = nn.unbox(gqa.init(jax.random.PRNGKey(0), x, x, mask, True))['params']
  assert params['key'].shape == (16, 2, 8)
  mha = layers.MultiHeadAttention(num_heads=4, head_dim=8)
  repeated = {**params, 'key': np.repeat(params['key'], 2, axis=1), 'value': np.repeat(params['value'], 2, axis=1)}
  np.testing.assert_allclose(gqa.apply({'params': params}, x, x, mask, True),
                             mha.apply({'params': repeated}, x, x, mask, True), atol=1e-5)


def test_prefix_lm_layout_and_mask():
  layout = pipeline.Layout('decoder', 4, 3, prefix_lm=True)
  example = layout.arrange(np.array([5, 6, EOS_ID]), np.array([7, EOS_ID]), '')
  batch = pipeline.pad_example(example, layout.lengths())
  features = layout.features({k: v[None] for k, v in batch.items()})
  np.testing.assert_array_equal(features['decoder_target_tokens'][0], [5, 6, 1, 7, 1, 0, 0])
  np.testing.assert_array_equal(features['decoder_input_tokens'][0], [0, 5, 6, 1, 7, 0, 0])
  np.testing.assert_array_equal(features['decoder_loss_weights'][0], [0, 0, 0, 1, 1, 0, 0])
  np.testing.assert_array_equal(features['decoder_causal_attention'][0], [1, 1, 1, 1, 0, 0, 0])
  mask = np.asarray(layers.prefix_lm_mask(7, jnp.asarray(features['decoder_causal_attention'])))[0, 0]
  assert mask[0, 3] and mask[3, 0] and not mask[3, 4] and mask[4, 3] and not mask[2, 5]
  causal_layout = pipeline.Layout('decoder', 4, 3)
  causal_example = causal_layout.arrange(np.array([5, 6, EOS_ID]), np.array([7, EOS_ID]), '')
  causal = causal_layout.features({k: v[None] for k, v in pipeline.pad_example(
      causal_example, causal_layout.lengths()).items()})
  np.testing.assert_array_equal(causal['decoder_loss_weights'][0], [1, 1, 1, 1, 1, 0, 0])
  assert 'decoder_causal_attention' not in causal


def _decoder_only(config, **changes):
  config.model.update(family='decoder_only', dropout_rate=0.0, **changes)
  model = models.build(config.model, 40)
  layout = pipeline.Layout('decoder', 5, 4, prefix_lm=True)
  batch = train.example_batch(layout, 2)
  params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), batch))['params']
  return model, params


def test_prefix_lm_sees_the_whole_prefix_but_no_target(config):
  model, params = _decoder_only(config)
  tokens = np.array([[0, 11, 12, 13, 1, 21, 22, 1, 0]])
  prefix = np.array([[1, 1, 1, 1, 1, 0, 0, 0, 0]])
  batch = {'decoder_input_tokens': tokens, 'decoder_segment_ids': (np.arange(9) < 8)[None].astype(np.int32),
           'decoder_positions': np.arange(9)[None], 'decoder_causal_attention': prefix}
  logits = model.apply({'params': params}, batch)
  later_prefix = model.apply({'params': params}, {**batch, 'decoder_input_tokens': tokens.copy() * 0 + np.where(
      np.arange(9) == 3, 30, tokens)})
  changed_target = model.apply({'params': params}, {**batch, 'decoder_input_tokens': np.where(
      np.arange(9) == 6, 30, tokens)})
  assert not np.allclose(logits[0, 1], later_prefix[0, 1])  # position 1 reads prefix position 3
  np.testing.assert_allclose(logits[0, :6], changed_target[0, :6], atol=1e-6)  # nothing reads the future


T5_LIKE = dict(position_embedding='relative', norm='rmsnorm', activation='gated-gelu', tie_embeddings=False)
LLAMA_LIKE = dict(position_embedding='rotary', num_kv_heads=1, activation='swiglu')
BERT_LIKE = dict(position_embedding='sinusoidal', norm_position='post', activation='gelu', use_bias=True)
NO_POSITIONS_GQA = dict(position_embedding='none', num_kv_heads=2, norm='rmsnorm')


# Each case also runs on another 8-device layout: data, FSDP, tensor (Megatron) parallel, their mixes,
# and two emulated slices (the mesh's across-slice part).
@pytest.mark.parametrize('family, variant, layout', [
    ('encoder_decoder', T5_LIKE, dict(data=2, fsdp=2, tensor=2)),
    ('encoder_decoder', NO_POSITIONS_GQA, dict(data=1, fsdp=2, tensor=2, dcn=dict(data=2))),
    ('decoder_only', {**T5_LIKE, 'scan_layers': True, 'remat': 'full'}, dict(data=1, fsdp=4, tensor=2)),
    ('decoder_only', LLAMA_LIKE, dict(data=8, fsdp=1, tensor=1)),
    ('encoder_only', BERT_LIKE, dict(data=1, fsdp=8, tensor=1)),
    ('encoder_only', {**LLAMA_LIKE, 'scan_layers': True}, dict(data=2, fsdp=1, tensor=4)),
])
def test_every_variant_and_layout_gives_the_one_device_result(config, family, variant, layout):
  """Each family x variant trains, and its 8-device layout gives the 1-device losses (the second step's
  loss also checks the sharded update; parameters themselves are not compared, since Adam turns rounding
  noise in near-zero gradients into full-size steps)."""
  config.model.update(family=family, num_heads=4, **variant)
  config.model.head = 'mlm' if family == 'encoder_only' else 'lm'
  config.objective.name = {'encoder_decoder': 'seq2seq', 'decoder_only': 'prefix_lm', 'encoder_only': 'mlm'}[family]
  results = []
  for devices, mesh in ((jax.devices()[:1], dict(data=1, fsdp=1, tensor=1)), (jax.devices(), layout)):
    config.mesh.update(dcn=dict(data=1, fsdp=1, tensor=1))
    config.mesh.update(**mesh)
    exp = train.setup(config, devices)
    state = train.init_state(exp)
    step = train.make_train_step(exp)
    losses = []
    for seed in (0, 1):
      state, metrics = step(state, train.to_global(exp, random_batch(exp.objective.layout, 16, seed, vocab=60)))
      losses.append(float(metrics['loss']))
    results.append(losses)
  assert np.isfinite(results[0]).all() and results[0][1] != results[0][0]
  np.testing.assert_allclose(results[1], results[0], rtol=1e-5)


def test_decoder_only_greedy_continuation_equals_step_by_step(config):
  """The prefix-LM evaluation's continuations (cached decoding), aligned with the targets, against a reference
  that re-runs the whole sequence for every new token."""
  model, params = _decoder_only(config, position_embedding='rotary')
  config.objective.name = 'prefix_lm'
  config.data.update(max_input_length=3, max_target_length=6)
  objective = objectives.build(config, model, 40)
  prompt_tokens = [[0, 11, 12, 1], [0, 13, 1]]
  length, steps = 9, 6
  inputs = np.zeros((2, length), np.int32)
  prompt = np.zeros((2, length), np.int32)
  for row, tokens in enumerate(prompt_tokens):
    inputs[row, :len(tokens)] = tokens
    prompt[row, :len(tokens)] = 1
  batch = {'decoder_input_tokens': inputs, 'decoder_positions': np.tile(np.arange(length), (2, 1)),
           'decoder_causal_attention': prompt, 'decoder_prompt': prompt, 'example_index': np.arange(2)}
  got = np.asarray(jax.jit(objective.continue_prompts)(params, batch))
  for row, tokens in enumerate(prompt_tokens):
    sequence, want = list(tokens), np.zeros(length, np.int32)
    for _ in range(steps):
      n = len(sequence)
      logits = model.apply({'params': params}, {
          'decoder_input_tokens': np.array([sequence]), 'decoder_segment_ids': np.ones((1, n), np.int32),
          'decoder_positions': np.arange(n)[None], 'decoder_causal_attention': prompt[row:row + 1, :n]})
      token = int(np.argmax(logits[0, -1]))
      want[n - 1] = token
      sequence.append(token)
      if token == EOS_ID:
        break
    np.testing.assert_array_equal(got[row], want)


def test_mlm_corruption_rates(config):
  config.model.update(family='encoder_only', head='mlm')
  config.objective.name = 'mlm'
  objective = objectives.build(config, models.build(config.model, 51), 50)
  tokens = np.random.default_rng(0).integers(3, 50, (64, 256)).astype(np.int32)
  tokens[:, -10:] = 0
  tokens[:, -11] = EOS_ID
  segments = (tokens > 0).astype(np.int32)
  corrupted, selected = objective.corrupt(jax.random.PRNGKey(1), {'encoder_input_tokens': tokens,
                                                                  'encoder_segment_ids': segments})
  corrupted, selected = np.asarray(corrupted['encoder_input_tokens']), np.asarray(selected)
  real = (segments > 0) & (tokens != EOS_ID)
  assert not selected[~real].any() and (corrupted[~real] == tokens[~real]).all()
  assert selected[real].mean() == pytest.approx(0.15, abs=0.01)
  chosen = corrupted[selected]
  masked = chosen == 50
  assert masked.mean() == pytest.approx(0.8, abs=0.02)
  kept = chosen == tokens[selected]
  assert kept.mean() == pytest.approx(0.1 + 0.1 / 47, abs=0.02)  # 10% kept, plus random draws of the same id
  assert ((chosen >= 3) & (chosen < 50) | masked).all()


def test_mlm_evaluation_masks_depend_on_the_example_alone(config):
  """Evaluating examples in one batch, or split over two in another row order, gives the same sums."""
  config.model.update(family='encoder_only', head='mlm')
  config.objective.name = 'mlm'
  objective = objectives.build(config, models.build(config.model, 51), 50)
  batch = random_batch(objective.layout, size=4, vocab=50)
  batch['example_index'] = np.arange(4, dtype=np.int32)
  params = nn.unbox(objective.init(jax.random.PRNGKey(0), batch))
  whole, _ = objective.eval_fn(params, batch)
  parts = [objective.eval_fn(params, {k: v[rows] for k, v in batch.items()})[0] for rows in ([3, 1], [0, 2])]
  assert float(whole['target_tokens']) > 0
  for key, value in whole.items():
    np.testing.assert_allclose(parts[0][key] + parts[1][key], value, rtol=1e-5)


def test_classification_summary_against_hand_counts():
  confusion = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])  # rows: true class; class 2 absent
  summary = metrics_lib.classification_summary(confusion)
  precision = [5 / 7, 3 / 4]
  recall = [5 / 6, 3 / 5]
  f1 = [2 * p * r / (p + r) for p, r in zip(precision, recall)]
  assert summary['accuracy'] == pytest.approx(8 / 11)
  assert summary['precision'] == pytest.approx(np.mean(precision))
  assert summary['recall'] == pytest.approx(np.mean(recall))
  assert summary['f1'] == pytest.approx(np.mean(f1))


@pytest.mark.parametrize('name', ['decoder_quickstart', 'encoder_quickstart', 'classifier_quickstart',
                                  'span_corruption_quickstart'])
def test_each_family_quickstart_trains(name, data_dir, tmp_path):
  config = config_lib.load_config_file(f'{REPO}/configs/{name}.py')
  tiny = tiny_config(data_dir)
  config.data.data_dir = data_dir
  config.model.update(d_model=32, num_heads=2, mlp_dim=64, num_kv_heads=min(config.model.get('num_kv_heads', 0), 2))
  config.train.update(tiny.train.to_dict(), num_steps=30, eval_every=30, checkpoint_every=30)
  config.optimizer.update(warmup_steps=5, learning_rate=3e-3)
  config.eval.update(tiny.eval.to_dict())
  final = train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
  losses = [r['train/loss'] for r in metrics_lib.read_metrics(str(tmp_path)) if 'train/loss' in r]
  assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
  assert final['examples'] == 64
  assert {'bleu', 'chrf'} <= set(final) if name == 'decoder_quickstart' else not {'bleu', 'chrf'} & set(final)
  if name == 'classifier_quickstart':
    assert {'accuracy', 'precision', 'recall', 'f1'} <= set(final)


def test_objective_and_family_must_agree(config):
  config.objective.name = 'mlm'
  with pytest.raises(config_lib.ConfigError, match="objective.name='mlm' needs model.family='encoder_only'"):
    train.setup(config)


@pytest.mark.parametrize('name, published', [
    ('t5_small', 76_961_152),  # google/t5-v1_1-small
    ('t5_base', 247_577_856),  # google/t5-v1_1-base
    ('bert_base', 110_000_000),  # BERT paper, Table 1 (BERT-base: 110M)
    ('gpt2_small', 124_439_808),  # gpt2 (124M)
])
def test_standard_configs_have_the_published_parameter_count(name, published):
  config = config_lib.load_config_file(f'{REPO}/configs/{name}.py')
  model = models.build(config.model, tokenizer_vocab_size=config.data.vocab_size)
  objective = objectives.build(config, model, config.data.vocab_size)
  shapes = jax.eval_shape(objective.init, jax.random.PRNGKey(0), train.example_batch(objective.layout, 1))
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(shapes)))
  assert abs(count - published) / published < 0.01, count


@pytest.mark.parametrize('length, density, mean', [(20, 0.15, 3.0), (100, 0.15, 3.0), (57, 0.5, 2.0), (9, 0.3, 1.0)])
def test_span_corruption_noise_mask_and_reconstruction(length, density, mean):
  rng = np.random.default_rng(length)
  noise_tokens, spans = pipeline.num_noise_spans(length, density, mean)
  assert noise_tokens == min(max(round(length * density), 1), length - 1)
  for _ in range(20):
    mask = pipeline.random_spans_noise_mask(length, density, mean, rng)
    starts = mask & ~np.concatenate([[False], mask[:-1]])
    assert mask.sum() == noise_tokens and starts.sum() == spans and not mask[0]
    tokens = rng.integers(3, 50, length)
    inputs, targets = pipeline.span_corruption(tokens, density, mean, 100, rng)
    # Putting each span back in place of its sentinel gives the original text.
    spans_by_sentinel, current = {}, None
    for t in targets:
      if t >= 100:
        current = t
        spans_by_sentinel[t] = []
      else:
        spans_by_sentinel[current].append(t)
    rebuilt = [x for t in inputs for x in (spans_by_sentinel[t] if t >= 100 else [t])]
    assert rebuilt == tokens.tolist()
    assert sorted(spans_by_sentinel) == list(range(100, 100 + spans))
