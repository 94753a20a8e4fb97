"""Device mesh and the shardings of batches and train state (one home for every placement decision)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from genjax.errors import GenjaxError

DATA_AXIS = "data"


def make_mesh(num_devices: int = 0) -> Mesh:
    """A 1-d mesh over the first `num_devices` devices (0: all of them, across every process)."""
    devices = jax.devices()
    if num_devices:
        if num_devices > len(devices):
            raise GenjaxError(f"num_devices={num_devices} but only {len(devices)} devices are visible")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the data axis; other axes whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def state_shardings(abstract_state: Any, mesh: Mesh) -> Any:
    """Shardings for every leaf of the train state: replicated (pure data parallelism)."""
    return jax.tree.map(lambda _: replicated(mesh), abstract_state)


def check_batch_size(global_batch_size: int, mesh: Mesh, name: str = "batch_size") -> None:
    """Raises unless the global batch splits evenly over the data axis and over processes."""
    devices = mesh.shape[DATA_AXIS]
    if global_batch_size % devices:
        raise GenjaxError(
            f"{name}={global_batch_size} is not divisible by the {devices} devices of the data axis; "
            f"use a multiple of {devices}, e.g. --config.{name}={max(devices, global_batch_size // devices * devices)}"
        )
