"""Decoder-only quickstart: a GPT-style prefix LM on number words -> digits.

  python experiments/train.py --config=configs/decoder_quickstart.py --workdir=workdirs/decoder_quickstart

The input and target form one sequence; the input is a bidirectional prefix and only the digits are
scored (--config.objective.name=causal_lm scores every token instead). Rotary positions, RMSNorm,
SwiGLU, grouped-query attention: the modern decoder recipe, small.
"""

from configs import quickstart


def get_config():
  config = quickstart.get_config()
  config.model.update(family='decoder_only', num_decoder_layers=4, num_kv_heads=2, norm='rmsnorm',
                      activation='swiglu', position_embedding='rotary', mlp_dim=384)
  config.objective.name = 'prefix_lm'
  config.train.num_steps = 1000
  config.eval.num_examples = 500
  return config
