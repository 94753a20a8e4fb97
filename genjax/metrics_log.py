"""Metrics out: `<workdir>/metrics.jsonl` (one JSON object per line) and TensorBoard event files.

`metrics.jsonl` is the record; TensorBoard's events are rebuilt from it whenever a resumed run rewinds it,
so both hold each (step, split) once.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import shutil
from typing import Any, Iterator

import jax
import numpy as np

from genjax.errors import GenjaxError

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _summary_writer(directory: pathlib.Path):
    from tensorboardX import SummaryWriter  # imported lazily: only process 0 writes events

    return SummaryWriter(str(directory))


def _add_scalars(writer, step: int, split: str, scalars: dict[str, float]) -> None:
    for name, value in scalars.items():
        if math.isfinite(value):
            writer.add_scalar(f"{split}/{name}", value, int(step))


class MetricLogger:
    """Writes scalars per (step, split); only process 0 writes, the others are no-ops.

    A failed write (a full disk, permissions) raises GenjaxError naming the file or the TensorBoard directory.
    """

    def __init__(self, workdir: pathlib.Path):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        self.path, self.events, self.failed = workdir / METRICS_FILE, workdir / TENSORBOARD_DIR, False
        with _write_errors(self.path):
            self.jsonl = open(self.path, "a")
        with _write_errors(self.events):
            self.tensorboard = _summary_writer(self.events)

    def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        scalars = {k: _to_float(v) for k, v in metrics.items()}
        with self._reporting_failure(self.path):
            self.jsonl.write(json.dumps({"step": int(step), "split": split, **scalars}) + "\n")
            self.jsonl.flush()
        with self._reporting_failure(self.events):
            _add_scalars(self.tensorboard, step, split, scalars)
            self.tensorboard.flush()

    def close(self) -> None:
        """Closes both sinks; after a failed write it closes them quietly (that failure is being reported)."""
        if not self.enabled:
            return
        for sink, path in ((self.jsonl, self.path), (self.tensorboard, self.events)):
            if self.failed:
                with contextlib.suppress(OSError):
                    sink.close()
            else:
                with self._reporting_failure(path):
                    sink.close()

    @contextlib.contextmanager
    def _reporting_failure(self, path: pathlib.Path) -> Iterator[None]:
        try:
            with _write_errors(path):
                yield
        except GenjaxError:
            self.failed = True
            raise


@contextlib.contextmanager
def _write_errors(path: pathlib.Path) -> Iterator[None]:
    """Turns an OSError while writing the metrics into a GenjaxError naming `path` and the fix."""
    try:
        yield
    except OSError as error:
        raise GenjaxError(
            f"writing {path} failed ({error.strerror or error}); free disk space or fix the permissions, then rerun "
            "the same command: it resumes from the last checkpoint"
        ) from error


def _to_float(value: Any) -> float:
    return float(np.asarray(value))


def read_metrics(workdir: pathlib.Path | str, split: str | None = None) -> list[dict[str, Any]]:
    """The rows of `<workdir>/metrics.jsonl`, optionally only those of one split; [] when there is no file."""
    path = pathlib.Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line]
    return [r for r in rows if split is None or r["split"] == split]


def rewind(workdir: pathlib.Path, step: int) -> int:
    """Drops the rows of steps after `step` from `<workdir>/metrics.jsonl` (rewritten atomically) and rebuilds
    TensorBoard's events from what stays; returns the number of rows dropped. Process 0 only.

    A run resumed from the checkpoint of `step` logs the later steps again: without this they would be there twice.
    """
    workdir = pathlib.Path(workdir)
    rows = read_metrics(workdir)
    kept = [row for row in rows if row["step"] <= step]
    if len(kept) == len(rows):
        return 0
    path = workdir / METRICS_FILE
    with _write_errors(path):
        partial = path.with_name(path.name + ".partial")
        partial.write_text("".join(json.dumps(row) + "\n" for row in kept))
        os.replace(partial, path)
        events, rebuilt = workdir / TENSORBOARD_DIR, workdir / (TENSORBOARD_DIR + ".partial")
        shutil.rmtree(rebuilt, ignore_errors=True)
        writer = _summary_writer(rebuilt)
        for row in kept:
            _add_scalars(writer, row["step"], row["split"], {k: v for k, v in row.items() if k not in ("step", "split")})
        writer.close()
        shutil.rmtree(events, ignore_errors=True)
        os.replace(rebuilt, events)
    return len(rows) - len(kept)
