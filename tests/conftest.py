"""Shared test setup: real prepared TFDS data (TFDS_DATA_DIR, defaulting to ../shared/tfds) and helpers."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import jax
import pytest

from genjax.launch import process_env

REPO = pathlib.Path(__file__).resolve().parents[1]

# What the tests pin so that they check the same math on a GPU as on the CPU (neither changes anything there):
# - float32 matmuls and convolutions in full float32: XLA:GPU's default runs them in TF32 (a 10-bit
#   mantissa, errors near 1e-3), a speed setting rather than the math under test;
# - deterministic GPU kernels (scatter-adds without atomics, fixed cuDNN algorithms), without which two runs
#   of one step differ by rounding and "resume is bit-identical" cannot hold. Read when the backend starts,
#   so set here, before any test touches a device; subprocesses inherit it.
jax.config.update("jax_default_matmul_precision", "highest")
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_gpu_deterministic_ops=true".strip()

if not os.environ.get("TFDS_DATA_DIR") and (REPO.parent / "shared" / "tfds").is_dir():
    os.environ["TFDS_DATA_DIR"] = str(REPO.parent / "shared" / "tfds")


@pytest.fixture(scope="session")
def data_dir() -> str:
    directory = os.environ.get("TFDS_DATA_DIR", "")
    if not pathlib.Path(directory, "mnist").is_dir():
        pytest.fail(f"prepared TFDS data not found: set TFDS_DATA_DIR (now {directory!r}) to the folder holding mnist/")
    return directory


def emulated_cpu_env(devices: int) -> dict[str, str]:
    """This environment with `devices` emulated CPU devices, on the CPU even where a GPU is present."""
    return {**process_env(devices), "JAX_PLATFORMS": "cpu"}


def run_module(module: str, *args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs `python -m module args...` from the repo root; returns the finished process (text output)."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def train_cnn(workdir: pathlib.Path, steps: int, **model_overrides) -> pathlib.Path:
    """A short real cnn_mnist run in `workdir` (reused if already trained this session)."""
    from experiments import cnn_mnist

    if not (workdir / "checkpoints").is_dir():
        config = cnn_mnist.get_config()
        config.update(dict(num_train_steps=steps, batch_size=64, log_every=steps, checkpoint_every=steps, download=False))
        config.data.augment = False
        config.optimizer.warmup_steps = 10
        config.model.update(model_overrides)
        cnn_mnist.train_and_evaluate(config, workdir)
    return workdir


@pytest.fixture(scope="session")
def feature_checkpoint(tmp_path_factory, data_dir) -> pathlib.Path:
    """A tiny metric CNN (200 steps, about 95% test accuracy), trained once per session: the GAN's metric network."""
    return train_cnn(tmp_path_factory.getbasetemp() / "feature_cnn", steps=200)


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory) -> pathlib.Path:
    """One persistent JAX compilation cache for the subprocess runs of the session (faults.environment)."""
    return tmp_path_factory.mktemp("jax_compile_cache")


@pytest.fixture
def family_args(data_dir):
    """model -> the `--config.*` arguments that build a benchmark family (benchmarks.step_throughput.FAMILIES)
    quickly on the real data: the data dir and the `test_overrides` the family declares (genjax/entries.py)."""
    from benchmarks import step_throughput

    def args(model: str) -> list[str]:
        return [f"--config.data_dir={data_dir}", *step_throughput.FAMILIES[model].test_overrides]

    return args
