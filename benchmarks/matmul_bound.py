"""The matmul-only bound of a train step: its own matmuls and convolutions, each timed alone at its shape.

On one CPU device a step runs its matmuls and convolutions one after another, so, as far as
each runs inside the step as fast as alone, the step cannot be faster than the sum of their
times measured alone. The step's MFU scaled by step time / that sum (`mfu_ceiling` in the
benchmark) is the MFU it would reach if everything else it does (elementwise work,
normalisation, random numbers, the optimizer update) cost nothing: the ceiling that only
faster kernels could raise. It is an estimate: XLA may lay out or fuse an operand
differently inside the step than alone.
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


def _time_equation(eqn: Any) -> float:
    """Median seconds of one call of the equation alone, on random operands of its shapes and dtypes."""
    key = jax.random.key(0)
    operands = [
        jax.random.normal(key, v.aval.shape, v.aval.dtype) if jnp.issubdtype(v.aval.dtype, jnp.floating) else jnp.zeros(v.aval.shape, v.aval.dtype)
        for v in eqn.invars
    ]
    call = jax.jit(lambda *xs: eqn.primitive.bind(*xs, **eqn.params))
    jax.block_until_ready(call(*operands))
    start = time.perf_counter()
    jax.block_until_ready(call(*operands))
    repeats = max(1, int(MIN_WINDOW_S / max(time.perf_counter() - start, 1e-6)))
    windows = []
    for _ in range(NUM_WINDOWS):
        start = time.perf_counter()
        for _ in range(repeats):
            out = call(*operands)
        jax.block_until_ready(out)
        windows.append((time.perf_counter() - start) / repeats)
    return float(np.median(windows))


def distinct_matmuls(fn: Callable[..., Any], *args: Any) -> list[tuple[Any, int]]:
    """(equation, how many times the step runs it) for each distinct matmul or convolution of `fn(*args)`:
    equal primitive, operand shapes and dtypes, and parameters count as one."""
    found: dict[tuple, list] = {}
    for eqn, times in flops.matmul_equations(jax.make_jaxpr(fn)(*args).jaxpr):
        signature = (eqn.primitive.name, tuple(str(v.aval) for v in eqn.invars), repr(sorted(eqn.params.items())))
        found.setdefault(signature, [eqn, 0])[1] += times
    return [(eqn, count) for eqn, count in found.values()]


def matmul_bound_s(fn: Callable[..., Any], *args: Any) -> float:
    """Seconds: the sum over the matmuls and convolutions of `fn(*args)` (args may be abstract) of each
    one's time alone, times how often it runs."""
    return sum(_time_equation(eqn) * count for eqn, count in distinct_matmuls(fn, *args))
