"""T5-style span-corruption pre-training of the quickstart encoder-decoder on the number words.

  python experiments/train.py --config=configs/span_corruption_quickstart.py --workdir=workdirs/span_corruption

15% of each input's tokens, in spans of mean length 3, are replaced by sentinels; the decoder
produces each sentinel followed by the span it hid.
"""

from configs import quickstart


def get_config():
  config = quickstart.get_config()
  config.objective.update(name='span_corruption', noise_density=0.15, mean_noise_span_length=3.0)
  config.train.num_steps = 1000
  config.eval.num_examples = 500
  return config
