"""One device mesh from `config.mesh`, and the logical-axis rules that map names onto it.

Parameters and activations carry logical names ('embed', 'mlp', 'batch', ...); `config.mesh.rules`
maps each to mesh axes. Data parallelism is `data` x `fsdp` on the batch; `fsdp` also shards
parameters and optimizer state along 'embed'; `tensor` shards heads, MLP and vocabulary (Megatron).
"""

from __future__ import annotations

import math
import os
import socket
import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import ml_collections
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from research.config import ConfigError

AXES = ('data', 'fsdp', 'tensor')


def rules(mesh_config: ml_collections.ConfigDict) -> tuple[tuple[str, Any], ...]:
  """The logical-axis rules as a tuple of (logical name, mesh axis or axes or None)."""
  return tuple((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes) for name, axes in mesh_config.rules)


def make_mesh(mesh_config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh of shape (data, fsdp, tensor); one axis may be -1 to take the remaining devices."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = [mesh_config[axis] for axis in AXES]
  described = ' x '.join(f'{a}={s}' for a, s in zip(AXES, sizes))
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ConfigError(f'mesh {described}: sizes must be positive, with at most one -1 (= all remaining devices)')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ConfigError(f'mesh {described}: {len(devices)} devices are not divisible by {known}')
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ConfigError(f'mesh {described} needs {math.prod(sizes)} devices but {len(devices)} are available; '
                      'change config.mesh (one axis may be -1)')
  return jax.make_mesh(tuple(sizes), AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES), devices=devices)


def data_parallel_size(mesh: Mesh) -> int:
  return mesh.shape['data'] * mesh.shape['fsdp']


def logical_shardings(boxed_tree: Any, mesh: Mesh, rule_set) -> Any:
  """NamedShardings for a tree of flax LogicallyPartitioned boxes (others are replicated)."""
  return nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed_tree), mesh, rule_set)


def batch_sharding(mesh: Mesh, rule_set) -> NamedSharding:
  """Sharding of input arrays [batch, ...]: the batch over the data-parallel axes, the rest replicated."""
  return NamedSharding(mesh, nn.logical_to_mesh_axes(('batch',), rule_set))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


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
