"""Shared by the reliability tests: experiment processes, checkpoint contents, file-tree snapshots."""

from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess
import sys
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from conftest import REPO
from genjax import entries
from genjax.workdir import LOCK_FILE


def command(module: str, workdir: pathlib.Path | str, fixture: Callable[[str], Any] | None = None, **overrides) -> list[str]:
    """`python -u -m module --workdir W --config.K=V ...` with the experiment's `SMOKE` settings (tiny but real runs:
    the same data, model and loop as the full experiment; genjax/entries.py) under `overrides`. `fixture` (pytest's
    `request.getfixturevalue`) supplies the settings declared as `entries.Fixture`s that `overrides` do not give."""
    settings = {**entries.smoke_settings(module), **overrides}
    for key, value in settings.items():
        if isinstance(value, entries.Fixture):
            if fixture is None:
                raise ValueError(f"{module}'s SMOKE setting '{key}' comes from fixture '{value.name}': pass fixture=request.getfixturevalue")
            settings[key] = fixture(value.name)
    return [sys.executable, "-u", "-m", module, "--workdir", str(workdir), *(f"--config.{k}={v}" for k, v in settings.items())]


def environment(compile_cache: pathlib.Path | None = None, **extra: str) -> dict[str, str]:
    """This process's environment for a child run; a shared persistent compile cache saves recompiling per run."""
    env = {**os.environ, **extra}
    if compile_cache is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = str(compile_cache)
    return env


def run(cmd: list[str], env: dict[str, str], timeout: float = 1200, **kwargs) -> subprocess.CompletedProcess:
    """Runs `cmd` from the repo root to completion; returns it with text stdout/stderr."""
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)


def start(cmd: list[str], env: dict[str, str], **kwargs) -> subprocess.Popen:
    """Starts `cmd` from the repo root; stdout (line-buffered text) is readable, stderr goes with it."""
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, **kwargs)


def checkpoint_arrays(step_dir: pathlib.Path) -> dict[str, np.ndarray]:
    """{leaf path: host array} of the train state saved in `<checkpoints>/<step>`, read without any target."""
    with ocp.StandardCheckpointer() as checkpointer:
        state = checkpointer.restore(pathlib.Path(step_dir).absolute() / "state")
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(state)}


def assert_bit_identical(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    """Same leaves, and every leaf equal bit for bit (NaNs included)."""
    assert sorted(a) == sorted(b)
    differing = [k for k in a if a[k].dtype != b[k].dtype or a[k].tobytes() != b[k].tobytes()]
    assert not differing, f"{len(differing)} state leaves differ, e.g. {differing[:3]}"


def tree_snapshot(directory: pathlib.Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `directory` (empty when it does not exist), but the workdir lock
    file, which names whichever run held the workdir last."""
    directory = pathlib.Path(directory)
    if not directory.exists():
        return {}
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != LOCK_FILE
    }


def largest_file(directory: pathlib.Path) -> pathlib.Path:
    """The biggest file under `directory` (for a checkpoint's state: the array data)."""
    return max((p for p in pathlib.Path(directory).rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def committed_steps(workdir: pathlib.Path) -> list[int]:
    """Steps with a finished checkpoint directory in `<workdir>/checkpoints`."""
    directory = pathlib.Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []
