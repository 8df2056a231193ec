"""Ablation: fine-tune the trained quickstart with LoRA adapters only, its weights frozen.

  python experiments/train.py --config=configs/quickstart.py --workdir=workdirs/quickstart
  python experiments/train.py --config=configs/ablations/quickstart_lora.py --workdir=workdirs/quickstart_lora

Rank-8 adapters on every attention and MLP projection are about 9% of the parameters here (a far smaller share on
larger models) and add nothing at first (B = 0), so step 0 reproduces the quickstart exactly; only the adapters
train (the printed count and metrics.jsonl's params/trainable say how many). Compare the held-out exact match with
the same 500 steps of full fine-tuning (--config.train.trainable="('.*',)").
"""

from configs import quickstart


def get_config():
  config = quickstart.get_config()
  config.init.workdir = 'workdirs/quickstart'
  config.model.update(lora_rank=8, lora_alpha=16.0, lora_targets=('query', 'key', 'value', 'out', 'wi', 'wo'))
  config.train.update(trainable=('.*_lora_[ab]',), num_steps=500)
  config.optimizer.update(learning_rate=1e-3, warmup_steps=50)
  return config
