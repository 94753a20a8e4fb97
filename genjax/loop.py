"""The one training loop: mesh, data, state, step, restore, train/evaluate/checkpoint, final report."""

from __future__ import annotations

import pathlib
import signal
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from genjax import config as config_lib
from genjax import sharding as sharding_lib
from genjax.checkpoint import Checkpointer, abstract_with_shardings
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
        probe = workdir / ".genjax_write_probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise GenjaxError(f"workdir '{workdir}' is not writable ({error.strerror}); choose another --workdir") from None


@jax.jit
def _accumulate(totals: dict, metrics: dict, step: jax.Array) -> dict:
    """Adds one step's metrics to the running sums; remembers the first step with a non-finite metric."""
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(metrics)]))
    first_bad = jnp.where((totals["first_bad"] < 0) & ~finite, step, totals["first_bad"])
    return {
        "sums": jax.tree.map(jnp.add, totals["sums"], metrics),
        "count": totals["count"] + 1,
        "first_bad": first_bad,
    }


def _empty_totals(metrics_shape: dict) -> dict:
    return {
        "sums": jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics_shape),
        "count": jnp.zeros((), jnp.int32),
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
    """(abstract state, state shardings) of `task` on `mesh`, without allocating any parameter."""
    abstract_state = jax.eval_shape(task.init_state, rng, example_batch)
    return abstract_state, sharding_lib.state_shardings(abstract_state, mesh)


def compile_steps(task: Task, mesh: Mesh, state_shardings: Any) -> tuple[Callable, Callable]:
    """The jitted (train_step, eval_step) every run and benchmark uses: state donated, shardings explicit."""
    data_sharding, replicated = sharding_lib.batch_sharding(mesh), sharding_lib.replicated(mesh)
    train_step = jax.jit(
        task.train_step,
        in_shardings=(state_shardings, data_sharding, replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
    )
    eval_step = jax.jit(task.eval_step, in_shardings=(state_shardings, data_sharding, replicated), out_shardings=replicated)
    return train_step, eval_step


def evaluate(experiment: Experiment, state: Any, eval_step, data_sharding, rng: jax.Array) -> dict[str, float]:
    """Means over the whole evaluation split of the task's `eval_step` sums."""
    totals = None
    for batch in experiment.eval_data():
        sums = eval_step(state, to_global(batch, data_sharding), rng)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = float(totals.pop("count"))
    return {k: float(v) / count for k, v in totals.items()}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, experiment: Experiment) -> dict[str, float]:
    """Trains `experiment` to `num_train_steps`, resuming from `<workdir>/checkpoints` if present.

    Returns the final evaluation metrics (also written to metrics.jsonl with split "test").
    """
    workdir = pathlib.Path(workdir)
    task, total_steps = experiment.task, experiment.num_train_steps
    is_main = jax.process_index() == 0

    # Workdir, config and mesh.
    _check_writable(workdir)
    mesh = sharding_lib.make_mesh(config.num_devices)
    sharding_lib.check_batch_size(config.batch_size, mesh)
    sharding_lib.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
    data_sharding, replicated = sharding_lib.batch_sharding(mesh), sharding_lib.replicated(mesh)
    init_rng, train_rng, eval_rng = jax.random.split(jax.random.key(config.seed), 3)

    # Model and optimizer state, born with their shardings.
    example_batch = to_global(experiment.train_data.batch_at(0), data_sharding)
    abstract_state, state_shardings = state_layout(task, mesh, init_rng, example_batch)
    signature = _state_signature(abstract_state)

    # Restore, or start fresh only from an empty checkpoint dir.
    checkpointer = Checkpointer(workdir, config.checkpoint_every, config.keep_checkpoints)
    restored = checkpointer.restore_latest(abstract_with_shardings(abstract_state, state_shardings))
    if restored is None:
        state = jax.jit(task.init_state, out_shardings=state_shardings)(init_rng, example_batch)
        data_index, last_saved = 0, None
    else:
        last_saved, state, meta = restored
        _check_compatible(meta, experiment.name, signature, checkpointer.path(last_saved))
        train_rng = jax.random.wrap_key_data(np.asarray(meta["train_rng"], np.uint32))
        data_index = meta["data_index"]
        if is_main:
            print(f"resumed from {checkpointer.path(last_saved)} (step {last_saved})", flush=True)
    if is_main:
        config_lib.save_config(config, workdir)

    # The compiled steps: state donated, shardings explicit.
    train_step, eval_step = compile_steps(task, mesh, state_shardings)
    metrics_shape = jax.eval_shape(task.train_step, abstract_state, example_batch, train_rng)[1]

    logger = MetricLogger(workdir)
    step = int(jax.device_get(state.step))

    def save(at_step: int) -> None:
        nonlocal last_saved
        meta = {
            "experiment": experiment.name,
            "data_index": data_index,
            "train_rng": np.asarray(jax.random.key_data(train_rng)).tolist(),
            "state_signature": signature,
        }
        checkpointer.save(at_step, state, meta)
        last_saved = at_step

    def fetch_window(totals: dict) -> dict[str, float]:
        """Host copy of the mean metrics since the last fetch; stops the run at a non-finite value."""
        totals = jax.device_get(totals)
        if totals["first_bad"] >= 0:
            bad = sorted(k for k, v in totals["sums"].items() if not np.all(np.isfinite(v)))
            good = f"last good checkpoint: {checkpointer.path(last_saved)}" if last_saved is not None else "no checkpoint was written"
            raise GenjaxError(
                f"non-finite {', '.join(bad)} at step {int(totals['first_bad']) + 1}; stopped without saving ({good}); "
                "lower the learning rate or enable gradient clipping (--config.optimizer.grad_clip_norm=1.0)"
            )
        return {k: float(v) / max(int(totals["count"]), 1) for k, v in totals["sums"].items()}

    stop = _StopRequest()
    eval_every = config.eval_every or getattr(experiment.train_data, "steps_per_epoch", total_steps)
    totals = _empty_totals(metrics_shape)
    window_start, window_step = time.perf_counter(), step
    batches = device_prefetch(experiment.train_data, data_index, data_sharding)
    try:
        while step < total_steps:
            batch = next(batches)
            state, metrics = train_step(state, batch, train_rng)
            totals = _accumulate(totals, metrics, jnp.int32(step))
            step += 1
            data_index += 1

            at_log = step % config.log_every == 0 or step == total_steps
            at_eval = step % eval_every == 0 or step == total_steps
            at_checkpoint = step % config.checkpoint_every == 0 or step == total_steps or stop.requested
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
                eval_metrics = evaluate(experiment, state, eval_step, data_sharding, eval_rng)
                eval_metrics.update(task.report(state, step, workdir, eval_rng, final=False))
                logger.write(step, "test", eval_metrics)
                if is_main:
                    print(f"step {step}  test " + "  ".join(f"{k} {v:.4f}" for k, v in eval_metrics.items()), flush=True)
            if stop.requested:
                checkpointer.wait()
                if is_main:
                    print(f"SIGTERM: saved {checkpointer.path(step)}; exiting", flush=True)
                return {}
        if last_saved != step:
            save(step)
        final = evaluate(experiment, state, eval_step, data_sharding, eval_rng)
        final.update(task.report(state, step, workdir, eval_rng, final=True))
        logger.write(step, "test", final)
        if is_main:
            print("final test " + "  ".join(f"{k} {v:.4f}" for k, v in final.items()), flush=True)
        return final
    finally:
        batches.close()
        stop.restore()
        checkpointer.wait()
        checkpointer.close()
        logger.close()
