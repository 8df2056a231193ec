"""Shared test setup: 8 emulated CPU devices, a tiny config, and the embedded data prepared once."""

import atexit
import os
import shutil
import tempfile

# Before jax is imported anywhere: 8 CPU devices for the sharding tests (1-device runs use devices[:1]).
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8').strip()
# One persistent compilation cache for the session, shared by the pytest-xdist workers and the command lines the
# tests start: a program that took over a second to compile (a train step, say) compiles once, not in every
# process. The size limit turns on jax's file lock, so no process reads an entry another is still writing.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='jax-compilation-cache-')
  atexit.register(shutil.rmtree, os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)
os.environ.setdefault('JAX_COMPILATION_CACHE_MAX_SIZE', str(4 << 30))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from configs import quickstart  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(data_dir: str):
  """The quickstart config shrunk so that a step takes milliseconds; dropout on, to exercise RNG."""
  config = quickstart.get_config()
  config.data.data_dir = data_dir
  config.model.update(d_model=32, num_heads=2, mlp_dim=64, dropout_rate=0.1)
  config.train.update(batch_size=16, num_steps=12, log_every=1, eval_every=6, checkpoint_every=6)
  config.optimizer.warmup_steps = 2
  config.eval.update(batch_size=32, num_examples=64, num_print=2)
  return config


def random_batch(layout, size: int = 2, seed: int = 0, vocab: int = 40) -> dict:
  """A batch of `layout`'s features with random tokens and every position real."""
  from research import train
  batch = train.example_batch(layout, size)
  rng = np.random.default_rng(seed)
  for key in batch:
    if key.endswith('tokens'):
      batch[key] = rng.integers(3, vocab, batch[key].shape).astype(np.int32)
    elif key.endswith(('segment_ids', 'weights')):
      batch[key] = np.ones_like(batch[key])
    elif key.endswith('positions'):
      batch[key] = np.broadcast_to(np.arange(batch[key].shape[1]), batch[key].shape).astype(np.int32)
  return batch


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """A TFDS data dir with number_words prepared and its tokenizer trained (once per session)."""
  path = str(tmp_path_factory.mktemp('tfds'))
  from research.data import sources
  data = tiny_config(path).data
  sources.tokenizer_for(data, sources.open_split(data, 'train'))
  return path


@pytest.fixture
def config(data_dir):
  return tiny_config(data_dir)


@pytest.fixture(scope='session')
def trained_workdir(tmp_path_factory, data_dir):
  """The tiny config trained for 12 steps on 1 device (checkpoints at 6 and 12), shared read-only by the tests
  that start from, compare with or analyse a finished run: (workdir, final eval metrics)."""
  import jax
  from research import train
  workdir = tmp_path_factory.mktemp('trained')
  config = tiny_config(data_dir)
  config.mesh.update(data=1, fsdp=1, tensor=1)
  final = train.train_and_evaluate(config, str(workdir), devices=jax.devices()[:1])
  return workdir, final
