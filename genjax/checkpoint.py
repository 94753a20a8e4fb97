"""Orbax checkpoints in `<workdir>/checkpoints`: train state, RNG and data position, written atomically.

Orbax writes each step into a temporary directory and renames it when complete,
so a crash mid-write leaves the previous checkpoints intact; unfinished temporary
directories are cleaned up on the next start.
"""

from __future__ import annotations

import pathlib
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp

from genjax.errors import GenjaxError

FORMAT_VERSION = 1


class Checkpointer:
    """Saves every `every_steps` (and on demand), keeps the last `keep`, restores the newest readable one."""

    def __init__(self, workdir: pathlib.Path, every_steps: int, keep: int):
        self.directory = (workdir / "checkpoints").absolute()
        self.every_steps = every_steps
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True),
            item_names=("state", "meta"),
        )

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def path(self, step: int) -> pathlib.Path:
        return self.directory / str(step)

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Starts an asynchronous save of `state` and the JSON `meta` at `step` (device buffers are copied first)."""
        meta = {**meta, "format_version": FORMAT_VERSION}
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any]] | None:
        """(step, state, meta) of the newest checkpoint that reads back, or None when there is none.

        A checkpoint that fails to read (truncated or corrupted) is reported with its
        path and the previous one is tried; if every checkpoint is damaged it is an error.
        """
        steps = self.all_steps()
        for step in reversed(steps):
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
                    ),
                )
            except Exception as error:  # orbax raises many types for damaged files
                print(f"warning: checkpoint {self.path(step)} is unreadable ({type(error).__name__}: "
                      f"{str(error).splitlines()[0][:200]}); trying the previous one", file=sys.stderr)
                continue
            meta = dict(restored["meta"])
            if meta.get("format_version", 0) > FORMAT_VERSION:
                raise GenjaxError(
                    f"checkpoint {self.path(step)} has format version {meta['format_version']}, newer than this "
                    f"genjax ({FORMAT_VERSION}); upgrade genjax or use another --workdir"
                )
            return step, restored["state"], meta
        if steps:
            raise GenjaxError(
                f"every checkpoint in {self.directory} is unreadable (steps {steps}); remove the damaged ones "
                "or use a fresh --workdir"
            )
        return None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def abstract_with_shardings(state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `state` carrying the target `shardings` (what restore places arrays into)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
