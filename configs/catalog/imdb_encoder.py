"""Sentiment classification of IMDB movie reviews (imdb_reviews, 25k train / 25k test) with an encoder.

  python experiments/train.py --config=configs/catalog/imdb_encoder.py --workdir=workdirs/imdb

No TensorFlow needed. configs/catalog/sst2_encoder.py's model on long reviews: the first 512 tokens of each,
labels 'neg'/'pos' (the ClassLabel's names), accuracy and macro-F1 on the test split.
Fine-tune a pre-trained encoder with --config.init.workdir=... as in sst2_encoder.py.

Reference: fine-tuned BERT-base, 94.6 accuracy (5.40% test error; Sun et al. 2019, "How to Fine-Tune BERT
for Text Classification"); without pre-training, Maas et al. 2011 (who built the dataset) report 88.9.
"""

from configs.catalog import sst2_encoder


def get_config():
  config = sst2_encoder.get_config()
  config.model.max_length = 512
  config.data.update(name='imdb_reviews', train_split='train', eval_split='test', input_key='text',
                     target_key='label', classes=('neg', 'pos'), max_input_length=512)
  config.train.update(num_steps=2400, eval_every=800, checkpoint_every=800)
  return config
