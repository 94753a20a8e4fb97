"""Device mesh and the shardings of batches and train state (one home for every placement decision).

The mesh has two axes, `data` and `fsdp`. Batches are split over both (every device
holds different rows). Train-state leaves are either replicated (pure data
parallelism: the `fsdp` axis has size 1) or split over `fsdp` (FSDP: every
parameter, EMA and optimizer moment lives 1/fsdp on each device; XLA gathers a
layer's weights for the step and reduce-scatters its gradients).

Which dimension of a leaf is split comes from its logical axis names (Flax
`nn.with_logical_partitioning` boxes, kept by `init_state`) through `FSDP_RULES`; a
leaf without names has its largest evenly divisible dimension split, when it has
at least `FSDP_MIN_SIZE` elements. Model code never names mesh axes.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from genjax.errors import GenjaxError

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)
PARALLELISMS = ("data", "fsdp")

# (logical axis name, mesh axis), highest priority first: a leaf's dimensions are offered
# to each mesh axis in this order and the first whose size divides evenly is split.
# Names without a rule ('kv', 'layers', ...) are never split.
FSDP_RULES: tuple[tuple[str, str], ...] = (("embed", FSDP_AXIS), ("mlp", FSDP_AXIS), ("heads", FSDP_AXIS), ("vocab", FSDP_AXIS))
FSDP_MIN_SIZE = 4096  # unnamed leaves smaller than this stay replicated (biases, norm scales, step counters)


def make_mesh(num_devices: int = 0, parallelism: str = "data", fsdp_devices: int = 0) -> Mesh:
    """A (data, fsdp) mesh over the first `num_devices` devices (0: all of them, across every process).

    parallelism "data": shape (devices, 1). "fsdp": shape (devices / fsdp_devices, fsdp_devices),
    `fsdp_devices` 0 meaning all devices; groups are runs of consecutive devices (same process first).
    """
    devices = jax.devices()
    if num_devices:
        if num_devices > len(devices):
            raise GenjaxError(f"num_devices={num_devices} but only {len(devices)} devices are visible")
        devices = devices[:num_devices]
    if parallelism not in PARALLELISMS:
        raise GenjaxError(f"unknown parallelism '{parallelism}'; choose one of {PARALLELISMS}")
    fsdp = 1 if parallelism == "data" else (fsdp_devices or len(devices))
    if fsdp < 1 or len(devices) % fsdp:
        raise GenjaxError(
            f"fsdp_devices={fsdp_devices} does not divide the {len(devices)} devices; use a divisor of "
            f"{len(devices)} (0: all of them)"
        )
    return Mesh(np.asarray(devices).reshape(len(devices) // fsdp, fsdp), BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device (both mesh axes); other axes whole."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _is_box(x: Any) -> bool:
    return isinstance(x, nn.Partitioned)


def leaf_spec(shape: Sequence[int], names: Sequence[str | None] | None, mesh: Mesh) -> P:
    """The PartitionSpec of one state leaf of `shape` with logical `names` (None: unnamed) on `mesh`."""
    fsdp = mesh.shape[FSDP_AXIS]
    if fsdp == 1 or not shape:
        return P()
    axes: list[str | None] = [None] * len(shape)
    if names is not None:
        for logical, mesh_axis in FSDP_RULES:
            if mesh_axis in axes:
                continue
            for dim, name in enumerate(names):
                if name == logical and axes[dim] is None and shape[dim] % mesh.shape[mesh_axis] == 0:
                    axes[dim] = mesh_axis
                    break
    elif int(np.prod(shape)) >= FSDP_MIN_SIZE:
        divisible = [dim for dim in range(len(shape)) if shape[dim] % fsdp == 0]
        if divisible:
            axes[max(divisible, key=lambda dim: shape[dim])] = FSDP_AXIS
    while axes and axes[-1] is None:
        axes.pop()
    return P(*axes)


def state_shardings(abstract_state: Any, mesh: Mesh) -> Any:
    """NamedShardings for every leaf of the (possibly boxed) abstract state, as a tree of the unboxed state.

    Replicated on a data-parallel mesh; split over `fsdp` by the logical rules otherwise.
    """

    def sharding(leaf: Any) -> NamedSharding:
        if _is_box(leaf):
            return NamedSharding(mesh, leaf_spec(leaf.value.shape, leaf.names, mesh))
        return NamedSharding(mesh, leaf_spec(leaf.shape, None, mesh))

    return jax.tree.map(sharding, abstract_state, is_leaf=_is_box)


def unboxed(init_fn: Callable[..., Any]) -> Callable[..., Any]:
    """`init_fn` with its logical-partitioning boxes removed: the plain-array state the steps use."""

    def init(*args: Any) -> Any:
        return nn.unbox(init_fn(*args))

    return init


@functools.lru_cache
def _replicate(mesh: Mesh) -> Callable[[Any], Any]:
    """The jitted identity to replicated shardings on `mesh`: made once per mesh, so compiled once per state layout."""
    return jax.jit(lambda tree: tree, out_shardings=replicated(mesh))


def gathered(state: Any, mesh: Mesh) -> Any:
    """`state` replicated on every device (a copy under FSDP), so host-side code can read any leaf in any process."""
    if mesh.shape[FSDP_AXIS] == 1:
        return state
    return _replicate(mesh)(state)


def check_batch_size(global_batch_size: int, mesh: Mesh, name: str = "batch_size") -> None:
    """Raises unless the global batch splits evenly over the mesh's devices."""
    devices = mesh.size
    if global_batch_size % devices:
        raise GenjaxError(
            f"{name}={global_batch_size} is not divisible by the {devices} devices of the mesh; "
            f"use a multiple of {devices}, e.g. --config.{name}={max(devices, global_batch_size // devices * devices)}"
        )
