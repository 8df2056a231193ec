"""Workdir files on a local disk or on Cloud Storage (`gs://`), through `etils.epath` (as Orbax and TFDS do).

`gs://` needs a Cloud Storage backend: `pip install -r requirements-gcs.txt` (gcsfs, and google-cloud-storage
for TensorBoard's writer). Where TensorFlow is installed (requirements-tf.txt) epath uses `tf.io.gfile` for
gs:// instead, unless EPATH_USE_TF=false.
"""

from __future__ import annotations

from etils import epath


def path(location: str | epath.Path) -> epath.Path:
  """A local path made absolute (Orbax requires it), or a URI such as gs://bucket/run as it is."""
  return epath.Path(location) if is_remote(location) else epath.Path(location).absolute()


def is_remote(location: str | epath.Path) -> bool:
  return '://' in str(location)


def write_atomic(destination: epath.Path, content: bytes) -> None:
  """Readers see the old content or the new, never a partial file: written aside, then renamed over."""
  aside = destination.parent / (destination.name + '.tmp')
  aside.write_bytes(content)
  aside.replace(destination)
