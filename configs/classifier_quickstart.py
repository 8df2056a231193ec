"""Encoder-only classification: how many digits does a number written in words have? (7 classes)

  python experiments/train.py --config=configs/classifier_quickstart.py --workdir=workdirs/classifier_quickstart

Reports accuracy, macro precision/recall/F1. Mean-pooled encoder output -> tanh pooler -> classes.
"""

from configs import encoder_quickstart


def get_config():
  config = encoder_quickstart.get_config()
  config.model.update(head='classifier', num_classes=7, pooling='mean')
  config.objective.name = 'classify'
  config.data.update(target_key='digits', classes=tuple(str(d) for d in range(1, 8)))
  config.train.num_steps = 500
  return config
