"""The device mesh and the shardings of the training state and batches.

Mesh axes: `data` (the batch is split over it, parameters replicated) and `fsdp` (the batch is
split over it too, and large parameter/optimizer arrays are split along one dimension, FSDP-style:
XLA gathers them for the computation and reduce-scatters their gradients).
"""
from typing import Any

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np

from feelvos_jax import config_checks

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)
FSDP_MIN_SIZE = 2**14  # Arrays with fewer elements stay replicated on the fsdp axis.


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, int]:
  """(data, fsdp) axis sizes for `num_devices`; `config.mesh.data = -1` takes what remains."""
  fsdp = config_checks.positive_int(mesh_config, "mesh.fsdp")
  if num_devices % fsdp:
    raise ValueError(f"config.mesh.fsdp={fsdp} must divide the {num_devices} devices.")
  data = config_checks.int_at_least(mesh_config, "mesh.data", -1)
  data = num_devices // fsdp if data == -1 else data
  if data < 1 or data * fsdp != num_devices:
    raise ValueError(f"config.mesh.data={mesh_config.data} x config.mesh.fsdp={fsdp} must equal "
                     f"the {num_devices} devices (use config.mesh.data=-1).")
  return data, fsdp


def create_mesh(mesh_config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  """A (data, fsdp) mesh over all devices of all processes, with Auto (propagated) axes."""
  shape = mesh_shape(mesh_config, jax.device_count())
  return jax.make_mesh(shape, BATCH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Leading (batch) dimension split over every device of the mesh."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """A full copy on every device of the mesh."""
  return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int) -> P:
  """PartitionSpec splitting the largest dimension divisible by `fsdp_size` over `fsdp`, for
  arrays of at least FSDP_MIN_SIZE elements (others replicated)."""
  if fsdp_size == 1 or int(np.prod(shape)) < FSDP_MIN_SIZE:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[dim] = FSDP_AXIS
      return P(*spec)
  return P()


def state_shardings(abstract_state: Any, mesh: jax.sharding.Mesh) -> Any:
  """NamedShardings for a pytree of arrays / ShapeDtypeStructs: replicated over `data`, FSDP-split
  over `fsdp` where large enough."""
  fsdp_size = mesh.shape[FSDP_AXIS]
  return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(tuple(x.shape), fsdp_size)),
                      abstract_state)


def global_batch(local_batch: dict[str, np.ndarray],
                 mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Each process's batch [B_local, ...] -> global arrays [B_local * processes, ...] split over
  the mesh (every process passes its own slice, in process order)."""
  sharding = batch_sharding(mesh)
  return {name: jax.make_array_from_process_local_data(sharding, value)
          for name, value in local_batch.items()}
