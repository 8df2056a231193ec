"""Topic classification of AG News (ag_news_subset: 120k train / 7.6k test, 4 classes) with an encoder.

  python experiments/train.py --config=configs/catalog/ag_news_encoder.py --workdir=workdirs/ag_news

No TensorFlow needed. configs/catalog/sst2_encoder.py's model on the article descriptions (data.input_key;
'title' is the other text feature), classes World, Sports, Business, Sci/Tech; accuracy and macro-F1 on test.

Reference: fine-tuned BERT-base, 94.75 accuracy (5.25% test error; Sun et al. 2019, "How to Fine-Tune BERT
for Text Classification", on title + description).
"""

from configs.catalog import sst2_encoder


def get_config():
  config = sst2_encoder.get_config()
  config.data.update(name='ag_news_subset', train_split='train', eval_split='test', input_key='description',
                     target_key='label', classes=('World', 'Sports', 'Business', 'Sci/Tech'))
  config.model.num_classes = 4
  config.train.update(num_steps=11_250, eval_every=2000, checkpoint_every=2000)
  return config
