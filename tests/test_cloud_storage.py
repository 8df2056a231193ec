"""Workdir files on Cloud Storage: the code paths a gs:// workdir takes, on an in-memory stand-in for GCS.

epath reaches gs:// through fsspec's 'gcs' protocol and tensorboardX through its 'gs' writer factory; both are
pointed at memory here (no network). Orbax's own gs:// support (tensorstore) is not exercised.
"""

import io

import fsspec
import pytest
from etils.epath import backend, gpath
from fsspec.implementations.memory import MemoryFileSystem
from tensorboardX import record_writer

from research import files, metrics as metrics_lib, train
from research.config import ConfigError
from research.data.tokenizer import train_sentencepiece


class _MemoryEventWriter:
  """TensorBoard's record writer for gs://, kept in the fake bucket at each flush."""

  def __init__(self, path):
    self.path, self.buffer = path, io.BytesIO()

  def write(self, data):
    self.buffer.write(data)

  def flush(self):
    files.path(self.path).write_bytes(self.buffer.getvalue())

  def close(self):
    self.flush()


class _MemoryEventWriterFactory:
  def open(self, path):
    return _MemoryEventWriter(path)

  def directory_check(self, path):
    del path


@pytest.fixture
def fake_gcs(monkeypatch):
  monkeypatch.setenv('EPATH_USE_TF', 'false')  # else, with TensorFlow installed, epath would use tf.io.gfile
  gpath._is_tf_installed.cache_clear()
  fsspec.register_implementation('gcs', MemoryFileSystem, clobber=True)
  backend.fsspec_backend._get_filesystem.cache_clear()
  monkeypatch.setitem(record_writer.REGISTERED_FACTORIES, 'gs', _MemoryEventWriterFactory())
  yield 'gs://bucket/run'
  MemoryFileSystem.store.clear()
  MemoryFileSystem.pseudo_dirs[:] = ['']
  fsspec.register_implementation('gcs', 'gcsfs.GCSFileSystem', clobber=True)
  backend.fsspec_backend._get_filesystem.cache_clear()
  gpath._is_tf_installed.cache_clear()


def test_gs_workdir_holds_config_vocabulary_metrics_and_tensorboard(fake_gcs, config, tmp_path):
  workdir = fake_gcs
  tokenizer = train_sentencepiece(['one two three', 'four five six'] * 50, 40, 'bpe', str(tmp_path), 'vocab')
  train.save_to_workdir(config, tokenizer, workdir)
  train.check_workdir(config, workdir)  # the same config resumes
  changed = config.copy_and_resolve_references()
  changed.model.d_model = 64
  with pytest.raises(ConfigError, match=r'model.d_model: 32 \(saved\) vs 64 \(now\)'):
    train.check_workdir(changed, workdir)
  assert train.tokenizer_for_workdir(config, workdir).encode('one two') == tokenizer.encode('one two')

  writer = metrics_lib.MetricWriter(workdir, resume_step=None)
  for step in (1, 2, 3):
    writer.write(step, {'train/loss': 1.0 / step})
  writer.close()
  assert [r['step'] for r in metrics_lib.read_metrics(workdir)] == [1, 2, 3]
  events = [p for p in (files.path(workdir) / 'tensorboard').iterdir() if 'tfevents' in p.name]
  assert events and events[0].read_bytes()

  resumed = metrics_lib.MetricWriter(workdir, resume_step=2)  # a run resumed from step 2 recomputes step 3
  resumed.write(3, {'train/loss': 0.25})
  resumed.close()
  assert [(r['step'], r['train/loss']) for r in metrics_lib.read_metrics(workdir)] == [(1, 1.0), (2, 0.5),
                                                                                      (3, 0.25)]
  assert sorted(p.name for p in files.path(workdir).iterdir()) == ['config.json', 'metrics.jsonl', 'tensorboard',
                                                                   'vocab.model']
