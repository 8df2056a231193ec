"""T5 v1.1 base (248M parameters): configs/t5_small.py at base size (google/t5-v1_1-base)."""

from configs import t5_small


def get_config():
  return t5_small.get_config('base')
