"""Metrics out: `<workdir>/metrics.jsonl` (one JSON object per line) and TensorBoard event files."""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

import jax
import numpy as np


class MetricLogger:
    """Writes scalars per (step, split); only process 0 writes, the others are no-ops."""

    def __init__(self, workdir: pathlib.Path):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter

        self.jsonl = open(workdir / "metrics.jsonl", "a")
        self.tensorboard = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        scalars = {k: _to_float(v) for k, v in metrics.items()}
        self.jsonl.write(json.dumps({"step": int(step), "split": split, **scalars}) + "\n")
        self.jsonl.flush()
        for name, value in scalars.items():
            if math.isfinite(value):
                self.tensorboard.add_scalar(f"{split}/{name}", value, int(step))
        self.tensorboard.flush()

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tensorboard.close()


def _to_float(value: Any) -> float:
    return float(np.asarray(value))


def read_metrics(workdir: pathlib.Path | str, split: str | None = None) -> list[dict[str, Any]]:
    """The rows of `<workdir>/metrics.jsonl`, optionally only those of one split."""
    rows = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines() if line]
    return [r for r in rows if split is None or r["split"] == split]
