"""Shared test setup: real prepared TFDS data (TFDS_DATA_DIR, defaulting to ../shared/tfds) and helpers."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

if not os.environ.get("TFDS_DATA_DIR") and (REPO.parent / "shared" / "tfds").is_dir():
    os.environ["TFDS_DATA_DIR"] = str(REPO.parent / "shared" / "tfds")


@pytest.fixture(scope="session")
def data_dir() -> str:
    directory = os.environ.get("TFDS_DATA_DIR", "")
    if not pathlib.Path(directory, "mnist").is_dir():
        pytest.fail(f"prepared TFDS data not found: set TFDS_DATA_DIR (now {directory!r}) to the folder holding mnist/")
    return directory


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
