"""One run per workdir: an OS-level lock, and the workdir's files brought back to the step a run resumes from."""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import pathlib
import re
import socket
from typing import Iterator

import ml_collections

from genjax.errors import GenjaxError

LOCK_FILE = ".genjax.lock"
CONFIG_FILE = "config.json"
_STEP_IN_NAME = re.compile(r"_(\d+)\.\w+$")  # samples/samples_0001000.png, samples/sample_0002000.txt


def check_path(workdir: str | os.PathLike) -> pathlib.Path:
    """`workdir` as a path; GenjaxError for an empty one (it would write into the current directory)."""
    if not str(workdir).strip():
        raise GenjaxError("--workdir is empty; give the directory for checkpoints and metrics, e.g. --workdir runs/vae")
    return pathlib.Path(workdir)


@contextlib.contextmanager
def lock(workdir: pathlib.Path) -> Iterator[None]:
    """Holds an exclusive lock on `workdir` (flock on `<workdir>/.genjax.lock`) while the block runs.

    The kernel releases it when the process ends, however it ends (kill -9 included), so a lock is never stale.
    A second holder gets a GenjaxError at once naming the workdir and the first holder's pid and host.
    The lock file stays behind; only the lock on it matters.
    """
    path = workdir / LOCK_FILE
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")
    except OSError as error:
        raise GenjaxError(f"workdir '{workdir}' is not writable ({error.strerror}); choose another --workdir") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise GenjaxError(
                f"workdir '{workdir}' is in use by {holder}; wait for that run to end (rerunning then resumes it), "
                "or choose another --workdir"
            ) from None
        handle.seek(0)
        handle.truncate()
        started = datetime.datetime.now().isoformat(timespec="seconds")
        handle.write(f"pid {os.getpid()} on host {socket.gethostname()} (since {started})\n")
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock


def retire_after(workdir: pathlib.Path, step: int) -> list[pathlib.Path]:
    """Deletes the sample files of `<workdir>/samples` whose name carries a step after `step`; returns them.

    A run resumed from the checkpoint of `step` writes those steps' samples again.
    """
    samples = workdir / "samples"
    later = [p for p in sorted(samples.glob("*")) if (m := _STEP_IN_NAME.search(p.name)) and int(m.group(1)) > step] if samples.is_dir() else []
    for path in later:
        path.unlink()
    return later


def save_config(config: ml_collections.ConfigDict, workdir: pathlib.Path, experiment: str, resumed_step: int | None) -> None:
    """Writes the resolved config to `<workdir>/config.json` with the experiment's name (the record of what ran).

    When a resumed run's config differs from the saved one, the saved one is kept as
    `config_until_step_<step>.json`, the config the steps up to the resumed `step` were trained with.
    """
    path = workdir / CONFIG_FILE
    text = json.dumps({**config.to_dict(), "experiment": experiment}, indent=2, sort_keys=True, default=str)
    if path.exists() and resumed_step is not None and path.read_text() != text:
        os.replace(path, workdir / f"config_until_step_{resumed_step}.json")
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)
