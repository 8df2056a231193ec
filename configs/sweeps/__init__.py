"""Sweep files: each get_sweep() returns a dict of configs, grid, trials, seeds, overrides and metric (see
quickstart_ablations.py); run one with experiments/sweep.py --sweep=configs/sweeps/<name>.py."""
