"""The fused CPU lowering of Threefry: the published test vectors, and jax's own random numbers bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from jax.extend.random import threefry_2x32

from genjax import fused_threefry
from conftest import REPO

# Random123's known answers for Threefry-2x32 with 20 rounds: (key, counter) -> hashed counter.
KNOWN_ANSWERS = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]


@pytest.mark.parametrize("key, counter, expected", KNOWN_ANSWERS)
def test_fused_lowering_gives_the_published_answers(key, counter, expected):
    fused_threefry.install()
    with jax.default_device(jax.devices("cpu")[0]):
        hashed = jax.jit(threefry_2x32)(np.uint32(key), np.uint32(counter))
    assert [int(word) for word in hashed] == list(expected)


def test_draws_are_jax_own_numbers_without_a_loop():
    # A fresh process, so that the draws are first compiled with jax's own (rolled-loop) lowering.
    script = textwrap.dedent(
        """
        import jax, numpy as np
        from genjax import fused_threefry

        def draws(key):
            k1, k2 = jax.random.split(jax.random.fold_in(key, 7))
            return (jax.random.bits(k1, (1000,)), jax.random.uniform(k2, (33, 7)),
                    jax.random.bernoulli(key, 0.3, (128, 784)), jax.random.normal(k2, (5, 20)))

        key = jax.random.key(2026)
        jax_own = jax.jit(draws)
        before, loops_before = jax_own(key), jax_own.lower(key).compile().as_text().count(" while(")
        fused_threefry.install()
        jax.clear_caches()
        fused = jax.jit(draws)
        after, loops_after = fused(key), fused.lower(key).compile().as_text().count(" while(")
        for a, b in zip(before, after):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        print(loops_before, loops_after)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    loops_before, loops_after = map(int, done.stdout.split())
    assert loops_before > 0  # jax's CPU lowering: one while loop per hash
    assert loops_after == 0
