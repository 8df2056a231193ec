"""Three variants of the quickstart, full length: the baseline, RMSNorm + SiLU, and 80% magnitude pruning.

  python experiments/sweep.py --workdir=workdirs/sweeps/quickstart_ablations \
      --sweep=configs/sweeps/quickstart_ablations.py

About 10 minutes on 2 CPU cores. Add --seeds=0,1,2 for mean ± std over seeds, or
--grid=optimizer.learning_rate=1e-3,3e-3 to cross every variant with a learning rate.

A sweep file returns a dict with some of:
  configs    the configs to compare: {label: ConfigDict} (labels name the trials), or config file paths
  grid       {dotted key: [values]}: every combination is a trial, for every config
  trials     [{dotted key: value, ...}]: explicit settings (each crossed with the grid), when a grid is too much
  seeds      [seed, ...]: each setting repeated with these values of config.seed (the table gives mean ± std)
  overrides  {dotted key: value}: set in every trial (shorter runs, a data_dir, ...)
  metric     the metric that marks the best trial in the results (default eval/loss)
Command-line --config, --grid, --seeds and --set replace or extend these.
"""

from configs import quickstart
from configs.ablations import quickstart_pruned, quickstart_rmsnorm


def get_sweep():
  return dict(
      configs={'baseline': quickstart.get_config(), 'rmsnorm_silu': quickstart_rmsnorm.get_config(),
               'pruned80': quickstart_pruned.get_config()},
      metric='eval/exact_match',
  )
