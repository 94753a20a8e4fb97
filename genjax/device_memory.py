"""Device memory: what a compiled step needs per device, what each device of a mesh has, and the check every run
makes before its first step (a step that cannot fit stops with one line, not an allocator error mid-run)."""

from __future__ import annotations

import os
from typing import Any

import jax
from jax.sharding import Mesh

from genjax.errors import GenjaxError

GIB = 2**30


def step_memory(compiled: Any) -> dict[str, int]:
    """Per-device bytes a compiled step needs, from XLA's buffer assignment (`memory_analysis()`).

    predicted = arguments + outputs + temporaries - aliased (donated inputs whose buffers the outputs reuse).
    """
    analysis = compiled.memory_analysis()
    figures = {
        "memory_argument_bytes": int(analysis.argument_size_in_bytes),
        "memory_output_bytes": int(analysis.output_size_in_bytes),
        "memory_temp_bytes": int(analysis.temp_size_in_bytes),
        "memory_alias_bytes": int(analysis.alias_size_in_bytes),
    }
    figures["memory_predicted_bytes"] = (
        figures["memory_argument_bytes"] + figures["memory_output_bytes"] + figures["memory_temp_bytes"] - figures["memory_alias_bytes"]
    )
    return figures


def reported_limit(device: Any) -> int | None:
    """The bytes `device`'s allocator may hand out, as the device reports them (GPU, TPU); None where it reports
    none (CPU)."""
    stats = device.memory_stats()
    return stats.get("bytes_limit") if stats else None


def device_limit(mesh: Mesh) -> int | None:
    """The bytes each device of `mesh` offers: the smallest its devices report, else (CPU devices report none) this
    host's physical memory shared by the mesh's devices in this process, which all live in it. None when neither
    is known."""
    local = [device for device in mesh.devices.flat if device.process_index == jax.process_index()]
    reported = [reported_limit(device) for device in local]
    if all(limit is not None for limit in reported):
        return min(reported)
    try:
        host_bytes = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not a POSIX host
        return None
    return host_bytes // max(len(local), 1)


SPLIT_STATE = "split the state over more devices (--config.mesh.fsdp, --config.mesh.tensor)"


def train_fixes(lower_batch: str = "lower --config.batch_size") -> str:
    """The fixes of a train step that does not fit, `lower_batch` first."""
    return f"{lower_batch}, use --config.model.remat=full where the model has it, or {SPLIT_STATE}"


def check_fits(predicted_bytes: int, limit_bytes: int | None, batch: str, fixes: str) -> None:
    """GenjaxError "`batch` needs N GiB per device but a device has M GiB; `fixes`" when a step needing
    `predicted_bytes` per device does not fit `limit_bytes` (no check where the limit is unknown). `batch` names
    the batch size setting and its value, e.g. "batch_size=256"."""
    if limit_bytes and predicted_bytes > limit_bytes:
        raise GenjaxError(
            f"{batch} needs {predicted_bytes / GIB:.1f} GiB per device but a device has {limit_bytes / GIB:.1f} GiB; {fixes}"
        )
