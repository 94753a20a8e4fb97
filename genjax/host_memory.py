"""Host memory on CPU: freed blocks stay in the process, so a step's buffers are not page-faulted anew each step.

XLA:CPU allocates a compiled step's temporary buffer with malloc at every call and frees it after.
glibc serves a block above its mmap threshold (which adapts, but never beyond 32 MiB) with a fresh
`mmap` and gives it back with `munmap`, so every call of a step with more than 32 MiB of temporaries
made the kernel fault in and zero every page again: the char LM's step (42.8 MiB of temporaries)
took about 11,700 page faults per step on the 2-core CPU, and 51-59 ms per step instead of 38-45 ms
(benchmarks/HISTORY.md). With malloc's `mmap` off and its trim threshold raised, freed blocks stay
in the heap and the next step reuses the same pages. The cost is that the process keeps its peak
heap (up to `KEEP_FREED_BYTES` of free memory) instead of returning it to the system.
"""

from __future__ import annotations

import ctypes
import platform

# mallopt parameters, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4

KEEP_FREED_BYTES = 1 << 30  # free memory at the top of the heap that malloc keeps rather than trims


def keep_freed_memory() -> bool:
    """Turns glibc malloc's `mmap` off and its trimming up for this process; idempotent.

    Takes effect for allocations made afterwards; `genjax.loop.compile_steps` calls it for CPU
    meshes. Returns False, changing nothing, where the C library is not glibc.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES))
