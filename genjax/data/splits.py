"""Validation data held out of a training split: its last rows (TFDS's `train[-n:]`), never trained on."""

from __future__ import annotations

from typing import Sequence, TypeVar

from genjax.errors import GenjaxError

Rows = TypeVar("Rows", bound=Sequence)


def hold_out(columns: dict[str, Rows], size: int, key: str = "validation_examples") -> tuple[dict[str, Rows], dict[str, Rows]]:
    """(train, validation) of `columns` {name: [N, ...]} (arrays or lists of one length N).

    Validation is the last `size` rows of every column, train the first N - size: a fixed slice, the same for
    every seed, so a resumed or repeated run validates on the same examples and never trains on them.
    `key` names the config field of `size` in the error for a size outside [1, N - 1].
    """
    total = len(next(iter(columns.values())))
    if not 0 < size < total:
        raise GenjaxError(f"{key}={size} must be between 1 and {total - 1} (the split has {total} examples); e.g. --config.{key}={min(5000, total // 10)}")
    cut = total - size
    return {k: v[:cut] for k, v in columns.items()}, {k: v[cut:] for k, v in columns.items()}
