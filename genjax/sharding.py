"""Device mesh and the shardings of batches and train state (one home for every placement decision).

The mesh has three axes, `data`, `fsdp` and `tensor` (sizes from `--config.mesh.*`, see `mesh_config`).
Batches are split over data x fsdp (every device of a tensor group holds the same rows). Train-state
leaves are split by their logical axis names (Flax `nn.with_logical_partitioning` boxes, kept by
`init_state`) through a rules table (`RULES`):
  - `fsdp` (ZeRO-3 / FSDP): every parameter, EMA and optimizer moment lives 1/fsdp on each device; XLA
    gathers a layer's weights for the step and reduce-scatters its gradients;
  - `tensor` (Megatron): attention heads and the MLP hidden dimension are split, so each device computes its
    heads and its slice of the MLP, and one reduction per sublayer sums the partial outputs.
A leaf without names has its largest evenly divisible dimension split over `fsdp`, when it has at least
`FSDP_MIN_SIZE` elements. Model code never names mesh axes; a new layout is a new rules table.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from genjax.errors import GenjaxError

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
TENSOR_AXIS = "tensor"
MESH_AXES = (DATA_AXIS, FSDP_AXIS, TENSOR_AXIS)  # outermost first: a tensor group is a run of consecutive devices
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)
REST = -1  # a mesh size meaning "the devices the other axes leave"

Rules = tuple[tuple[str, str], ...]

# (logical axis name, mesh axis), highest priority first: each mesh axis splits at most one dimension of a
# leaf, the first in this order whose size it divides. Megatron tensor parallelism (heads, MLP hidden) inside
# FSDP (embed first; a leaf whose embed does not divide falls back to its mlp, heads or vocab dimension).
# Names without a rule ('kv', 'layers', ...) are never split.
TENSOR_FSDP_RULES: Rules = (
    ("heads", TENSOR_AXIS),
    ("mlp", TENSOR_AXIS),
    ("embed", FSDP_AXIS),
    ("mlp", FSDP_AXIS),
    ("heads", FSDP_AXIS),
    ("vocab", FSDP_AXIS),
)
RULES = TENSOR_FSDP_RULES
# Mesh axes whose logical dimensions must divide evenly: a head count or MLP width that `tensor` does not divide
# is an error (replicating it would silently drop the layout asked for), where `fsdp` falls back to another dimension.
STRICT_AXES = (TENSOR_AXIS,)
FSDP_MIN_SIZE = 4096  # unnamed leaves smaller than this stay replicated (biases, norm scales, step counters)


def mesh_config(data: int = REST, fsdp: int = 1, tensor: int = 1) -> ml_collections.ConfigDict:
    """The `mesh` config fields: devices along each axis, one of them may be -1 (the rest)."""
    return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))


def mesh_shape(num_devices: int, axes: Mapping[str, int] | None = None) -> dict[str, int]:
    """{axis: size} for `num_devices` devices from the requested `axes` sizes (-1: the rest; missing: data -1, others 1)."""
    requested = {DATA_AXIS: REST, FSDP_AXIS: 1, TENSOR_AXIS: 1, **(dict(axes) if axes else {})}
    unknown = sorted(set(requested) - set(MESH_AXES))
    if unknown:
        raise GenjaxError(f"unknown mesh axis {unknown[0]!r}; the mesh axes are {MESH_AXES} (--config.mesh.data/fsdp/tensor)")
    for axis, value in requested.items():
        if not isinstance(value, (int, np.integer)) or (value < 1 and value != REST):
            raise GenjaxError(f"mesh.{axis}={value!r} is not a size; use a positive number of devices, or -1 for the rest")
    rest = [axis for axis in MESH_AXES if requested[axis] == REST]
    if len(rest) > 1:
        raise GenjaxError(f"mesh axes {rest} are all -1; at most one axis may take the rest, set the others, e.g. --config.mesh.{rest[1]}=1")
    fixed = math.prod(requested[axis] for axis in MESH_AXES if axis not in rest)
    if rest and num_devices % fixed == 0:
        requested[rest[0]] = num_devices // fixed
    sizes = {axis: int(requested[axis]) for axis in MESH_AXES}
    if math.prod(sizes.values()) != num_devices:
        text = " x ".join(f"{axis}={requested[axis]}" for axis in MESH_AXES)
        raise GenjaxError(
            f"mesh {text} does not fit the {num_devices} devices; choose sizes whose product is {num_devices}, "
            f"or -1 for one axis to take the rest (e.g. --config.mesh.data=-1)"
        )
    return sizes


def make_mesh(num_devices: int = 0, axes: Mapping[str, int] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over the first `num_devices` devices (0: all of them, across every process).

    `axes`: {axis: size}, e.g. `config.mesh`; -1 takes the devices the others leave; default: all devices on
    `data`. Tensor groups are runs of consecutive devices (same process, fastest links), then fsdp groups.
    """
    devices = jax.devices()
    if num_devices:
        if num_devices > len(devices):
            raise GenjaxError(f"num_devices={num_devices} but only {len(devices)} devices are visible")
        devices = devices[:num_devices]
    sizes = mesh_shape(len(devices), axes)
    return Mesh(np.asarray(devices).reshape(tuple(sizes[axis] for axis in MESH_AXES)), MESH_AXES)


def axis_size(mesh: Any, axis: str) -> int:
    """The size of mesh axis `axis` (1 where `mesh` lacks it)."""
    return dict(mesh.shape).get(axis, 1)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over data x fsdp; replicated over tensor; other axes whole."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _is_box(x: Any) -> bool:
    return isinstance(x, nn.Partitioned)


def leaf_spec(shape: Sequence[int], names: Sequence[str | None] | None, mesh: Any, rules: Rules = RULES, leaf: str = "") -> P:
    """The PartitionSpec of one state leaf of `shape` with logical `names` (None: unnamed) on `mesh` by `rules`.

    Raises when a dimension named for a `STRICT_AXES` axis does not divide by it (`leaf` names it in the error).
    """
    if not shape:
        return P()
    axes: list[str | None] = [None] * len(shape)
    if names is not None:
        for logical, mesh_axis in rules:
            size = axis_size(mesh, mesh_axis)
            if size == 1 or mesh_axis in axes:
                continue
            for dim, name in enumerate(names):
                if name != logical or axes[dim] is not None:
                    continue
                if shape[dim] % size == 0:
                    axes[dim] = mesh_axis
                    break
                if mesh_axis in STRICT_AXES:
                    raise GenjaxError(
                        f"{leaf or 'a state leaf'} has {shape[dim]} '{logical}' (shape {tuple(shape)}), which mesh.{mesh_axis}="
                        f"{size} does not divide; use a --config.mesh.{mesh_axis} that divides the head count and MLP width"
                    )
    else:
        fsdp = axis_size(mesh, FSDP_AXIS)
        if fsdp > 1 and int(np.prod(shape)) >= FSDP_MIN_SIZE:
            divisible = [dim for dim in range(len(shape)) if shape[dim] % fsdp == 0]
            if divisible:
                axes[max(divisible, key=lambda dim: shape[dim])] = FSDP_AXIS
    while axes and axes[-1] is None:
        axes.pop()
    return P(*axes)


def state_shardings(abstract_state: Any, mesh: Mesh, rules: Rules = RULES) -> Any:
    """NamedShardings for every leaf of the (possibly boxed) abstract state, as a tree of the unboxed state.

    Replicated on a data-parallel mesh; split over `fsdp` and `tensor` by `rules` otherwise.
    """

    def sharding(path: Any, leaf: Any) -> NamedSharding:
        where = jax.tree_util.keystr(path)
        if _is_box(leaf):
            return NamedSharding(mesh, leaf_spec(leaf.value.shape, leaf.names, mesh, rules, where))
        return NamedSharding(mesh, leaf_spec(leaf.shape, None, mesh, rules, where))

    return jax.tree_util.tree_map_with_path(sharding, abstract_state, is_leaf=_is_box)


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
    """`state` replicated on every device (a copy under FSDP or tensor parallelism), so host-side code can read any
    leaf in any process."""
    if axis_size(mesh, FSDP_AXIS) == 1 and axis_size(mesh, TENSOR_AXIS) == 1:
        return state
    return _replicate(mesh)(state)


def batch_devices(mesh: Any) -> int:
    """How many ways a batch is split: data x fsdp."""
    return math.prod(axis_size(mesh, axis) for axis in BATCH_AXES)


def check_batch_size(global_batch_size: int, mesh: Any, name: str = "batch_size") -> None:
    """Raises unless the global batch splits evenly over data x fsdp."""
    ways = batch_devices(mesh)
    if global_batch_size % ways:
        raise GenjaxError(
            f"{name}={global_batch_size} is not divisible by data x fsdp = {ways} (the mesh's batch split); "
            f"use a multiple of {ways}, e.g. --config.{name}={max(ways, global_batch_size // ways * ways)}"
        )
