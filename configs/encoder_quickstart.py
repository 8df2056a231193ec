"""Encoder-only quickstart: BERT-style masked-LM pre-training on the number words.

  python experiments/train.py --config=configs/encoder_quickstart.py --workdir=workdirs/encoder_quickstart

Post-norm, GELU, learned positions, as in BERT. 15% of tokens are scored (80% [MASK], 10% random,
10% kept). configs/classifier_quickstart.py fine-tunes the same architecture as a classifier.
"""

from configs import quickstart


def get_config():
  config = quickstart.get_config()
  config.model.update(family='encoder_only', head='mlm', num_encoder_layers=4, norm_position='post',
                      activation='gelu', dropout_rate=0.1)
  config.objective.name = 'mlm'
  config.optimizer.learning_rate = 1e-3
  config.train.num_steps = 1000
  config.eval.num_examples = 500
  return config
