r"""Trains a model from a config into a workdir (resuming if the workdir has a checkpoint).

  python experiments/train.py --config=configs/quickstart.py --workdir=workdirs/quickstart \
      --config.model.num_encoder_layers=4

Writes config.json, vocab.model, checkpoints/, metrics.jsonl and tensorboard/ into the workdir.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from research import config as config_lib
from research import mesh as mesh_lib
from research import train

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'configs', 'quickstart.py')
if __name__ == '__main__':  # config_flags applies overrides while the flag is defined: check them first
  config_lib.exit_on_config_error(config_lib.check_overrides)(sys.argv, default_file=_DEFAULT_CONFIG)
_CONFIG = config_flags.DEFINE_config_file('config', _DEFAULT_CONFIG, 'Config file (path[:arg]).', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and the resolved config.',
                               required=True)


@config_lib.exit_on_config_error
def main(argv):
  if len(argv) > 1:
    raise config_lib.ConfigError(f'unexpected arguments {argv[1:]}; fields are set as --config.section.key=value')
  logging.set_verbosity(logging.WARNING)
  if 'distributed' in _CONFIG.value:
    mesh_lib.initialize_distributed(_CONFIG.value.distributed)
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
