"""Host memory on CPU: with the entry points' CPU tuning on, a freed block above 32 MiB is reused without page
faults; the library's own `compile_steps` leaves malloc as it was."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from conftest import REPO

# Mallocs, fills and frees a 48 MiB block (an XLA:CPU step's temporaries are one such block per call)
# six times on this thread, and prints the minor page faults of the last five cycles. The first cycle
# faults the pages in whatever the setting. argv[1] says what comes first: nothing ("default"), genjax's
# `compile_steps` on a one-device CPU mesh ("library"), or the entry points' switch ("tuned").
SCRIPT = """
import ctypes, json, resource, sys
from types import SimpleNamespace

if sys.argv[1] == "library":
    from genjax import loop, sharding
    no_step = lambda *args: None
    loop.compile_steps(SimpleNamespace(train_step=no_step, eval_step=no_step), sharding.make_mesh(1), None)
if sys.argv[1] == "tuned":
    from genjax import cpu_tuning
    assert cpu_tuning.apply(True)

libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
size = 48 * 2**20
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"pages": size // 4096, "faults": faults[1:]}))
"""


def page_faults(mode: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc malloc's")
def test_cpu_tuning_reuses_freed_pages_and_the_library_alone_changes_nothing():
    default, library, tuned = page_faults("default"), page_faults("library"), page_faults("tuned")
    assert min(default["faults"]) > default["pages"] / 2, f"glibc no longer maps big blocks afresh: {default}"
    assert min(library["faults"]) > library["pages"] / 2, f"compile_steps changed malloc: {library}"
    assert max(tuned["faults"]) < tuned["pages"] / 100, f"cpu_tuning left big blocks page-faulting: {tuned}"
