"""Ablation: the quickstart with T5 v1.1-style RMSNorm and SiLU instead of LayerNorm and ReLU.

A fork is a few lines: import the base config, change fields, say why here.
"""

from configs import quickstart


def get_config():
  config = quickstart.get_config()
  config.model.norm = 'rmsnorm'
  config.model.activation = 'silu'
  return config
