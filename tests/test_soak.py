"""Long-run stability (slow): thousands of VAE steps with periodic checkpoints and evaluations keep host
RSS flat after the first evaluation (step 1500 vs step 3900, tolerance 5% + 50 MiB); the RSS curve and the
step rate are printed for the record (timings are not asserted: the machine is shared).

Run: pytest -m slow tests/test_soak.py -s
"""

from __future__ import annotations

import pathlib
import re
import statistics

import pytest

import faults
from genjax.metrics_log import read_metrics

STEPS = 4000
STEP_LINE = re.compile(r"^step (\d+)/")


def rss_mib(pid: int) -> float:
    """Resident set size of process `pid` in MiB, from /proc."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@pytest.mark.slow
def test_soak_keeps_host_memory_flat(tmp_path):
    cmd = faults.command(
        "experiments.vae_mnist", tmp_path, num_train_steps=STEPS, log_every=100, checkpoint_every=250, eval_every=1000
    )
    process = faults.start(cmd, faults.environment())
    rss: dict[int, float] = {}
    for line in process.stdout:
        if match := STEP_LINE.match(line):
            rss[int(match.group(1))] = rss_mib(process.pid)
    assert process.wait() == 0
    assert faults.committed_steps(tmp_path) == [3500, 3750, 4000]

    baseline, end = rss[1500], rss[STEPS - 100]  # after the first evaluation (its compiles) and 6 checkpoints
    rates = [r["steps_per_s"] for r in read_metrics(tmp_path, "train") if r["step"] > 100]
    third = len(rates) // 3
    print("\nsoak RSS (MiB) by step: " + ", ".join(f"{s}: {v:.0f}" for s, v in sorted(rss.items()) if s % 500 == 0))
    print(f"soak steps/s median: first third {statistics.median(rates[:third]):.1f}, last third {statistics.median(rates[-third:]):.1f}")
    assert end - baseline < 0.05 * baseline + 50, f"host RSS grew from {baseline:.0f} to {end:.0f} MiB"
