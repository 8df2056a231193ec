"""One device mesh from `config.mesh`, and the logical-axis rules that map names onto it.

Parameters and activations carry logical names ('embed', 'mlp', 'batch', ...); `config.mesh.rules`
maps each to mesh axes. Data parallelism is `data` x `fsdp` on the batch; `fsdp` also shards
parameters and optimizer state along 'embed'; `tensor` shards heads, MLP and vocabulary (Megatron).
"""

from __future__ import annotations

import math
import os
import re
import socket
import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from research.config import ConfigError

AXES = ('data', 'fsdp', 'tensor')


def rules(mesh_config: ml_collections.ConfigDict) -> tuple[tuple[str, Any], ...]:
  """The logical-axis rules as a tuple of (logical name, mesh axis or axes or None)."""
  return tuple((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes) for name, axes in mesh_config.rules)


def make_mesh(mesh_config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh of shape (data, fsdp, tensor): each axis is its size within a slice (`mesh.data`, ...; one may be
  -1 for the remaining devices) times its size across slices (`mesh.dcn.data`, ...; 1 by default).

  Slices (granules) are TPU slices in a multi-slice job, processes (hosts) in a multi-process job, or, on one
  host, equal runs of consecutive devices (to emulate several slices). Devices within a granule are laid out
  by the topology-aware `create_device_mesh`; the across-slice part of each axis is its outer, slow part.
  """
  devices = list(jax.devices() if devices is None else devices)
  ici = [mesh_config[axis] for axis in AXES]
  dcn = [mesh_config.get('dcn', {}).get(axis, 1) for axis in AXES]
  described = ' x '.join(f'{a}={s}' for a, s in zip(AXES, ici)) + ''.join(
      f' (dcn {a}={d})' for a, d in zip(AXES, dcn) if d != 1)
  if ici.count(-1) > 1 or any(s == 0 or s < -1 for s in ici) or any(d < 1 for d in dcn):
    raise ConfigError(f'mesh {described}: sizes must be positive, with at most one -1 (= all remaining devices) '
                      'and none in mesh.dcn')
  granule_count = math.prod(dcn)
  if len(devices) % granule_count:
    raise ConfigError(f'mesh {described}: {len(devices)} devices cannot form {granule_count} equal slices')
  per_granule = len(devices) // granule_count
  known = math.prod(s for s in ici if s != -1)
  if -1 in ici:
    if per_granule % known:
      raise ConfigError(f'mesh {described}: {per_granule} devices per slice are not divisible by {known}')
    ici[ici.index(-1)] = per_granule // known
  if math.prod(ici) * granule_count != len(devices):
    raise ConfigError(f'mesh {described} needs {math.prod(ici) * granule_count} devices but {len(devices)} are '
                      'available; change config.mesh (one axis may be -1)')
  devices.sort(key=lambda d: (getattr(d, 'slice_index', 0), d.process_index, d.id))
  granules = [mesh_utils.create_device_mesh(ici, devices[i * per_granule:(i + 1) * per_granule],
                                            allow_split_physical_axes=True) for i in range(granule_count)]
  # [dcn..., ici...] -> interleave (dcn_0, ici_0, dcn_1, ici_1, ...) -> merge each pair into one axis.
  grid = np.stack(granules).reshape(dcn + ici)
  grid = grid.transpose([i for axis in range(len(AXES)) for i in (axis, axis + len(AXES))])
  grid = grid.reshape([d * i for d, i in zip(dcn, ici)])
  return Mesh(grid, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def parse_layout(text: str, flag: str = '--mesh') -> dict[str, int]:
  """'fsdp=4,tensor=2' -> {'data': 1, 'fsdp': 4, 'tensor': 2}: the given axis sizes (one may be -1), 1 for the rest."""
  usage = f'give axis=size pairs separated by "," with axes {", ".join(AXES)} (e.g. {flag}=fsdp=4,tensor=2)'
  sizes = {}
  for item in text.split(','):
    axis, equals, value = (part.strip() for part in item.partition('='))
    problem = (f'{item.strip()!r} is not axis=size' if not equals or not re.fullmatch(r'-?\d+', value) else
               f'unknown mesh axis {axis!r}' if axis not in AXES else
               f'mesh axis {axis!r} given twice' if axis in sizes else None)
    if problem:
      raise ConfigError(f'{flag}={text}: {problem}; {usage}')
    sizes[axis] = int(value)
  return {axis: sizes.get(axis, 1) for axis in AXES}


def data_parallel_size(mesh: Mesh) -> int:
  return mesh.shape['data'] * mesh.shape['fsdp']


def logical_shardings(logical_axes: Any, mesh: Mesh, rule_set) -> Any:
  """NamedShardings for a tree of logical axis names (`nn.get_partition_spec` of boxed parameters)."""
  return nn.logical_to_mesh_sharding(logical_axes, mesh, rule_set)


def batch_sharding(mesh: Mesh, rule_set) -> NamedSharding:
  """Sharding of input arrays [batch, ...]: the batch over the data-parallel axes, the rest replicated."""
  return NamedSharding(mesh, nn.logical_to_mesh_axes(('batch',), rule_set))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def layout_table(mesh: Mesh, abstract_params: Any, logical_axes: Any, shardings: Any) -> str:
  """The mesh and, per parameter, its shape, logical axes, mesh axes and per-device shard (start-up log, workdir)."""
  rows = [('parameter', 'shape', 'dtype', 'logical axes', 'mesh axes', 'per device')]
  total = per_device = 0
  for (path, leaf), names, sharding in zip(jax.tree_util.tree_leaves_with_path(abstract_params),
                                           jax.tree.leaves(logical_axes, is_leaf=lambda x: isinstance(x, tuple)),
                                           jax.tree.leaves(shardings)):
    shard = sharding.shard_shape(leaf.shape)
    total += leaf.size * leaf.dtype.itemsize
    per_device += math.prod(shard) * leaf.dtype.itemsize
    rows.append((jax.tree_util.keystr(path, simple=True, separator='/'), str(tuple(leaf.shape)), str(leaf.dtype),
                 str(tuple(names)), str(tuple(sharding.spec)), str(shard)))
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  lines = ['  '.join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
  header = (f'mesh {dict(mesh.shape)} over {mesh.size} {mesh.devices.flat[0].platform} device(s); parameters '
            f'{format_bytes(total)}, {format_bytes(per_device)} per device (optimizer state is sharded like them)')
  return '\n'.join([header, *lines])


def format_bytes(count: int) -> str:
  if count >= 2**30:
    return f'{count / 2**30:,.2f} GiB'
  return f'{count / 2**20:,.2f} MiB' if count >= 2**20 else f'{count / 2**10:,.1f} KiB'


def check_divisible(abstract_tree: Any, shardings: Any) -> None:
  """Refuses, by parameter name and shape, any dimension not divisible by the mesh axes sharding it."""
  def check(path, leaf, sharding):
    for dim, axes in zip(leaf.shape, sharding.spec):
      names = axes if isinstance(axes, tuple) else (axes,) if axes else ()
      count = math.prod(sharding.mesh.shape[a] for a in names)
      if dim % count:
        raise ConfigError(f'{jax.tree_util.keystr(path)} has shape {leaf.shape}: dimension {dim} is not '
                          f'divisible by mesh axes {names} of size {count}; change config.mesh or the model size')
  jax.tree_util.tree_map_with_path(check, abstract_tree, shardings)


def initialize_distributed(dist: ml_collections.ConfigDict) -> None:
  """Starts `jax.distributed` when this is one of several processes, before any device is touched.

  Explicit (`distributed.coordinator_address` with `num_processes` and `process_id`: GPU or CPU
  clusters, tests on localhost), or detected: a SLURM job step of several tasks, or a multi-host Cloud
  TPU slice. A coordinator that cannot be reached fails after `initialization_timeout` seconds.
  """
  explicit = bool(dist.coordinator_address)
  slurm = int(os.environ.get('SLURM_NTASKS', '1')) > 1 and 'SLURM_PROCID' in os.environ
  tpu_pod = ',' in os.environ.get('TPU_WORKER_HOSTNAMES', '')
  if not (explicit or slurm or tpu_pod):
    return
  if dist.cpu_devices_per_process:
    jax.config.update('jax_num_cpu_devices', dist.cpu_devices_per_process)
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  kwargs = {}
  if explicit:
    if not 0 <= dist.process_id < dist.num_processes:
      raise ConfigError(f'distributed.process_id={dist.process_id} must be in [0, distributed.num_processes='
                        f'{dist.num_processes})')
    if dist.process_id:  # jax aborts the process on an unreachable coordinator: check first, and say so
      _wait_for(dist.coordinator_address, dist.initialization_timeout)
    kwargs = dict(coordinator_address=dist.coordinator_address, num_processes=dist.num_processes,
                  process_id=dist.process_id)
  try:
    jax.distributed.initialize(initialization_timeout=dist.initialization_timeout, **kwargs)
  except Exception as e:  # jax raises several types here; all mean the processes could not meet
    where = dist.coordinator_address or 'the coordinator found in the environment'
    raise ConfigError(f'jax.distributed could not start with {where} within {dist.initialization_timeout} s '
                      f'({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}); check the address, the '
                      'process count and that every process was started') from None


def _wait_for(address: str, timeout: float) -> None:
  host, _, port = address.rpartition(':')
  deadline = time.monotonic() + timeout
  while True:
    try:
      socket.create_connection((host, int(port)), timeout=1).close()
      return
    except OSError as e:
      if time.monotonic() > deadline:
        raise ConfigError(f'jax.distributed could not reach the coordinator {address} within {timeout} s ({e}); '
                          'check distributed.coordinator_address and that process 0 is running') from None
      time.sleep(0.5)
