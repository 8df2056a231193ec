r"""Imports a Hugging Face checkpoint into a workdir, or exports a workdir's checkpoint to the HF layout.

  python experiments/convert_checkpoint.py --from_hf=path/to/t5-small --workdir=workdirs/t5_small
  python experiments/convert_checkpoint.py --workdir=workdirs/quickstart --to_hf=exported/quickstart [--step=1500]

Supported: T5 (v1.0 and v1.1), BERT (masked LM, sequence classification) and GPT-2, from a directory with
config.json and model.safetensors (no torch needed) or pytorch_model.bin (needs torch).
"""

from absl import app, flags, logging

from research import config as config_lib
from research import convert

_FROM_HF = flags.DEFINE_string('from_hf', None, 'Hugging Face checkpoint directory to import.')
_TO_HF = flags.DEFINE_string('to_hf', None, 'Directory to export the workdir checkpoint to.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'The workdir to create (import) or read (export).', required=True)
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step to export (default: latest).')


@config_lib.exit_on_config_error
def main(argv):
  if len(argv) > 1:
    raise config_lib.ConfigError(f'unexpected arguments {argv[1:]}')
  if bool(_FROM_HF.value) == bool(_TO_HF.value):
    raise config_lib.ConfigError('give exactly one of --from_hf (import) and --to_hf (export)')
  logging.set_verbosity(logging.WARNING)
  if _FROM_HF.value:
    config = convert.import_hf(_FROM_HF.value, _WORKDIR.value)
    print(f'imported {config.model.family} ({config.objective.name}) into {_WORKDIR.value}; train or evaluate it '
          f'with --config={_WORKDIR.value}/config.py --workdir={_WORKDIR.value}')
  else:
    hf_config = convert.export_hf(_WORKDIR.value, _TO_HF.value, _STEP.value)
    print(f'exported {_WORKDIR.value} as a Hugging Face {hf_config["model_type"]} checkpoint into {_TO_HF.value}')


if __name__ == '__main__':
  app.run(main)
