"""Peak FLOP/s to measure utilisation against: published dense peaks per accelerator, else a matmul measured here.

Published peaks are per device (a GPU, or a TPU chip as JAX sees it), dense (no sparsity),
in TFLOP/s. The "float32" entry is what XLA runs a float32 matmul with at default precision:
TF32 tensor cores on NVIDIA GPUs, bf16 passes on the TPU MXU (so the bf16 figure).
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from genjax import sharding as sharding_lib

# (substring of jax.Device.device_kind, {dtype name: dense TFLOP/s per device}); the first match wins,
# so more specific names come first. Sources: NVIDIA H100/H200/A100 datasheets (sparsity figures halved),
# Google Cloud TPU system architecture pages.
PUBLISHED_PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"bfloat16": 989.5, "float32": 494.7}),
    ("H100 PCIe", {"bfloat16": 756.0, "float32": 378.0}),
    ("H100", {"bfloat16": 989.5, "float32": 494.7}),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("A100", {"bfloat16": 312.0, "float32": 156.0}),
    ("TPU v4", {"bfloat16": 275.0, "float32": 275.0}),
    ("TPU v5 lite", {"bfloat16": 197.0, "float32": 197.0}),  # v5e
    ("TPU v5e", {"bfloat16": 197.0, "float32": 197.0}),
    ("TPU v5p", {"bfloat16": 459.0, "float32": 459.0}),
    ("TPU v5", {"bfloat16": 459.0, "float32": 459.0}),  # v5p reports itself as "TPU v5"
    ("TPU v6 lite", {"bfloat16": 918.0, "float32": 918.0}),  # v6e (Trillium)
    ("TPU v6e", {"bfloat16": 918.0, "float32": 918.0}),
)

# The measured matmul [size, size] @ [size, size] per platform: on a few CPU cores 1024 (2 GFLOP, a
# 12 MB working set, far beyond the caches) already runs at the host's matmul peak.
MATMUL_SIZE = {"cpu": 1024}
DEFAULT_MATMUL_SIZE = 8192
# Matmuls per sample, the fastest counted: on the 2-core CPU the first matmul after a step ran at 134-145
# GFLOP/s where the next ones ran at 193-213 (a GAN step of 200 ms), which inflated MFU (benchmarks/HISTORY.md).
MATMULS_PER_SAMPLE = 3


def published_peak(device_kind: str, dtype: Any) -> float | None:
    """Dense peak FLOP/s of one `device_kind` device for matmuls in `dtype`, or None if not in the table."""
    name = jnp.dtype(dtype).name
    for pattern, peaks in PUBLISHED_PEAK_TFLOPS:
        if pattern.lower() in device_kind.lower():
            peak = peaks.get(name)
            return None if peak is None else peak * 1e12
    return None


class PeakMeter:
    """Peak FLOP/s of all devices of a mesh together: the published figure, else a large matmul timed here.

    On CPU (or an unknown accelerator) each `sample()` times MATMULS_PER_SAMPLE square matmuls
    (MATMUL_SIZE) in `dtype` one after another and keeps the fastest, rows of the left operand split
    over the devices like a batch. Sampling between timed step windows keeps step and yardstick under
    the same machine load, which matters on a shared host (emulated devices share its cores).
    """

    def __init__(self, mesh: Mesh, dtype: Any):
        device = mesh.devices.flat[0]
        size = MATMUL_SIZE.get(device.platform, DEFAULT_MATMUL_SIZE)
        per_device = published_peak(device.device_kind, dtype) if device.platform != "cpu" else None
        self.source = "published" if per_device is not None else "measured_matmul"
        self._published = None if per_device is None else per_device * mesh.devices.size
        if self._published is None:
            rows = sharding_lib.batch_sharding(mesh)
            random = np.random.default_rng(0)
            self._a = jax.device_put(jnp.asarray(random.standard_normal((size, size)), dtype), rows)
            self._b = jax.device_put(jnp.asarray(random.standard_normal((size, size)), dtype), sharding_lib.replicated(mesh))
            self._matmul = jax.jit(jnp.matmul, out_shardings=rows)
            self._flops = 2 * size**3
            self._matmul(self._a, self._b).block_until_ready()  # compile and warm up

    def sample(self) -> float:
        """FLOP/s: the published peak, or the fastest of MATMULS_PER_SAMPLE timed matmuls."""
        if self._published is not None:
            return self._published
        seconds = []
        for _ in range(MATMULS_PER_SAMPLE):
            start = time.perf_counter()
            self._matmul(self._a, self._b).block_until_ready()
            seconds.append(time.perf_counter() - start)
        return self._flops / min(seconds)
