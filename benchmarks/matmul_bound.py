"""The matmul-only bound of a train step: its own matmuls and convolutions, each timed alone at its shape.

On one CPU device a step runs its matmuls and convolutions one after another, so, as far as
each runs inside the step as fast as alone, the step cannot be faster than the sum of their
times measured alone. The step's MFU scaled by step time / that sum (`mfu_ceiling` in the
benchmark) is the MFU it would reach if everything else it does (elementwise work,
normalisation, random numbers, the optimizer update) cost nothing: the ceiling that only
faster kernels could raise. It is an estimate: XLA may lay out or fuse an operand
differently inside the step than alone.

How much faster kernels could raise it is measured the same way: `matmul_bounds_s` also sums
each dot at the faster of XLA and numpy's BLAS (OpenBLAS in numpy's wheels), its operands laid
out as [batch, M, K] @ [batch, K, N] before the timing, which favours the BLAS. Convolutions
keep XLA's time.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from genjax import flops

MIN_WINDOW_S = 0.02  # each timed window repeats the equation for at least this long
NUM_WINDOWS = 5


def _median_call_seconds(call: Callable[[], Any]) -> float:
    """Median seconds of one `call()` (after a first, untimed one) over NUM_WINDOWS windows of back-to-back
    calls, each window at least MIN_WINDOW_S long and closed by `block_until_ready`."""
    jax.block_until_ready(call())
    start = time.perf_counter()
    jax.block_until_ready(call())
    repeats = max(1, int(MIN_WINDOW_S / max(time.perf_counter() - start, 1e-6)))
    windows = []
    for _ in range(NUM_WINDOWS):
        start = time.perf_counter()
        for _ in range(repeats):
            out = call()
        jax.block_until_ready(out)
        windows.append((time.perf_counter() - start) / repeats)
    return float(np.median(windows))


def _time_equation(eqn: Any) -> float:
    """Median seconds of one call of the equation alone, on random operands of its shapes and dtypes."""
    key = jax.random.key(0)
    operands = [
        jax.random.normal(key, v.aval.shape, v.aval.dtype) if jnp.issubdtype(v.aval.dtype, jnp.floating) else jnp.zeros(v.aval.shape, v.aval.dtype)
        for v in eqn.invars
    ]
    call = jax.jit(lambda *xs: eqn.primitive.bind(*xs, **eqn.params))
    return _median_call_seconds(lambda: call(*operands))


def matrix_axes(lhs_ndim: int, rhs_ndim: int, dimension_numbers: Any) -> tuple[tuple[list[int], ...], tuple[list[int], ...]]:
    """The axes of a dot_general's operands grouped as matrices: ((batch, M, K) of the left one,
    (batch, K, N) of the right one), M and N being the free axes."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    lhs_free = [d for d in range(lhs_ndim) if d not in lhs_contract and d not in lhs_batch]
    rhs_free = [d for d in range(rhs_ndim) if d not in rhs_contract and d not in rhs_batch]
    return (list(lhs_batch), lhs_free, list(lhs_contract)), (list(rhs_batch), list(rhs_contract), rhs_free)


def blas_operands(eqn: Any, lhs: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The operands of dot_general `eqn` as contiguous [batch, M, K] and [batch, K, N] arrays (batch 1 when it
    has none): `np.matmul` of them, reshaped to the equation's output shape, is its result."""
    lhs_axes, rhs_axes = matrix_axes(lhs.ndim, rhs.ndim, eqn.params["dimension_numbers"])
    batch = int(np.prod([lhs.shape[d] for d in lhs_axes[0]]))
    depth = int(np.prod([lhs.shape[d] for d in lhs_axes[2]]))
    left = lhs.transpose([d for axes in lhs_axes for d in axes]).reshape(batch, -1, depth)
    right = rhs.transpose([d for axes in rhs_axes for d in axes]).reshape(batch, depth, -1)
    return np.ascontiguousarray(left), np.ascontiguousarray(right)


def _time_blas_dot(eqn: Any) -> float | None:
    """Median seconds of float32 dot_general `eqn` as one `np.matmul` on operands from `blas_operands`;
    None for any other equation."""
    if eqn.primitive.name != "dot_general" or any(v.aval.dtype != np.float32 for v in eqn.invars):
        return None
    random = np.random.default_rng(0)
    left, right = blas_operands(eqn, *(random.standard_normal(v.aval.shape, np.float32) for v in eqn.invars))
    out = np.matmul(left, right)
    return _median_call_seconds(lambda: np.matmul(left, right, out=out))


def distinct_matmuls(fn: Callable[..., Any], *args: Any) -> list[tuple[Any, int]]:
    """(equation, how many times the step runs it) for each distinct matmul or convolution of `fn(*args)`:
    equal primitive, operand shapes and dtypes, and parameters count as one."""
    found: dict[tuple, list] = {}
    for eqn, times in flops.matmul_equations(jax.make_jaxpr(fn)(*args).jaxpr):
        signature = (eqn.primitive.name, tuple(str(v.aval) for v in eqn.invars), repr(sorted(eqn.params.items())))
        found.setdefault(signature, [eqn, 0])[1] += times
    return [(eqn, count) for eqn, count in found.values()]


def matmul_bounds_s(fn: Callable[..., Any], *args: Any) -> tuple[float, float | None]:
    """Seconds (XLA, best): the sum over the matmuls and convolutions of `fn(*args)` (args may be abstract)
    of each one's time alone, times how often it runs; with XLA's kernels, and with each dot at the faster
    of XLA and numpy's BLAS. Best is None off the CPU, where numpy's host BLAS is no alternative kernel.

    Every XLA timing comes first: OpenBLAS's threads keep spinning after a call and would slow XLA's."""
    found = distinct_matmuls(fn, *args)
    counts = [count for _, count in found]
    xla = [_time_equation(eqn) for eqn, _ in found]
    if jax.devices()[0].platform != "cpu":
        return float(np.dot(xla, counts)), None
    blas = [_time_blas_dot(eqn) for eqn, _ in found]
    best = [x if b is None else min(x, b) for x, b in zip(xla, blas)]
    return float(np.dot(xla, counts)), float(np.dot(best, counts))
