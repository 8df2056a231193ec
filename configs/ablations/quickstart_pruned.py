"""Magnitude pruning: the quickstart with 80% of every attention and MLP matrix zeroed by the end of training.

  python experiments/train.py --config=configs/ablations/quickstart_pruned.py --workdir=workdirs/pruned

Sparsity rises along the cubic schedule from step 300 to step 1100 and is re-thresholded every 20 steps; the
last 400 steps recover at the final sparsity. Embeddings and norms stay dense.
"""

from configs import quickstart


def get_config():
  config = quickstart.get_config()
  config.prune.update(sparsity=0.8, start_step=300, end_step=1100, every=20)
  return config
