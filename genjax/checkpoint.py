"""Orbax checkpoints in `<workdir>/checkpoints`: train state, RNG and data position, written atomically, verified on restore.

Orbax writes each step into a temporary directory and renames it when complete,
so a crash mid-write leaves the previous checkpoints intact; unfinished temporary
directories are cleaned up on the next start. Orbax does not notice every damaged
file, so each checkpoint's meta also holds a fingerprint of every state leaf's bits,
checked after restoring: a checkpoint that fails to read or to match is reported with
its path, moved to `<workdir>/damaged_checkpoints/` and the previous one is tried.
`BestCheckpoint` keeps the state of the best evaluation in `<workdir>/best_checkpoints` the same way.
"""

from __future__ import annotations

import contextlib
import math
import pathlib
import shutil
import sys
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from genjax.errors import GenjaxError, first_line, root_cause

FORMAT_VERSION = 2  # 2: meta holds state_fingerprint
BEST_CHECKPOINTS = "best_checkpoints"  # the directory of `BestCheckpoint`, beside `checkpoints`
_ODD_MULTIPLIERS = (0x9E3779B1, 0x85EBCA77)  # two independent position weightings


def _leaf_bits(leaf: jax.Array) -> jax.Array:
    """The raw bits of `leaf` as uint32, same shape (one entry per 1-, 2- or 4-byte element)."""
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    if leaf.dtype == jnp.bool_:
        leaf = leaf.astype(jnp.uint8)
    itemsize = jnp.dtype(leaf.dtype).itemsize
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}.get(itemsize, jnp.uint32)
    return jax.lax.bitcast_convert_type(leaf, unsigned).astype(jnp.uint32)


def _positions(shape: tuple[int, ...]) -> jax.Array:
    """uint32 row-major flat index of every element of an array of `shape` (no reshape: sharding is kept)."""
    position, stride = jnp.zeros(shape, jnp.uint32), 1
    for axis in reversed(range(len(shape))):
        position = position + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride % 2**32)
        stride *= shape[axis]
    return position


@jax.jit
def _fingerprints(state: Any) -> jax.Array:
    """uint32 [num_leaves, 2]: per leaf, two sums of its bits weighted by odd functions of the position.

    Each weight is odd, hence invertible mod 2**32, so changing any single element
    always changes both sums; the computation runs where the (sharded) arrays live.
    """
    rows = []
    for leaf in jax.tree.leaves(state):
        bits = _leaf_bits(leaf)
        position = _positions(bits.shape)
        rows.append(jnp.stack([jnp.sum(bits * ((position + 1) * jnp.uint32(m) | 1)) for m in _ODD_MULTIPLIERS]))
    return jnp.stack(rows)


def state_fingerprint(state: Any) -> dict[str, list[int]]:
    """{leaf path: [two uint32 sums]} of `state`: equal for bit-identical states, different if any element differs."""
    values = np.asarray(jax.device_get(_fingerprints(state))).tolist()
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(state)]
    return dict(zip(paths, values))


class Checkpointer:
    """Saves every `every_steps` (and on demand), keeps the last `keep`, restores the newest intact one."""

    def __init__(self, workdir: pathlib.Path, every_steps: int, keep: int, read_only: bool = False, name: str = "checkpoints"):
        """Checkpoints live in `<workdir>/<name>`, damaged ones are moved to `<workdir>/damaged_<name>`.

        `read_only` (inference): never creates, cleans up, deletes or moves anything, so it is safe
        to use on the workdir of a run that is training and writing checkpoints right now."""
        self.read_only = read_only
        self.directory = (workdir / name).absolute()
        self.damaged_directory = (workdir / f"damaged_{name}").absolute()
        self.every_steps = every_steps
        self._saving: int | None = None  # the step whose asynchronous write may still be running
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=not read_only, cleanup_tmp_directories=not read_only, read_only=read_only
            ),
            item_names=("state", "meta"),
        )

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def path(self, step: int) -> pathlib.Path:
        return self.directory / str(step)

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Starts an asynchronous save of `state` and the JSON `meta` at `step` (device buffers are copied first).

        A failed write (disk full, permissions) raises GenjaxError naming the checkpoint;
        the checkpoints written before it stay intact.
        """
        meta = {**meta, "format_version": FORMAT_VERSION, "state_fingerprint": state_fingerprint(state)}
        self.wait()  # surfaces a failure of the previous asynchronous write under its own step
        self._saving = step
        with self._write_errors():
            self.manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                force=True,
            )

    def wait(self) -> None:
        """Blocks until the pending write is on disk; raises GenjaxError if it failed."""
        with self._write_errors():
            self.manager.wait_until_finished()
        self._saving = None

    @contextlib.contextmanager
    def _write_errors(self) -> Iterator[None]:
        """Turns a failed (possibly asynchronous) write into a GenjaxError naming the checkpoint."""
        try:
            yield
        except GenjaxError:
            raise
        except Exception as error:  # tensorstore/orbax raise many types for I/O failures
            path = self.path(self._saving) if self._saving is not None else self.directory
            # orbax's other write tasks failed the same way and asyncio logs each one's traceback: the entry point
            # sends those to <workdir>/library.log (genjax/cli.py); the one-line error below reports them all.
            raise GenjaxError(
                f"writing checkpoint {path} failed ({first_line(error)}); free disk space or fix the permissions "
                f"of {self.directory}, then rerun the same command: it resumes from the last complete checkpoint"
            ) from error

    def restore_latest(
        self, abstract_state: Any, check_meta: Callable[[dict[str, Any], pathlib.Path], None]
    ) -> tuple[int, Any, dict[str, Any]] | None:
        """(step, state, meta) of the newest intact checkpoint, or None when there is no checkpoint at all.

        `check_meta(meta, path)` runs before the state is read and raises GenjaxError for a
        checkpoint that belongs to another experiment or config (an error, not damage).
        A checkpoint whose meta or state fails to read, or whose state does not match
        the fingerprint written with it, is reported with its path and the previous one
        is tried; once an intact one is found the damaged newer ones are moved to
        `damaged_checkpoints/` (so the run can write those steps again). If every
        checkpoint is damaged nothing is moved and it is an error.
        """
        steps = self.all_steps()
        damaged: list[int] = []
        for step in reversed(steps):
            try:
                meta = self.restore_meta(step)
            except Exception as error:  # orbax raises many types for damaged files
                self.report_damage(step, error)
                damaged.append(step)
                continue
            if meta.get("format_version", 0) > FORMAT_VERSION:
                raise GenjaxError(
                    f"checkpoint {self.path(step)} has format version {meta['format_version']}, newer than this "
                    f"genjax ({FORMAT_VERSION}); upgrade genjax or use another --workdir"
                )
            check_meta(meta, self.path(step))
            try:
                state = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))["state"]
            except Exception as error:
                self.report_damage(step, error)
                damaged.append(step)
                continue
            mismatch = fingerprint_mismatch(meta, state)
            if mismatch:
                self.report_damage(step, mismatch)
                damaged.append(step)
                continue
            self.set_aside(damaged)
            return step, state, meta
        if steps:
            raise GenjaxError(
                f"every checkpoint in {self.directory} is damaged (steps {steps}); nothing was changed. Remove the "
                "damaged step directories to start over, or use a fresh --workdir"
            )
        return None

    def restore_meta(self, step: int) -> dict[str, Any]:
        """The JSON meta written with checkpoint `step`."""
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if not isinstance(meta, dict):
            raise ValueError(f"meta is a {type(meta).__name__}, not a JSON object")
        return dict(meta)

    def report_damage(self, step: int, reason: str | BaseException, consequence: str = "trying the previous one") -> None:
        """Warns on stderr that checkpoint `step` is damaged, why (an error: the first line of its root cause),
        and what the run does about it."""
        if isinstance(reason, BaseException):
            reason = first_line(root_cause(reason))
        print(f"warning: checkpoint {self.path(step)} is damaged ({reason}); {consequence}", file=sys.stderr, flush=True)

    def set_aside(self, steps: list[int]) -> None:
        """Moves the damaged `steps` to `damaged_checkpoints/<step>[.n]` (process 0) and forgets them (all)."""
        if not steps or self.read_only:
            return
        if jax.process_index() == 0:
            self.damaged_directory.mkdir(parents=True, exist_ok=True)
            for step in steps:
                target, suffix = self.damaged_directory / str(step), 1
                while target.exists():
                    target, suffix = self.damaged_directory / f"{step}.{suffix}", suffix + 1
                shutil.move(str(self.path(step)), str(target))
                print(f"warning: moved damaged checkpoint {self.path(step)} to {target}", file=sys.stderr, flush=True)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("genjax: damaged checkpoints set aside")
        self.manager.reload()

    def close(self) -> None:
        self.manager.close()


class BestCheckpoint:
    """The state of the evaluation with the best `metric` so far, in `<workdir>/best_checkpoints` (one kept).

    `mode` "min" keeps the lowest value (losses), "max" the highest (accuracies). The best value
    survives restarts: it is read back from the kept checkpoint's meta. Non-finite values never count.
    A kept checkpoint whose meta cannot be read is reported, moved to `damaged_best_checkpoints/`,
    and the ranking starts over.
    """

    def __init__(
        self, workdir: pathlib.Path, metric: str, mode: str, check_meta: Callable[[dict[str, Any], pathlib.Path], None]
    ):
        """`check_meta(meta, path)` raises GenjaxError when the kept checkpoint belongs to another experiment or
        config (as in `Checkpointer.restore_latest`)."""
        if mode not in ("min", "max"):
            raise GenjaxError(f"unknown best_mode '{mode}'; choose 'min' (lower is better, e.g. loss) or 'max'")
        self.metric, self.mode = metric, mode
        self.checkpointer = Checkpointer(workdir, every_steps=1, keep=1, name=BEST_CHECKPOINTS)
        try:
            self.value = self._kept_value(check_meta)
        except BaseException:
            self.close()
            raise

    def _kept_value(self, check_meta: Callable[[dict[str, Any], pathlib.Path], None]) -> float | None:
        """The best value of the kept checkpoint, None when there is none.

        GenjaxError when that checkpoint was ranked by another metric or mode: its value
        cannot be compared with this run's evaluations.
        """
        steps = self.checkpointer.all_steps()
        if not steps:
            return None
        path = self.checkpointer.path(steps[-1])
        try:
            meta = self.checkpointer.restore_meta(steps[-1])
        except Exception as error:  # orbax raises many types for damaged files
            self.checkpointer.report_damage(steps[-1], error, "ranking evaluations from scratch")
            self.checkpointer.set_aside(steps[-1:])
            return None
        check_meta(meta, path)
        kept = (meta.get("best_metric"), meta.get("best_mode", self.mode))  # best_mode: absent before it was saved
        if kept != (self.metric, self.mode):
            raise GenjaxError(
                f"best checkpoint {path} was kept for best_metric '{kept[0]}' (best_mode {kept[1]}), not '{self.metric}' "
                f"(best_mode {self.mode}); keep the original --config.best_metric and --config.best_mode, or move "
                f"{self.checkpointer.directory} away to rank from scratch"
            )
        return float(meta["best_value"])

    def forget_after(self, step: int) -> None:
        """Deletes the kept state when it is of a step after `step` and ranks from scratch: a run resumed from the
        checkpoint of `step` evaluates those steps again."""
        steps = self.checkpointer.all_steps()
        if steps and steps[-1] > step:
            if jax.process_index() == 0:
                shutil.rmtree(self.checkpointer.path(steps[-1]))
                print(f"continuing from step {step}: removed best checkpoint of step {steps[-1]}; ranking from scratch", flush=True)
            if jax.process_count() > 1:
                multihost_utils.sync_global_devices("genjax: newer best checkpoint removed")
            self.checkpointer.manager.reload()
            self.value = None

    def check_metric(self, metrics: dict[str, float]) -> None:
        """GenjaxError when the evaluation `metrics` do not include `metric`."""
        if self.metric not in metrics:
            raise GenjaxError(
                f"best_metric '{self.metric}' is not one of this experiment's evaluation metrics {sorted(metrics)}; "
                "choose one of them, or '' to keep no best checkpoint"
            )

    def offer(self, step: int, state: Any, metrics: dict[str, float], meta: dict[str, Any]) -> bool:
        """Saves `state` (asynchronously) if `metrics[metric]` beats the best so far; returns whether it did."""
        self.check_metric(metrics)
        value = float(metrics[self.metric])
        better = math.isfinite(value) and (
            self.value is None or (value < self.value if self.mode == "min" else value > self.value)
        )
        if better:
            self.checkpointer.save(step, state, {**meta, "best_metric": self.metric, "best_mode": self.mode, "best_value": value})
            self.value = value
        return better

    def close(self) -> None:
        self.checkpointer.wait()
        self.checkpointer.close()


def fingerprint_mismatch(meta: dict[str, Any], tree: Any, path: str = "") -> str:
    """'' when `tree` matches the fingerprint saved in `meta`, else which leaves differ.

    `tree` is the restored state, or with `path` (e.g. ".params['model']") the subtree of the
    state at that path, checked against the saved leaves under it.
    """
    if meta.get("format_version", 0) < 2:
        return ""  # format 1 predates fingerprints: restored unverified
    saved, restored = meta.get("state_fingerprint"), state_fingerprint(tree)
    if not isinstance(saved, dict):
        return "its meta holds no state_fingerprint"
    saved = {key[len(path):]: value for key, value in saved.items() if key.startswith(path)}
    differing = sorted(k for k in set(saved) | set(restored) if saved.get(k) != restored.get(k))
    if not differing:
        return ""
    return f"state differs from the fingerprint written with it in {len(differing)} leaves, e.g. {differing[0]}"


def abstract_with_shardings(state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `state` carrying the target `shardings` (what restore places arrays into)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
