"""Preemption: SIGKILL at random points (one during a checkpoint write), SIGTERM, Ctrl-C and a second run started
on the same workdir never cost a run.

Each family's tiny run is killed repeatedly and restarted with the same command; the
final state must be bit-identical (CPU) to that of a run never interrupted, and its
metrics.jsonl must hold every (step, split) once, with the same figures. The families are
every experiment that declares `SMOKE` (genjax/entries.py); the VAE runs in CI, the others
(slower to start and step) are marked slow.
"""

from __future__ import annotations

import json
import pathlib
import queue
import random
import re
import signal
import threading
import time

import pytest

import faults
from genjax import entries
from genjax.metrics_log import read_metrics

STEPS = 40
CHECKPOINT_EVERY = 4
NUM_KILLS = 5
IN_CI = {"experiments.vae_mnist"}  # the others (slow) run with -m slow
FAMILIES = [
    pytest.param(module, id=module.split(".")[-1], marks=() if module in IN_CI else pytest.mark.slow)
    for module in entries.smoke_modules()  # every experiment that declares SMOKE (genjax/entries.py)
]
STEP_LINE = re.compile(r"^step (\d+)/")


def run_command(family: str, workdir: pathlib.Path, fixture) -> list[str]:
    return faults.command(family, workdir, fixture, num_train_steps=STEPS, log_every=1, checkpoint_every=CHECKPOINT_EVERY)


class Lines:
    """The child's output lines, read on a thread so the test can wait with a deadline."""

    def __init__(self, process):
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(process,), daemon=True).start()

    def _read(self, process) -> None:
        for line in process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def next(self, timeout: float) -> str | None:
        """The next line, or None at the end of the output."""
        line = self.lines.get(timeout=timeout)
        if line is not None:
            self.seen.append(line)
        return line

    def wait_for_step(self, at_least: int, timeout: float = 1200) -> int | None:
        """Reads until a `step k/...` log line with k >= `at_least`; returns k, or None if the output ended."""
        deadline = time.monotonic() + timeout
        while (line := self.next(deadline - time.monotonic())) is not None:
            if (match := STEP_LINE.match(line)) and int(match.group(1)) >= at_least:
                return int(match.group(1))
        return None


def kill_during_checkpoint_write(process, workdir: pathlib.Path, timeout: float = 1200) -> bool:
    """SIGKILLs `process` as soon as an unfinished (temporary) checkpoint directory appears; False if none did."""
    directory, deadline = workdir / "checkpoints", time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if directory.is_dir() and any("orbax-checkpoint-tmp" in p.name for p in directory.iterdir()):
            process.kill()
            return True
        time.sleep(0.002)
    return False


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory, compile_cache, request):
    """{family: workdir} of uninterrupted runs, made on first use."""
    workdirs: dict[str, pathlib.Path] = {}

    def get(family: str) -> pathlib.Path:
        if family not in workdirs:
            workdir = tmp_path_factory.mktemp("reference")
            done = faults.run(run_command(family, workdir, request.getfixturevalue), faults.environment(compile_cache))
            assert done.returncode == 0, done.stderr[-3000:]
            workdirs[family] = workdir
        return workdirs[family]

    return get


@pytest.mark.parametrize("family", FAMILIES)
def test_sigkill_at_random_points_then_rerun_is_bit_identical(family, tmp_path, compile_cache, reference_runs, request):
    reference = reference_runs(family)
    env, workdir, cmd = faults.environment(compile_cache), tmp_path / "killed", run_command(family, tmp_path / "killed", request.getfixturevalue)
    rng = random.Random(f"{family}-kills")  # seeded: a failure names reproducible kill points
    targets = sorted(rng.sample(range(2, STEPS - 2), NUM_KILLS - 1))
    plan = [("step", t, rng.uniform(0.0, 0.3)) for t in targets]
    plan.insert(rng.randrange(len(plan) + 1), ("checkpoint write", None, 0.0))
    log = []
    for kind, target, delay in plan:
        process = faults.start(cmd, env)
        lines = Lines(process)
        if kind == "checkpoint write":
            assert kill_during_checkpoint_write(process, workdir), "no checkpoint write was caught in progress"
        else:
            reached = lines.wait_for_step(target)
            assert reached is not None, "".join(lines.seen)[-3000:]
            time.sleep(delay)
            process.kill()
        process.wait(timeout=60)
        log.append(f"{kind} {target} +{delay:.2f}s -> rc {process.returncode}, steps {faults.committed_steps(workdir)}")
    final = faults.run(cmd, env)
    assert final.returncode == 0, "\n".join(log) + final.stderr[-3000:]
    assert "resumed from" in final.stdout, "\n".join(log)
    step_dir = f"checkpoints/{STEPS}"
    faults.assert_bit_identical(faults.checkpoint_arrays(workdir / step_dir), faults.checkpoint_arrays(reference / step_dir))
    meta = [json.loads((w / step_dir / "meta" / "metadata").read_text()) for w in (workdir, reference)]
    assert meta[0]["data_index"] == meta[1]["data_index"] == STEPS
    assert meta[0]["train_rng"] == meta[1]["train_rng"]
    assert_same_history(workdir, reference)


def assert_same_history(workdir: pathlib.Path, reference: pathlib.Path) -> None:
    """metrics.jsonl holds each (step, split) once, and every figure but the timing equals the uninterrupted run's."""
    rows = read_metrics(workdir)
    keys = [(row["step"], row["split"]) for row in rows]
    assert len(keys) == len(set(keys)), f"repeated rows: {sorted(k for k in set(keys) if keys.count(k) > 1)[:5]}"

    def figures(run: pathlib.Path) -> dict:
        return {(row["step"], row["split"]): {k: v for k, v in row.items() if k != "steps_per_s"} for row in read_metrics(run)}

    assert figures(workdir) == figures(reference)
    assert [row["step"] for row in read_metrics(workdir, "test")] == [STEPS]


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_stop_signal_checkpoints_the_current_step_and_exits_zero(stop_signal, tmp_path, compile_cache, reference_runs):
    """SIGTERM (preemption) and Ctrl-C (SIGINT) both finish the step, checkpoint it and exit 0; rerunning resumes."""
    family = "experiments.vae_mnist"
    reference = reference_runs(family)
    env, workdir = faults.environment(compile_cache), tmp_path / "stopped"
    cmd = faults.command(family, workdir, num_train_steps=STEPS, log_every=1, checkpoint_every=1000)
    process = faults.start(cmd, env)
    lines = Lines(process)
    reached = lines.wait_for_step(7)
    assert reached is not None, "".join(lines.seen)[-3000:]
    process.send_signal(stop_signal)
    assert process.wait(timeout=120) == 0, "".join(lines.seen)[-3000:]
    while lines.next(timeout=10) is not None:
        pass
    output = "".join(lines.seen)
    saved = re.search(rf"{stop_signal.name}: saved (\S+); exiting", output)
    assert saved, output[-3000:]
    stopped_at = int(pathlib.Path(saved.group(1)).name)
    assert reached <= stopped_at < STEPS
    assert faults.committed_steps(workdir) == [stopped_at]  # checkpoint_every=1000: only the signal saved

    resumed = faults.run(cmd, env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {workdir.absolute() / 'checkpoints' / str(stopped_at)}" in resumed.stdout
    step_dir = f"checkpoints/{STEPS}"
    faults.assert_bit_identical(faults.checkpoint_arrays(workdir / step_dir), faults.checkpoint_arrays(reference / step_dir))
    assert_same_history(workdir, reference)


def test_a_second_run_on_a_busy_workdir_stops_at_once(tmp_path, compile_cache, reference_runs):
    """The same command started twice on one workdir (a double-submitted job): the second exits non-zero at once
    naming the first's pid, writes nothing, and the first finishes as an undisturbed run does."""
    family = "experiments.vae_mnist"
    reference = reference_runs(family)
    env, workdir = faults.environment(compile_cache), tmp_path / "busy"
    cmd = run_command(family, workdir, None)
    first = faults.start(cmd, env)
    lines = Lines(first)
    assert lines.wait_for_step(2) is not None, "".join(lines.seen)[-3000:]
    first.send_signal(signal.SIGSTOP)  # paused mid-run, holding the workdir, however fast its 40 steps would be
    started = time.monotonic()
    second = faults.run(cmd, env)
    first.send_signal(signal.SIGCONT)
    assert second.returncode == 2, second.stderr[-3000:]
    errors = [line for line in second.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in second.stderr, second.stderr[-3000:]
    assert f"workdir '{workdir}' is in use by pid {first.pid} on host" in errors[0], errors[0]
    assert time.monotonic() - started < 60  # stopped before loading data or compiling anything
    assert first.wait(timeout=1200) == 0, "".join(lines.seen)[-3000:]
    step_dir = f"checkpoints/{STEPS}"
    faults.assert_bit_identical(faults.checkpoint_arrays(workdir / step_dir), faults.checkpoint_arrays(reference / step_dir))
    assert_same_history(workdir, reference)
