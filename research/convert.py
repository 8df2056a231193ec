"""Workdirs <-> Hugging Face checkpoint directories (the tensor mapping itself is in `hf.py`).

`import_hf` turns a Hugging Face directory into a workdir whose step-0 checkpoint holds the imported
parameters (fresh optimizer state), with a config that fine-tunes, evaluates or analyses it:

  python experiments/convert_checkpoint.py --from_hf=t5-small/ --workdir=workdirs/t5_small
  python experiments/train.py --config=workdirs/t5_small/config.py --workdir=workdirs/t5_small

`export_hf` writes a workdir's checkpoint back in the Hugging Face layout.
"""

from __future__ import annotations

import os
import shutil

import jax
import ml_collections
import numpy as np

from research import analysis, checkpoints, config as config_lib, hf, train

# The config of each family's quickstart is the base an imported model's config starts from.
_BASES = {'encoder_decoder': 'quickstart', 'decoder_only': 'decoder_quickstart', 'encoder_only': 'encoder_quickstart'}
# Model fields no checkpoint fixes (how the model runs, LoRA adapters): kept from the base so that they can be
# overridden, e.g. --config.model.lora_rank=8 to fine-tune an imported model with adapters.
_RUN_FIELDS = ('dtype', 'param_dtype', 'remat', 'scan_layers', 'lora_rank', 'lora_alpha', 'lora_targets')
_CONFIG_PY = '''"""The config of a checkpoint imported by experiments/convert_checkpoint.py (edit config.json, or override)."""

import json
import os

import ml_collections


def get_config():
  with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'config.json')) as f:
    return ml_collections.ConfigDict(json.load(f))
'''


def imported_config(model: ml_collections.ConfigDict, spiece: str | None) -> ml_collections.ConfigDict:
  """The family's quickstart config with the imported architecture and a matching objective."""
  import importlib
  config = importlib.import_module(f'configs.{_BASES[model.family]}').get_config()
  config.model = ml_collections.ConfigDict({**{k: config.model[k] for k in _RUN_FIELDS}, **model})
  if model.family == 'encoder_only':
    config.objective.name = 'classify' if model.head == 'classifier' else 'mlm'
    if model.head == 'classifier':
      config.data.update(target_key='digits', classes=tuple(str(i) for i in range(1, model.num_classes + 1)))
  if spiece:  # T5's SentencePiece model uses this codebase's ids (0 pad, 1 EOS, 2 unknown)
    config.data.vocab_file = spiece
  else:  # no tokenizer this codebase can run: bytes fit any vocabulary of at least 259 ids
    config.data.tokenizer = 'bytes'
  return config


def import_hf(hf_dir: str, workdir: str) -> ml_collections.ConfigDict:
  """Writes `workdir` (config.json, config.py, checkpoints/0) from a Hugging Face directory."""
  if os.path.exists(os.path.join(workdir, 'checkpoints')):
    raise config_lib.ConfigError(f'{workdir} already holds checkpoints; import into a new workdir')
  hf_config, tensors = hf.read(hf_dir)
  model = hf.model_config(hf_config)
  os.makedirs(workdir, exist_ok=True)
  spiece = None
  if os.path.exists(os.path.join(hf_dir, 'spiece.model')):
    spiece = os.path.abspath(os.path.join(workdir, train.VOCAB_FILE))
    shutil.copyfile(os.path.join(hf_dir, 'spiece.model'), spiece)
  config = imported_config(model, spiece)
  config.mesh.update(data=1, fsdp=1, tensor=1)
  tokenizer = train.tokenizer_for_workdir(config, workdir)
  exp = train.setup(config, devices=jax.devices()[:1], tokenizer=tokenizer)
  params = hf.params_from_hf(model, tensors)
  hf.check_shapes(exp.abstract_state.params, params)
  state = train.init_state(exp)
  params = jax.tree.map(lambda p, a: jax.device_put(np.asarray(p, a.dtype), a.sharding), params,
                        exp.abstract_state.params)
  state = state.replace(params=params, opt_state=exp.optimizer.init(params))
  checkpointer = checkpoints.Checkpointer(os.path.join(workdir, 'checkpoints'))
  checkpointer.save(0, state, force=True)
  checkpointer.wait()
  checkpointer.close()
  config.mesh.update(data=-1)
  train.save_to_workdir(config, tokenizer, workdir)
  with open(os.path.join(workdir, 'config.py'), 'w') as f:
    f.write(_CONFIG_PY)
  return config


def export_hf(workdir: str, hf_dir: str, step: int | None = None) -> dict:
  """Writes the parameters of `workdir` at `step` (default: latest) as a Hugging Face directory."""
  exp = analysis.load_experiment(workdir, step)
  params = jax.tree.map(np.asarray, exp.params)
  model = hf.resolved(exp.config.model, params['token_embed']['embedding'].shape[0])
  hf_config = hf.hf_config(model)
  hf.write(hf_dir, hf_config, hf.params_to_hf(model, params))
  vocab = os.path.join(workdir, train.VOCAB_FILE)
  if model.family == 'encoder_decoder' and os.path.exists(vocab):
    shutil.copyfile(vocab, os.path.join(hf_dir, 'spiece.model'))
  return hf_config
