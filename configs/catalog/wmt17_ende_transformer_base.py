"""Transformer-base on WMT17 English -> German: the WMT14 recipe on the larger WMT17 training data.

  pip install -r requirements-tf.txt   # the wmt17_translate builder registers only with TensorFlow
  python experiments/train.py --config=configs/catalog/wmt17_ende_transformer_base.py \
      --workdir=workdirs/wmt17_ende --config.data.data_dir=gs://BUCKET/tfds

Same model, vocabulary, label smoothing and inverse-square-root schedule as
configs/catalog/wmt14_ende_transformer_base.py; BLEU (sacrebleu) on the validation split (newstest2016).

Reference: none published for this exact setup (the WMT17 findings, Bojar et al. 2017, list the submitted
systems on newstest2017, most of them larger or ensembled).
"""

from configs.catalog import wmt14_ende_transformer_base


def get_config():
  config = wmt14_ende_transformer_base.get_config()
  config.data.name = 'wmt17_translate/de-en'
  return config
