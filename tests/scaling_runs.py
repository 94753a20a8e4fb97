"""Shared VAE runs for the scale-out tests: one config, run on 1 device, 4 devices or 2 processes x 2 devices.

Every run trains the real VAE experiment on MNIST with the same global batch,
seed and constant learning rate (so stopping at step 3 or 6 does not change the
schedule), logging every step and checkpointing every 3 steps. The expensive runs
are cached for the pytest session, so test files share them.
"""

from __future__ import annotations

import functools
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

from experiments import vae_mnist
from conftest import emulated_cpu_env
from genjax.launch import process_commands
from genjax.metrics_log import read_metrics

REPO = pathlib.Path(__file__).resolve().parents[1]
OVERRIDES = dict(
    batch_size=32,
    eval_batch_size=1000,
    log_every=1,
    eval_every=1000,
    checkpoint_every=3,
    keep_checkpoints=5,
    iwae_samples=0,
)
OPTIMIZER = dict(schedule="constant", learning_rate=2e-3)
RUN_TIMEOUT_S = 420


def vae_args(workdir: pathlib.Path, steps: int) -> list[str]:
    """`python -m experiments.vae_mnist` arguments of the shared config, `steps` updates."""
    overrides = {**OVERRIDES, "num_train_steps": steps}
    return [
        sys.executable, "-m", "experiments.vae_mnist", "--workdir", str(workdir),
        *(f"--config.{k}={v}" for k, v in overrides.items()),
        *(f"--config.optimizer.{k}={v}" for k, v in OPTIMIZER.items()),
    ]


def vae_config(steps: int, **extra):
    """The shared config for an in-process run."""
    config = vae_mnist.get_config()
    config.update({**OVERRIDES, "num_train_steps": steps, **extra})
    config.optimizer.update(OPTIMIZER)
    return config


def run_single(workdir: pathlib.Path, steps: int, devices: int) -> subprocess.CompletedProcess:
    """One process with `devices` emulated CPU devices."""
    return subprocess.run(vae_args(workdir, steps), cwd=REPO, env=emulated_cpu_env(devices),
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def run_two_processes(workdir: pathlib.Path, steps: int) -> list[tuple[int, str]]:
    """Two processes x 2 devices joined on 127.0.0.1; [(exit status, output)] per process (killed at the timeout)."""
    logs = [tempfile.TemporaryFile("w+") for _ in range(2)]
    processes = [
        subprocess.Popen(command, cwd=REPO, env=emulated_cpu_env(2), stdout=log, stderr=subprocess.STDOUT, text=True)
        for command, log in zip(process_commands(vae_args(workdir, steps), 2), logs)
    ]
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        for process in processes:
            process.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    results = []
    for process, log in zip(processes, logs):
        log.seek(0)
        results.append((process.returncode, log.read()))
    return results


def train_losses(workdir: pathlib.Path) -> dict[int, float]:
    """{step: training loss} from `<workdir>/metrics.jsonl`."""
    return {r["step"]: r["loss"] for r in read_metrics(workdir, "train")}


def final_test(workdir: pathlib.Path) -> dict[str, float]:
    """The last test-split metrics row of `<workdir>/metrics.jsonl`."""
    return read_metrics(workdir, "test")[-1]


def copy_checkpoint(source: pathlib.Path, step: int, target: pathlib.Path) -> pathlib.Path:
    """A fresh workdir `target` holding only checkpoint `step` of the workdir `source`."""
    (target / "checkpoints").mkdir(parents=True)
    shutil.copytree(source / "checkpoints" / str(step), target / "checkpoints" / str(step))
    return target


@functools.cache
def _session_dir() -> pathlib.Path:
    directory = pathlib.Path(tempfile.mkdtemp(prefix="genjax_scaling_"))
    import atexit

    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return directory


@functools.cache
def four_device_run() -> pathlib.Path:
    """One process, 4 devices, 6 steps (checkpoints at 3 and 6): the reference."""
    workdir = _session_dir() / "four_devices"
    result = run_single(workdir, 6, devices=4)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


@functools.cache
def two_process_run() -> tuple[pathlib.Path, tuple[tuple[int, str], ...]]:
    """Two processes x 2 devices, 3 steps from scratch (checkpoint at 3), with both processes' (status, output)."""
    workdir = _session_dir() / "two_processes"
    return workdir, tuple(run_two_processes(workdir, 3))
