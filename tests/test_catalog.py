"""The TFDS-catalog configs (configs/catalog/): each trains end-to-end on mock data, packing keeps examples apart,
and bad data settings fail with errors that name what is wrong.

`tfds.testing.mock_data` fakes each catalog dataset from its builder's features (random text, random labels), so
nothing is downloaded. The builders of wmt14/wmt17, glue and c4 register only when TensorFlow is importable
(requirements-tf.txt); their configs are skipped without it.
"""

import glob
import importlib.util
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from research import config as config_lib, train
from research.config import ConfigError
from research.data import pipeline, sources
from tests.conftest import REPO

NEEDS_TF = {'wmt14_ende_transformer_base', 'wmt17_ende_transformer_base', 'sst2_encoder', 'c4_decoder',
            'c4_span_corruption_t5'}
CATALOG = sorted(os.path.basename(p)[:-3] for p in glob.glob(f'{REPO}/configs/catalog/*.py')
                 if not p.endswith('__init__.py'))
HAS_TF = importlib.util.find_spec('tensorflow') is not None
# What each objective's evaluation must report (BLEU for translation, perplexity for LMs, F1 for classifiers).
METRICS = {'seq2seq': {'bleu', 'chrf', 'loss'}, 'span_corruption': {'loss', 'accuracy'},
           'causal_lm': {'perplexity', 'loss'}, 'classify': {'accuracy', 'f1'}}


def _mock(num_examples: int = 40):
  return tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE)


def _load(name: str, data_dir: str):
  if name in NEEDS_TF and not HAS_TF:
    pytest.skip(f'{name}: its TFDS builder needs TensorFlow (pip install -r requirements-tf.txt)')
  config = config_lib.load_config_file(f'{REPO}/configs/catalog/{name}.py')
  config.model.update(d_model=32, num_heads=2, head_dim=16, mlp_dim=64, num_encoder_layers=1, num_decoder_layers=2,
                      dtype='float32', max_length=64)
  if config.model.get('num_kv_heads'):
    config.model.num_kv_heads = 1
  config.data.update(data_dir=data_dir, vocab_size=200, tokenizer_train_examples=40, read_threads=1,
                     max_input_length=min(config.data.max_input_length, 24),
                     max_target_length=min(config.data.max_target_length, 24))
  config.train.update(batch_size=8, num_steps=4, log_every=1, eval_every=2, checkpoint_every=2, keep_checkpoints=2)
  config.optimizer.update(warmup_steps=1)
  config.eval.update(batch_size=8, num_examples=8, num_print=1)
  config.mesh.update(data=1, fsdp=1, tensor=1)
  return config


MOCK_DATA_DIR = '/tmp/non-existing/tfds/data_dir'  # where mock_data(policy=USE_CODE) puts every builder


@pytest.fixture(scope='module')
def catalog_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('catalog_tfds'))


@pytest.fixture(autouse=True)
def _vocabulary_next_to_the_test_data(monkeypatch, catalog_dir):
  """mock_data moves every builder to a fixed fake data dir; the vocabulary cache goes to the same place under
  this module's data dir instead, so that each session trains its vocabularies afresh."""
  cache_dir = sources._cache_dir
  monkeypatch.setattr(sources, '_cache_dir', lambda data: cache_dir(data).replace(MOCK_DATA_DIR, catalog_dir))


@pytest.mark.parametrize('name', CATALOG)
def test_catalog_config_trains_evaluates_and_checkpoints_on_mock_data(name, catalog_dir, tmp_path):
  config = _load(name, catalog_dir)
  with _mock():
    final = train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
    cache = sources._cache_dir(config.data)
  assert METRICS[config.objective.name] <= set(final)
  if config.objective.name == 'causal_lm':  # plain text: perplexity, no greedy decoding from an empty prompt
    assert 'bleu' not in final
  assert all(math.isfinite(v) for v in final.values())
  assert final['examples'] == 8
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '4']
  # The vocabulary was trained from the training split and cached next to the (mock) data.
  assert cache.startswith(os.path.join(catalog_dir, config.data.name.split('/')[0], ''))
  assert glob.glob(os.path.join(cache, 'spm_*.model'))


def test_all_issue_datasets_have_a_config():
  names = {config_lib.load_config_file(f'{REPO}/configs/catalog/{n}.py').data.name.split('/')[0] for n in CATALOG}
  assert {'wmt14_translate', 'wmt17_translate', 'ted_hrlr_translate', 'lm1b', 'c4', 'glue', 'imdb_reviews',
          'ag_news_subset'} <= names


def _records(config, split='train'):
  with _mock():
    return list(sources.open_split(config.data, split))


def test_catalog_features_map_onto_input_and_target(catalog_dir):
  """Translation pairs by key, one text feature for LMs, ClassLabel ids as their names."""
  with _mock(4):
    raw = tfds.data_source('ag_news_subset', split='train', data_dir=catalog_dir)
    raw = [raw[i] for i in range(4)]
    names = tfds.builder('ag_news_subset', data_dir=catalog_dir).info.features['label'].names
  records = _records(_load('ag_news_encoder', catalog_dir))[:4]
  assert [r['input'] for r in records] == [sources._text(ex['description']) for ex in raw]
  assert [r['target'] for r in records] == [names[int(ex['label'])] for ex in raw]
  lm = _records(_load('lm1b_decoder', catalog_dir))
  assert {r['input'] for r in lm} == {''} and all(r['target'] for r in lm)


def test_language_modelling_examples_are_the_text_alone(catalog_dir):
  config = _load('lm1b_decoder', catalog_dir)
  with _mock():
    exp = train.setup(config, jax.devices()[:1])
  text = exp.train_records[0]['target']
  example = pipeline.Encode(exp.tokenizer, exp.objective.layout).map({'input': '', 'target': text})
  ids = exp.tokenizer.encode(text)[:config.data.max_target_length - 1] + [1]
  np.testing.assert_array_equal(example['targets'], ids)
  np.testing.assert_array_equal(example['scored'], np.ones(len(ids)))


def _unpack(batch: dict, length: int) -> dict:
  """Each packed segment as its own padded row: the model features a one-example-per-row batch would have."""
  rows = []
  for r in range(len(batch['decoder_segment_ids'])):
    for segment in range(1, int(batch['decoder_segment_ids'][r].max()) + 1):
      row = {}
      for key, value in batch.items():
        prefix = 'encoder' if key.startswith('encoder') else 'decoder'
        kept = value[r][batch[f'{prefix}_segment_ids'][r] == segment]
        if key.endswith('segment_ids'):
          kept = np.ones_like(kept)
        row[key] = np.pad(kept, (0, length - len(kept)))
      rows.append(row)
  return {key: np.stack([row[key] for row in rows]) for key in rows[0]}


def _token_losses(objective, params, batch) -> np.ndarray:
  logits = objective.logits(params, {k: jnp.asarray(v) for k, v in batch.items()}, None)
  log_probs = jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1)
  targets = batch['decoder_target_tokens']
  return -np.take_along_axis(np.asarray(log_probs), targets[..., None], axis=-1)[..., 0]


@pytest.mark.parametrize('name', ['ted_ptbr_en_transformer', 'lm1b_decoder', 'c4_span_corruption_t5'])
def test_packed_and_unpacked_examples_have_the_same_losses(name, catalog_dir):
  """No token attends across a packed sequence boundary: each packed example's per-token losses equal those of
  the same example alone in its row; with the segment ids erased (attention across examples) they differ."""
  config = _load(name, catalog_dir)
  config.data.update(pack=True, max_input_length=24, max_target_length=24)
  config.model.dropout_rate = 0.0
  with _mock():
    exp = train.setup(config, jax.devices()[:1])
  batch = next(pipeline.train_iterator(exp.train_records, exp.tokenizer, config.data, exp.objective.layout,
                                       global_batch_size=2, seed=0))
  batch = {k: v for k, v in batch.items() if k.startswith(('encoder', 'decoder'))}
  assert batch['decoder_segment_ids'].max() >= 2  # examples share a row
  params = nn.unbox(exp.objective.init(jax.random.PRNGKey(0), batch))
  packed = _token_losses(exp.objective, params, batch)
  length = batch['decoder_target_tokens'].shape[1]
  alone = _unpack({**batch, 'losses': packed}, length)  # 'losses': the packed row's, moved with their tokens
  real = alone['decoder_segment_ids'] > 0
  np.testing.assert_allclose(alone['losses'][real], _token_losses(exp.objective, params, alone)[real],
                             rtol=1e-4, atol=1e-4)
  real = batch['decoder_segment_ids'] > 0
  leaky = {k: np.where(v > 0, 1, 0).astype(v.dtype) if k.endswith('segment_ids') else v for k, v in batch.items()}
  assert not np.allclose(_token_losses(exp.objective, params, leaky)[real], packed[real], atol=1e-3)


def test_unknown_dataset_names_the_nearest_ones(catalog_dir):
  config = _load('imdb_encoder', catalog_dir)
  config.data.name = 'imdb_review'
  with pytest.raises(ConfigError, match="data.name='imdb_review'.*did you mean imdb_reviews"):
    sources.open_split(config.data, 'train')


@pytest.mark.skipif(HAS_TF, reason='with TensorFlow the builder registers')
def test_a_builder_that_needs_tensorflow_says_so(catalog_dir):
  config = _load('imdb_encoder', catalog_dir)
  config.data.name = 'glue/sst2'
  with pytest.raises(ConfigError, match='requirements-tf.txt'):
    sources.open_split(config.data, 'train')


def test_unknown_feature_key_lists_the_available_keys(catalog_dir):
  config = _load('ted_ptbr_en_transformer', catalog_dir)
  config.data.target_key = 'de'
  with pytest.raises(ConfigError, match="data.target_key='de' is not a feature of ted_hrlr_translate/pt_to_en; "
                                        'it has pt, en'):
    sources.open_split(config.data, 'train')


def test_class_names_must_match_the_dataset_labels(catalog_dir):
  config = _load('imdb_encoder', catalog_dir)
  config.data.classes = ('negative', 'positive')
  with pytest.raises(ConfigError, match=r"labels of imdb_reviews.label \('neg', 'pos'\)"):
    sources.open_split(config.data, 'train')


def test_unprepared_data_without_download_names_the_missing_path(tmp_path):
  config = _load('imdb_encoder', str(tmp_path / 'tfds'))
  config.data.download = False
  with pytest.raises(ConfigError, match=f'imdb_reviews is not prepared at {tmp_path}/tfds/imdb_reviews/'):
    sources.open_split(config.data, 'train')
  assert not (tmp_path / 'tfds').exists()
