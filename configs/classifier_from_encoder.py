"""Transfer: the number-words classifier started from the quickstart's trained encoder instead of from scratch.

  python experiments/train.py --config=configs/quickstart.py --workdir=workdirs/quickstart
  python experiments/train.py --config=configs/classifier_from_encoder.py --workdir=workdirs/classifier_from_encoder

Does what the encoder learned for translating number words into digits help to count their digits? Only the
token embeddings and the encoder are restored (the decoder has no counterpart here); the pooler and classifier
start fresh. Compare with configs/classifier_quickstart.py (from scratch), e.g. with
`--config.train.freeze="('token_embed/.*', 'encoder/.*')"` to train only the new head on the frozen encoder.
The encoder's architecture and the tokenizer are the quickstart's.
"""

from configs import classifier_quickstart, quickstart


def get_config():
  config = classifier_quickstart.get_config()
  source = quickstart.get_config().model
  config.model.update(num_encoder_layers=source.num_encoder_layers, norm_position='pre',
                      activation=source.activation, dropout_rate=source.dropout_rate)
  config.init.update(workdir='workdirs/quickstart', include=('token_embed/.*', 'encoder/.*'))
  return config
