"""Threefry-2x32 on XLA:CPU as straight-line code, which XLA fuses into one pass over the counters.

jax hashes every random draw with Threefry-2x32 (20 rounds; Salmon et al., "Parallel random numbers:
as easy as 1, 2, 3", SC 2011). On CPU it lowers the hash as a `while` loop of five iterations, to keep
compile times short, and each iteration is a separate pass over the counter arrays. Straight-line
rounds let XLA fuse the whole hash with the draw that consumes it. Measured on the 2-core CPU
(benchmarks/HISTORY.md): a Bernoulli draw over 128x784 pixels takes 0.26 ms against 0.62-0.87 ms, and
the VAE's train step 5.6 ms against 6.2 ms. The numbers are jax's own, bit for bit
(tests/test_fused_threefry.py), so no random stream and no result changes. Other platforms keep jax's
lowering.
"""

from __future__ import annotations

import jax
import numpy as np
from jax import lax
from jax.extend.random import threefry2x32_p
from jax.interpreters import mlir

ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))  # bits, alternating every four rounds
KEY_PARITY = np.uint32(0x1BD11BDA)


def _rotate_left(x: jax.Array, bits: int) -> jax.Array:
    return lax.shift_left(x, np.uint32(bits)) | lax.shift_right_logical(x, np.uint32(32 - bits))


def threefry2x32(key1: jax.Array, key2: jax.Array, x1: jax.Array, x2: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The Threefry-2x32 hash of counter words (x1, x2) under key words (key1, key2).

    All four are uint32 arrays of one shape; returns the two hashed words, same shape.
    """
    keys = (key1, key2, key1 ^ key2 ^ KEY_PARITY)
    x1, x2 = x1 + keys[0], x2 + keys[1]
    for injection in range(1, 6):
        for bits in ROTATIONS[(injection - 1) % 2]:
            x1 = x1 + x2
            x2 = _rotate_left(x2, bits) ^ x1
        x1 = x1 + keys[injection % 3]
        x2 = x2 + keys[(injection + 1) % 3] + np.uint32(injection)
    return x1, x2


def install() -> None:
    """Lowers jax's Threefry primitive on CPU through `threefry2x32` from now on (idempotent).

    Takes effect for functions compiled afterwards; `genjax.loop.compile_steps` calls it.
    """
    mlir.register_lowering(
        threefry2x32_p, mlir.lower_fun(threefry2x32, multiple_results=True), platform="cpu", inline=False
    )
