"""The CPU tunings an entry point switches on with `--config.cpu_tuning` (on by default in the experiments and
benchmarks): both change the whole process, so no library function applies them.

- Random draws hashed by straight-line Threefry code that XLA fuses (`genjax/fused_threefry.py`; the same
  numbers bit for bit): the VAE's step 5.6 ms against 6.2 ms (benchmarks/HISTORY.md).
- glibc malloc keeps freed memory, so a step's temporaries are not page-faulted in anew at every call
  (`genjax/host_memory.py`): the char LM's step 38-45 ms against 51-59 ms (benchmarks/HISTORY.md).

Neither changes any figure a run computes; off (`--config.cpu_tuning=False`) the process is left as jax sets it.
"""

from __future__ import annotations

import jax

from genjax import fused_threefry, host_memory


def apply(enabled: bool) -> bool:
    """Applies both tunings when `enabled` and the default backend is the CPU; returns whether it did."""
    if not enabled or jax.default_backend() != "cpu":
        return False
    fused_threefry.install()
    host_memory.keep_freed_memory()
    return True
