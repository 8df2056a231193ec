"""The device mesh: within-slice and across-slice parts, and refusals of layouts that cannot fit."""

import jax
import ml_collections
import numpy as np
import pytest

from research import mesh as mesh_lib
from research.config import ConfigError


def _mesh_config(dcn=None, **sizes):
  config = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1, dcn=dict(data=1, fsdp=1, tensor=1)))
  config.update(sizes)
  config.dcn.update(dcn or {})
  return config


def _ids(mesh, axis: str, index: int) -> set[int]:
  """Ids of the devices at `index` along mesh axis `axis`."""
  return {d.id for d in np.take(mesh.devices, index, axis=mesh.axis_names.index(axis)).flat}


def test_across_slice_axes_are_outer_and_keep_each_slice_together():
  """Two emulated slices of 4 devices: the across-slice part of an axis splits slices, never a slice."""
  mesh = mesh_lib.make_mesh(_mesh_config(fsdp=2, tensor=2, dcn=dict(data=2)))
  assert dict(mesh.shape) == {'data': 2, 'fsdp': 2, 'tensor': 2}
  assert _ids(mesh, 'data', 0) == {0, 1, 2, 3} and _ids(mesh, 'data', 1) == {4, 5, 6, 7}

  mesh = mesh_lib.make_mesh(_mesh_config(data=-1, tensor=2, dcn=dict(fsdp=2)))
  assert dict(mesh.shape) == {'data': 2, 'fsdp': 2, 'tensor': 2}
  assert _ids(mesh, 'fsdp', 0) == {0, 1, 2, 3}
  assert _ids(mesh, 'tensor', 0) == {0, 2, 4, 6}  # within a slice, tensor is the fastest-varying axis

  mesh = mesh_lib.make_mesh(_mesh_config(data=2, fsdp=2, dcn=dict(data=2)))  # data = 2 slices x 2 within
  assert [d.id for d in mesh.devices[:, 0, 0]] == [0, 2, 4, 6]


@pytest.mark.parametrize('sizes, message', [
    (dict(data=-1, dcn=dict(data=3)), '8 devices cannot form 3 equal slices'),
    (dict(data=2, dcn=dict(data=2)), 'needs 4 devices but 8 are available'),
    (dict(data=-1, dcn=dict(tensor=0)), 'none in mesh.dcn'),
    (dict(data=-1, fsdp=-1), 'at most one -1'),
    (dict(data=3, fsdp=-1), '8 devices per slice are not divisible by 3'),
])
def test_layouts_that_do_not_fit_are_refused(sizes, message):
  with pytest.raises(ConfigError, match=message):
    mesh_lib.make_mesh(_mesh_config(**sizes))


def test_one_device_mesh():
  mesh = mesh_lib.make_mesh(_mesh_config(data=-1), jax.devices()[:1])
  assert dict(mesh.shape) == {'data': 1, 'fsdp': 1, 'tensor': 1}
