"""Distillation: the quickstart at half width (d_model 64) learns from the trained quickstart's soft targets.

  python experiments/train.py --config=configs/quickstart.py --workdir=workdirs/quickstart  # the teacher, first
  python experiments/train.py --config=configs/ablations/quickstart_distilled.py --workdir=workdirs/distilled

The same student without a teacher is --config.distill.teacher_workdir=''. Both train the same SentencePiece
vocabulary from the same data (it is cached by its settings), so the teacher's token ids mean the same.
"""

from configs import quickstart


def get_config():
  config = quickstart.get_config()
  config.model.update(d_model=64, mlp_dim=256)
  config.distill.update(teacher_workdir='workdirs/quickstart', weight=0.5, temperature=2.0)
  return config
