"""The one training loop: mesh, data, state, step, restore, train/evaluate/checkpoint, final report."""

from __future__ import annotations

import pathlib
import signal
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from genjax import config as config_lib
from genjax import fused_threefry, host_memory
from genjax import sharding as sharding_lib
from genjax.checkpoint import BEST_CHECKPOINTS, BestCheckpoint, Checkpointer, abstract_with_shardings
from genjax.data.loader import device_prefetch, to_global
from genjax.errors import GenjaxError
from genjax.metrics_log import MetricLogger
from genjax.task import Experiment, Task
from jax.sharding import Mesh


def _state_signature(abstract_state: Any) -> dict[str, list[int]]:
    """{leaf path: shape} of the state: what a checkpoint must match to be restored into it."""
    leaves = jax.tree_util.tree_leaves_with_path(abstract_state)
    return {jax.tree_util.keystr(path): list(leaf.shape) for path, leaf in leaves}


def _check_compatible(meta: dict, name: str, signature: dict[str, list[int]], path: pathlib.Path) -> None:
    if meta.get("experiment") != name:
        raise GenjaxError(
            f"workdir checkpoint {path} was written by experiment '{meta.get('experiment')}', not '{name}'; "
            "use a fresh --workdir"
        )
    saved = meta.get("state_signature", {})
    for key in sorted(set(saved) | set(signature)):
        if saved.get(key) != signature.get(key):
            raise GenjaxError(
                f"checkpoint {path} does not fit this config: state leaf {key} has shape {saved.get(key)} there "
                f"but {signature.get(key)} here (changed model shape?); restore the original config or use a fresh --workdir"
            )


def _check_writable(workdir: pathlib.Path) -> None:
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".genjax_write_probe_{jax.process_index()}"  # one per process: no race between them
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise GenjaxError(f"workdir '{workdir}' is not writable ({error.strerror}); choose another --workdir") from None


def _all_finite(tree: Any) -> jax.Array:
    """True when no leaf of `tree` holds a NaN or an Inf."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(tree)]))


@jax.jit
def _accumulate(totals: dict, metrics: dict, step: jax.Array) -> dict:
    """Adds one step's metrics to the running sums if all are finite; else counts the step and flags the metrics.

    Remembers the first step with a non-finite metric (the NaN stop) and, per metric,
    whether it was non-finite (named in the error).
    """
    finite = _all_finite(metrics)
    return {
        "sums": jax.tree.map(lambda s, v: s + jnp.where(finite, v, 0), totals["sums"], metrics),
        "count": totals["count"] + finite,
        "nonfinite": jax.tree.map(lambda b, v: b | ~jnp.all(jnp.isfinite(v)), totals["nonfinite"], metrics),
        "skipped": totals["skipped"] + ~finite,
        "first_bad": jnp.where((totals["first_bad"] < 0) & ~finite, step, totals["first_bad"]),
    }


def _empty_totals(metrics_shape: dict) -> dict:
    return {
        "sums": jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics_shape),
        "count": jnp.zeros((), jnp.int32),
        "nonfinite": jax.tree.map(lambda s: jnp.zeros((), bool), metrics_shape),
        "skipped": jnp.zeros((), jnp.int32),
        "first_bad": jnp.full((), -1, jnp.int32),
    }


class _StopRequest:
    """Turns SIGTERM (sent by clusters before preemption) into a flag the loop checks between steps."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def state_layout(task: Task, mesh: Mesh, rng: jax.Array, example_batch: dict[str, jax.Array]) -> tuple[Any, Any]:
    """(abstract state, state shardings) of `task` on `mesh`, without allocating any parameter.

    `init_state` may return Flax logical-partitioning boxes: they decide the shardings
    and are removed from the state (see genjax/sharding.py).
    """
    boxed_state = jax.eval_shape(task.init_state, rng, example_batch)
    return nn.unbox(boxed_state), sharding_lib.state_shardings(boxed_state, mesh)


def init_state(task: Task, state_shardings: Any, rng: jax.Array, example_batch: dict[str, jax.Array]) -> Any:
    """A fresh state born sharded: `task.init_state` jitted with the layout's out_shardings, boxes removed."""
    return jax.jit(sharding_lib.unboxed(task.init_state), out_shardings=state_shardings)(rng, example_batch)


def skipping_nonfinite(train_step: Callable) -> Callable:
    """`train_step` that keeps the old state, advancing only `step`, when any of its metrics is NaN or Inf.

    The metrics hold the loss and every network's grad_norm (see `state.apply_gradients`),
    so a non-finite loss or gradient skips the whole update, for every family alike.
    """

    def step(state: Any, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[Any, dict]:
        new_state, metrics = train_step(state, batch, rng)
        keep = _all_finite(metrics)
        kept = jax.tree.map(lambda new, old: jnp.where(keep, new, old), new_state, state)
        return kept.replace(step=new_state.step), metrics

    return step


def compile_steps(task: Task, mesh: Mesh, state_shardings: Any, skip_nonfinite: bool = False) -> tuple[Callable, Callable]:
    """The jitted (train_step, eval_step) every run and benchmark uses: state donated, shardings explicit.

    With `skip_nonfinite` a step with a non-finite metric leaves the state unchanged (see `skipping_nonfinite`).
    On CPU, random draws are hashed by straight-line Threefry code that XLA fuses (genjax/fused_threefry.py),
    and freed host memory stays in the process for the next step's buffers (genjax/host_memory.py).
    """
    fused_threefry.install()
    if mesh.devices.flat[0].platform == "cpu":
        host_memory.keep_freed_memory()
    data_sharding, replicated = sharding_lib.batch_sharding(mesh), sharding_lib.replicated(mesh)
    train_step = jax.jit(
        skipping_nonfinite(task.train_step) if skip_nonfinite else task.train_step,
        in_shardings=(state_shardings, data_sharding, replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
    )
    eval_step = jax.jit(task.eval_step, in_shardings=(state_shardings, data_sharding, replicated), out_shardings=replicated)
    return train_step, eval_step


def evaluate(
    experiment: Experiment, state: Any, eval_step, data_sharding, rng: jax.Array
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(means over the whole evaluation split of the task's `eval_step` sums, its per-example `rows` over the
    split: {name: [N, ...]}, real rows only, in the split's order; {} when `eval_step` returns none)."""
    totals, rows = None, []
    for batch in experiment.eval_data():
        sums = dict(eval_step(state, to_global(batch, data_sharding), rng))
        if "rows" in sums:
            rows.append(sums.pop("rows"))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = float(totals.pop("count"))
    return {k: float(v) / count for k, v in totals.items()}, real_rows(jax.device_get(rows))


def real_rows(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-batch rows {name: [B, ...], "mask": [B]} -> {name: [N, ...]}: the rows where `mask` is True, concatenated."""
    if not batches:
        return {}
    if "mask" not in batches[0]:
        raise GenjaxError(f"eval_step's rows {sorted(batches[0])} lack 'mask'; add the batch's mask: rows['mask'] = batch['mask']")
    mask = np.concatenate([rows["mask"] for rows in batches]).astype(bool)
    return {name: np.concatenate([rows[name] for rows in batches])[mask] for name in batches[0] if name != "mask"}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, experiment: Experiment) -> dict[str, float]:
    """Trains `experiment` to `num_train_steps`, resuming from `<workdir>/checkpoints` if present.

    Returns the final evaluation metrics (also written to metrics.jsonl with split "test").
    """
    workdir = pathlib.Path(workdir)
    task, total_steps = experiment.task, experiment.num_train_steps
    is_main = jax.process_index() == 0

    # Workdir, config and mesh.
    _check_writable(workdir)
    mesh = sharding_lib.make_mesh(config.num_devices, config.parallelism, config.fsdp_devices)
    sharding_lib.check_batch_size(config.batch_size, mesh)
    sharding_lib.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
    data_sharding = sharding_lib.batch_sharding(mesh)
    init_rng, train_rng, eval_rng = jax.random.split(jax.random.key(config.seed), 3)

    # Model and optimizer state, born with their shardings.
    example_batch = to_global(experiment.train_data.batch_at(0), data_sharding)
    abstract_state, state_shardings = state_layout(task, mesh, init_rng, example_batch)
    signature = _state_signature(abstract_state)

    # Restore, or start fresh only from an empty checkpoint dir.
    checkpointer = Checkpointer(workdir, config.checkpoint_every, config.keep_checkpoints)
    restored = checkpointer.restore_latest(
        abstract_with_shardings(abstract_state, state_shardings),
        check_meta=lambda meta, path: _check_compatible(meta, experiment.name, signature, path),
    )
    if restored is None:
        state = init_state(task, state_shardings, init_rng, example_batch)
        data_index, last_saved = 0, None
    else:
        last_saved, state, meta = restored
        train_rng = jax.random.wrap_key_data(np.asarray(meta["train_rng"], np.uint32))
        data_index = meta["data_index"]
        if is_main:
            print(f"resumed from {checkpointer.path(last_saved)} (step {last_saved})", flush=True)
    if is_main:
        config_lib.save_config(config, workdir)

    # The compiled steps: state donated, shardings explicit.
    train_step, eval_step = compile_steps(task, mesh, state_shardings, config.skip_nonfinite)
    metrics_shape = jax.eval_shape(task.train_step, abstract_state, example_batch, train_rng)[1]

    logger = MetricLogger(workdir)
    step = int(jax.device_get(state.step))

    def checkpoint_meta() -> dict[str, Any]:
        return {
            "experiment": experiment.name,
            "data_index": data_index,
            "train_rng": np.asarray(jax.random.key_data(train_rng)).tolist(),
            "state_signature": signature,
        }

    def save(at_step: int) -> None:
        nonlocal last_saved
        checkpointer.save(at_step, state, checkpoint_meta())
        last_saved = at_step

    best: BestCheckpoint | None = None  # opened inside the try below, so that it is always closed

    def keep_if_best(eval_metrics: dict[str, float]) -> None:
        """Saves the state as the best one when `config.best_metric` improved (see `BestCheckpoint`)."""
        if best is None:
            return
        if config.best_metric not in eval_metrics and last_saved != step:
            save(step)  # the error that follows must not cost the steps since the last checkpoint
            checkpointer.wait()
        if best.offer(step, state, eval_metrics, checkpoint_meta()) and is_main:
            print(f"best {config.best_metric} so far: saved {best.checkpointer.path(step)}", flush=True)

    def fetch_window(totals: dict) -> dict[str, float]:
        """Host copy of the mean metrics over the finite steps since the last fetch.

        A non-finite metric stops the run, unless `skip_nonfinite`: then the skipped
        steps are counted in `skipped_updates`, and only a window of nothing but
        skipped steps stops it.
        """
        totals = jax.device_get(totals)
        count, skipped = int(totals["count"]), int(totals["skipped"])
        if skipped and (not config.skip_nonfinite or count == 0):
            bad = sorted(k for k, v in totals["nonfinite"].items() if v)
            good = f"last good checkpoint: {checkpointer.path(last_saved)}" if last_saved is not None else "no checkpoint was written"
            every = f" (all {skipped} updates since the last log were skipped)" if config.skip_nonfinite else ""
            raise GenjaxError(
                f"non-finite {', '.join(bad)} at step {int(totals['first_bad'])}{every}; stopped without saving ({good}); "
                "lower the learning rate or enable gradient clipping (--config.optimizer.grad_clip_norm=1.0)"
            )
        means = {k: float(v) / count for k, v in totals["sums"].items()}
        return {**means, "skipped_updates": skipped} if config.skip_nonfinite else means

    stop = _StopRequest()
    eval_every = config.eval_every or getattr(experiment.train_data, "steps_per_epoch", total_steps)
    totals = _empty_totals(metrics_shape)
    window_start, window_step = time.perf_counter(), step
    batches = device_prefetch(experiment.train_data, data_index, data_sharding)
    try:
        if config.best_metric:
            best = BestCheckpoint(
                workdir, config.best_metric, config.best_mode, lambda meta, path: _check_compatible(meta, experiment.name, signature, path)
            )
        while step < total_steps:
            batch = next(batches)
            state, metrics = train_step(state, batch, train_rng)
            totals = _accumulate(totals, metrics, state.step)  # the step number, already on device
            step += 1
            data_index += 1

            at_log = step % config.log_every == 0 or step == total_steps
            at_eval = step % eval_every == 0 or step == total_steps
            stopping = stop.requested  # read once: a SIGTERM arriving later in this step is handled at the next
            at_checkpoint = step % config.checkpoint_every == 0 or step == total_steps or stopping
            if at_log or at_eval or at_checkpoint:
                train_metrics = fetch_window(totals)
                totals = _empty_totals(metrics_shape)
                elapsed = time.perf_counter() - window_start
                rate = (step - window_step) / max(elapsed, 1e-9)
                window_start, window_step = time.perf_counter(), step
                logger.write(step, "train", {**train_metrics, "steps_per_s": rate})
                if is_main:
                    eta = (total_steps - step) / max(rate, 1e-9)
                    print(f"step {step}/{total_steps}  loss {train_metrics['loss']:.4f}  "
                          f"{rate:.1f} steps/s  ETA {eta / 60:.1f} min", flush=True)
            if at_checkpoint:
                save(step)
            if at_eval and step != total_steps:
                eval_metrics, rows = evaluate(experiment, state, eval_step, data_sharding, eval_rng)
                eval_metrics.update(task.report(sharding_lib.gathered(state, mesh), step, workdir, eval_rng, final=False, rows=rows))
                logger.write(step, "test", eval_metrics)
                if is_main:
                    print(f"step {step}  test " + "  ".join(f"{k} {v:.4f}" for k, v in eval_metrics.items()), flush=True)
                keep_if_best(eval_metrics)
            if stopping:
                checkpointer.wait()
                if is_main:
                    print(f"SIGTERM: saved {checkpointer.path(step)}; exiting", flush=True)
                return {}
        if last_saved != step:
            save(step)
        final, rows = evaluate(experiment, state, eval_step, data_sharding, eval_rng)
        final.update(task.report(sharding_lib.gathered(state, mesh), step, workdir, eval_rng, final=True, rows=rows))
        logger.write(step, "test", final)
        if is_main:
            print("final test " + "  ".join(f"{k} {v:.4f}" for k, v in final.items()), flush=True)
        keep_if_best(final)
        return final
    finally:
        batches.close()
        stop.restore()
        checkpointer.wait()
        checkpointer.close()
        if best is not None:
            best.close()
        logger.close()


def restore_trained_state(
    workdir: str | pathlib.Path, experiment_name: str, task: Task, example_batch: dict[str, Any], best: bool = False
) -> Any:
    """The newest intact checkpoint's state in `<workdir>` on one device, for inference (sampling, prediction).

    With `best`, the state kept by `config.best_metric` (`<workdir>/best_checkpoints`) instead.
    `example_batch` (host arrays) fixes the input shapes as in training; GenjaxError when
    the workdir holds no checkpoint or one of another experiment or config.
    """
    workdir = pathlib.Path(workdir)
    name = BEST_CHECKPOINTS if best else "checkpoints"
    how = "train with --config.best_metric=METRIC to keep one" if best else "train first with this --workdir"
    if not (workdir / name).is_dir():
        raise GenjaxError(f"no {name} in workdir '{workdir}'; {how}")
    mesh = sharding_lib.make_mesh(1)
    abstract_state, state_shardings = state_layout(task, mesh, jax.random.key(0), example_batch)
    signature = _state_signature(abstract_state)
    checkpointer = Checkpointer(workdir, every_steps=1, keep=1_000_000, read_only=True, name=name)
    try:
        restored = checkpointer.restore_latest(
            abstract_with_shardings(abstract_state, state_shardings),
            check_meta=lambda meta, path: _check_compatible(meta, experiment_name, signature, path),
        )
    finally:
        checkpointer.close()
    if restored is None:
        raise GenjaxError(f"no {name} in workdir '{workdir}'; {how}")
    return restored[1]
