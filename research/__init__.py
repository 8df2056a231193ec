"""A JAX/Flax research codebase for Transformer language models.

The one call most notebooks need: `research.load_experiment(workdir)`.
"""


def load_experiment(workdir: str, step: int | None = None):
  """See `research.analysis.load_experiment` (imported lazily: `import research` stays light)."""
  from research import analysis
  return analysis.load_experiment(workdir, step)
