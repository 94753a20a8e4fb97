"""The one training loop: mesh, data, state, step, restore, train/evaluate/checkpoint, final report."""

from __future__ import annotations

import contextlib
import json
import pathlib
import signal
import threading
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from genjax import config as config_lib
from genjax import device_memory, metrics_log, progress
from genjax import sharding as sharding_lib
from genjax import workdir as workdir_lib
from genjax.checkpoint import BEST_CHECKPOINTS, BestCheckpoint, Checkpointer, abstract_with_shardings
from genjax.data.loader import device_prefetch, to_global
from genjax.errors import GenjaxError
from genjax.metrics_log import MetricLogger
from genjax.task import TEST, VALIDATION, EvalSums, Experiment, Task, check_loop_config
from jax.sharding import Mesh


def _state_signature(abstract_state: Any) -> dict[str, list[int]]:
    """{leaf path: shape} of the state: what a checkpoint must match to be restored into it."""
    leaves = jax.tree_util.tree_leaves_with_path(abstract_state)
    return {jax.tree_util.keystr(path): list(leaf.shape) for path, leaf in leaves}


def _run_identity(config: ml_collections.ConfigDict, experiment: Experiment, abstract_state: Any) -> dict[str, Any]:
    """What a checkpoint records of the run that wrote it, and a resumed run must match: the experiment, its data
    (dataset and split sizes), the model config and the state's leaf shapes (as JSON gives them back)."""
    model = config_lib.flatten(config.model) if "model" in config else {}
    identity = {"experiment": experiment.name, "data": experiment.data_signature, "model": model,
                "state_signature": _state_signature(abstract_state)}
    return json.loads(json.dumps(identity, default=str))


def _differences(saved: dict, here: dict) -> list[str]:
    return [f"{key}: {saved.get(key)!r} there, {here.get(key)!r} here" for key in sorted(set(saved) | set(here)) if saved.get(key) != here.get(key)]


def _check_compatible(meta: dict, identity: dict[str, Any], path: pathlib.Path) -> None:
    """GenjaxError when checkpoint `path` (its `meta`) was written by another experiment, dataset or model than
    `identity` (`_run_identity`) describes. Parts missing from either side (older checkpoints, inference) are skipped."""
    if meta.get("experiment") != identity["experiment"]:
        raise GenjaxError(
            f"workdir checkpoint {path} was written by experiment '{meta.get('experiment')}', not '{identity['experiment']}'; "
            "use a fresh --workdir"
        )
    for part, what in (("data", "on other data"), ("model", "with another model config")):
        if part in meta and part in identity and meta[part] != identity[part]:
            changed = _differences(meta[part], identity[part])
            raise GenjaxError(
                f"checkpoint {path} was trained {what} ({'; '.join(changed[:3])}); resume with the original "
                "--config values, or use a fresh --workdir"
            )
    saved, signature = meta.get("state_signature", {}), identity["state_signature"]
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
def accumulate_metrics(totals: dict, metrics: dict, step: jax.Array) -> dict:
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


def empty_totals(metrics_shape: dict) -> dict:
    return {
        "sums": jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics_shape),
        "count": jnp.zeros((), jnp.int32),
        "nonfinite": jax.tree.map(lambda s: jnp.zeros((), bool), metrics_shape),
        "skipped": jnp.zeros((), jnp.int32),
        "first_bad": jnp.full((), -1, jnp.int32),
    }


class _StopRequest:
    """Turns SIGTERM (sent by clusters before preemption) and Ctrl-C (SIGINT) into a flag the loop checks between
    steps: the step finishes and a checkpoint is written. A second Ctrl-C stops at once (KeyboardInterrupt); the
    checkpoints already complete stay intact, since each is written atomically.

    Signal handlers can only be set from the main thread: elsewhere (a loop run in a worker thread) none is
    set and the process's own handling of the signals stays as it was.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: str | None = None  # the name of the first stop signal
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._handle) for number in self.SIGNALS}

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = self.received or signal.Signals(signum).name

    def restore(self) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)


def state_layout(task: Task, mesh: Mesh, rng: jax.Array, example_batch: dict[str, jax.Array]) -> tuple[Any, Any]:
    """(abstract state, state shardings) of `task` on `mesh`, without allocating any parameter.

    `init_state` may return Flax logical-partitioning boxes: they decide the shardings
    and are removed from the state (see genjax/sharding.py).
    """
    boxed_state = jax.eval_shape(task.init_state, *init_arguments(task, rng, example_batch))
    return nn.unbox(boxed_state), sharding_lib.state_shardings(boxed_state, mesh)


def init_arguments(task: Task, rng: jax.Array, example_batch: dict[str, jax.Array]) -> tuple:
    """The arguments of `task.init_state`: its starting values, when it has some, are one (see `Task.initial_params`)."""
    return (rng, example_batch) if task.initial_params is None else (rng, example_batch, task.initial_params)


def init_state(task: Task, state_shardings: Any, rng: jax.Array, example_batch: dict[str, jax.Array]) -> Any:
    """A fresh state born sharded: `task.init_state` jitted with the layout's out_shardings, boxes removed."""
    init = jax.jit(sharding_lib.unboxed(task.init_state), out_shardings=state_shardings)
    return init(*init_arguments(task, rng, example_batch))


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
    Changes nothing in the process (the CPU tunings are the entry point's switch: genjax/cpu_tuning.py).
    """
    data_sharding, replicated = sharding_lib.batch_sharding(mesh), sharding_lib.replicated(mesh)
    train_step = jax.jit(
        skipping_nonfinite(task.train_step) if skip_nonfinite else task.train_step,
        in_shardings=(state_shardings, data_sharding, replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
    )
    eval_step = jax.jit(_rows_with_mask(task.eval_step), in_shardings=(state_shardings, data_sharding, replicated), out_shardings=replicated)
    return train_step, eval_step


def _rows_with_mask(eval_step: Callable) -> Callable:
    """`eval_step` whose `EvalSums.rows`, when it has any, also hold the batch's `mask` [B] (see `real_rows`)."""

    def step(state: Any, batch: dict[str, jax.Array], rng: jax.Array) -> EvalSums:
        out = eval_step(state, batch, rng)
        if not isinstance(out, EvalSums):
            raise GenjaxError(f"eval_step returned a {type(out).__name__}, not an EvalSums; return genjax.task.EvalSums(sums, count, rows)")
        return out.replace(rows={**out.rows, "mask": batch["mask"]}) if out.rows else out

    return step


def evaluate(
    experiment: Experiment, split: str, state: Any, eval_step, data_sharding, rng: jax.Array
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(means over the whole held-out `split` of the `EvalSums.sums` of `eval_step` (compiled by `compile_steps`),
    its per-example `rows` over the split: {name: [N, ...]}, real rows only, in the split's order; {} when
    `eval_step` returns none). A long evaluation prints its progress (genjax/progress.py)."""
    totals, rows = None, []
    for batch in progress.track(experiment.eval_data[split](), f"evaluating {split}"):
        out = eval_step(state, to_global(batch, data_sharding), rng)
        if out.rows:
            rows.append(out.rows)
        sums = EvalSums(out.sums, out.count)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    return {k: float(v) / float(totals.count) for k, v in totals.sums.items()}, real_rows(jax.device_get(rows))


def real_rows(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-batch rows {name: [B, ...], "mask": [B]} -> {name: [N, ...]}: the rows where `mask` is True, concatenated."""
    if not batches:
        return {}
    mask = np.concatenate([rows["mask"] for rows in batches]).astype(bool)
    return {name: np.concatenate([rows[name] for rows in batches])[mask] for name in batches[0] if name != "mask"}


def _check_best_metric(config: ml_collections.ConfigDict, experiment: Experiment, abstract_state: Any, eval_batch: dict, rng: jax.Array) -> None:
    """GenjaxError when `config.best_metric` is not a validation metric of the task (test metrics never choose);
    `eval_batch` is a validation batch."""
    if not config.best_metric:
        return
    sums = jax.eval_shape(experiment.task.eval_step, abstract_state, eval_batch, rng).sums
    names = sorted(set(sums) | set(getattr(experiment.task, "report_metrics", ())))
    if config.best_metric not in names:
        raise GenjaxError(
            f"best_metric '{config.best_metric}' is not one of this experiment's validation metrics {names}; "
            "choose one of them, or '' to keep no best checkpoint (the test split is never used to choose)"
        )


def _rewind_workdir(workdir: pathlib.Path, resumed: int | None, had_checkpoints: bool) -> None:
    """Brings metrics.jsonl, TensorBoard and the sample files back to the step the run continues from (process 0).

    A logged run whose checkpoints/ directory is gone (`had_checkpoints` False: every run makes it before its
    first step) had it removed: that is refused rather than starting over into the same log. A run killed before
    its first complete checkpoint starts again from step 0 with its log rewound.
    """
    step = resumed or 0
    if not had_checkpoints:
        logged = max((row["step"] for row in metrics_log.read_metrics(workdir)), default=0)
        if logged > 0:
            raise GenjaxError(
                f"workdir '{workdir}' has metrics up to step {logged} but no checkpoints/ directory (removed?); "
                f"use a fresh --workdir, or delete {workdir / metrics_log.METRICS_FILE} to train this one from step 0"
            )
    dropped = metrics_log.rewind(workdir, step)
    retired = workdir_lib.retire_after(workdir, step)
    if dropped or retired:
        print(f"continuing from step {step}: dropped {dropped} metric rows and {len(retired)} sample files of later steps", flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, experiment: Experiment) -> dict[str, float]:
    """Trains `experiment` to `num_train_steps`, resuming from `<workdir>/checkpoints` if present.

    Evaluates the validation split periodically (`eval_every`) and at the last step, and keeps the best state by
    `best_metric` on it; evaluates the test split once, at the end, on the final state. Returns the test metrics
    (logged with split "test"). One run at a time per workdir: see `workdir.lock`.
    """
    workdir = workdir_lib.check_path(workdir)
    check_loop_config(config)
    is_main = jax.process_index() == 0
    with workdir_lib.lock(workdir) if is_main else contextlib.nullcontext():
        _check_writable(workdir)
        return _train_locked(config, workdir, experiment)


def trainer(build: Callable[[ml_collections.ConfigDict], Experiment]) -> Callable[[ml_collections.ConfigDict, str | pathlib.Path], dict[str, float]]:
    """`train_and_evaluate(config, workdir)` of an experiment whose `build(config)` is all it needs."""
    return lambda config, workdir: train_and_evaluate(config, workdir, build(config))


def _train_locked(config: ml_collections.ConfigDict, workdir: pathlib.Path, experiment: Experiment) -> dict[str, float]:
    """The run's phases, top to bottom: set-up, restore (or start), the step loop, the end (test once)."""
    run = _Run(config, workdir, experiment)
    try:
        run.restore_or_start()
        if run.step_loop():
            return {}  # stopped by a signal, its checkpoint written
        return run.finish()
    finally:
        run.close()


class _Run:
    """One training run. Set-up (`__init__`) builds what every phase reads; `state`, `step`, `data_index`,
    `train_rng` and `last_saved` are the run's position, which `restore_or_start` sets and `step_loop` moves."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: pathlib.Path, experiment: Experiment) -> None:
        """Set-up: mesh, keys, the state's layout (no parameter allocated), the checks that need only shapes (the
        compiled train and eval steps' memory included), the checkpointer and the compiled steps (state donated,
        shardings explicit)."""
        self.config, self.workdir, self.experiment, self.task = config, workdir, experiment, experiment.task
        self.is_main = jax.process_index() == 0
        self.mesh = sharding_lib.make_mesh(config.num_devices, config.mesh)
        sharding_lib.check_batch_size(config.batch_size, self.mesh)
        sharding_lib.check_batch_size(config.eval_batch_size, self.mesh, "eval_batch_size")
        self.data_sharding = sharding_lib.batch_sharding(self.mesh)
        self.init_rng, self.train_rng, self.eval_rng = jax.random.split(jax.random.key(config.seed), 3)

        self.example_batch = to_global(experiment.train_data.batch_at(0), self.data_sharding)
        self.example_eval_batch = to_global(next(iter(experiment.eval_data[VALIDATION]())), self.data_sharding)
        self.abstract_state, self.state_shardings = state_layout(self.task, self.mesh, self.init_rng, self.example_batch)
        _check_best_metric(config, experiment, self.abstract_state, self.example_eval_batch, self.eval_rng)
        self.identity = _run_identity(config, experiment, self.abstract_state)
        self.train_step, self.eval_step = compile_steps(self.task, self.mesh, self.state_shardings, config.skip_nonfinite)
        self.metrics_shape = self._compile_within_memory()

        self.had_checkpoints = (workdir / "checkpoints").is_dir()  # read before the checkpointer makes it
        self.checkpointer = Checkpointer(workdir, config.checkpoint_every, config.keep_checkpoints)
        self.logger: MetricLogger | None = None  # opened once the workdir is rewound to the restored step
        self.best: BestCheckpoint | None = None
        self.state, self.step, self.data_index, self.last_saved = None, 0, 0, None

    def _compile_within_memory(self) -> dict:
        """Compiles the train and eval steps from abstract shapes (their first calls reuse these compilations);
        GenjaxError when either needs more memory per device than a device has. Returns the train metrics' shapes."""
        limit = device_memory.device_limit(self.mesh)
        state = abstract_with_shardings(self.abstract_state, self.state_shardings)
        train = self.train_step.lower(state, self.example_batch, self.train_rng).compile()
        device_memory.check_fits(device_memory.step_memory(train)["memory_predicted_bytes"], limit,
                                 f"batch_size={self.config.batch_size}", device_memory.train_fixes())
        evaluation = self.eval_step.lower(state, self.example_eval_batch, self.eval_rng).compile()
        device_memory.check_fits(device_memory.step_memory(evaluation)["memory_predicted_bytes"], limit,
                                 f"the eval step at eval_batch_size={self.config.eval_batch_size}",
                                 f"lower --config.eval_batch_size, or {device_memory.SPLIT_STATE}")
        return train.out_info[1]

    def restore_or_start(self) -> None:
        """Restore: the newest intact checkpoint, else a fresh state (only into an empty checkpoint dir); the
        workdir's log and files rewound to that step, the config saved, then the logs opened."""
        restored = self.checkpointer.restore_latest(
            abstract_with_shardings(self.abstract_state, self.state_shardings), check_meta=self._check_compatible
        )
        if restored is None:
            self.state = init_state(self.task, self.state_shardings, self.init_rng, self.example_batch)
        else:
            self.last_saved, self.state, meta = restored
            self.train_rng = jax.random.wrap_key_data(np.asarray(meta["train_rng"], np.uint32))
            self.data_index = meta["data_index"]
            if self.is_main:
                print(f"resumed from {self.checkpointer.path(self.last_saved)} (step {self.last_saved})", flush=True)
        self.step = int(jax.device_get(self.state.step))
        if self.is_main:
            _rewind_workdir(self.workdir, self.last_saved, self.had_checkpoints)
            workdir_lib.save_config(self.config, self.workdir, self.experiment.name, self.last_saved)
            for name, write in self.experiment.workdir_files.items():
                if not (self.workdir / name).exists():
                    write(self.workdir / name)
        self.logger = MetricLogger(self.workdir)
        if self.config.best_metric:
            self.best = BestCheckpoint(self.workdir, self.config.best_metric, self.config.best_mode, self._check_compatible)
            self.best.forget_after(self.last_saved or 0)

    def step_loop(self) -> str | None:
        """The step loop, to `num_train_steps`: at each boundary the train log, then the validation evaluation,
        then the checkpoint, so that a checkpoint of step S implies every metric of steps <= S is logged.
        Returns the name of the signal (SIGTERM, SIGINT) that stopped it early, after its checkpoint; else None."""
        config, total_steps = self.config, self.experiment.num_train_steps
        eval_every = config.eval_every or getattr(self.experiment.train_data, "steps_per_epoch", total_steps)
        totals = empty_totals(self.metrics_shape)
        window_start, window_step = time.perf_counter(), self.step
        stop = _StopRequest()
        batches = device_prefetch(self.experiment.train_data, self.data_index, self.data_sharding)
        try:
            while self.step < total_steps:
                self.state, metrics = self.train_step(self.state, next(batches), self.train_rng)
                totals = accumulate_metrics(totals, metrics, self.state.step)  # the step number, already on device
                self.step += 1
                self.data_index += 1

                step = self.step
                at_log = step % config.log_every == 0 or step == total_steps
                at_eval = step % eval_every == 0 or step == total_steps
                at_sample = step % config.sample_every == 0 if config.sample_every else at_eval
                stopping = stop.received  # read once: a signal arriving later in this step is handled at the next
                at_checkpoint = step % config.checkpoint_every == 0 or step == total_steps or stopping
                if at_log or at_eval or at_checkpoint:
                    rate = (step - window_step) / max(time.perf_counter() - window_start, 1e-9)
                    self._log_train(self._fetch_window(totals), rate)
                    totals = empty_totals(self.metrics_shape)
                if at_sample:
                    self.task.write_samples(sharding_lib.gathered(self.state, self.mesh), step, self.workdir, self.eval_rng)
                if at_eval:
                    self._offer_best(self.evaluate_and_log(VALIDATION))
                if at_checkpoint:
                    self._save()
                if at_log or at_eval or at_sample or at_checkpoint:
                    window_start, window_step = time.perf_counter(), step  # steps/s counts training time only
                if stopping:
                    self.checkpointer.wait()
                    if self.is_main:
                        print(f"{stopping}: saved {self.checkpointer.path(step)}; exiting (rerun the same command to resume)", flush=True)
                    return stopping
            return None
        finally:
            batches.close()
            stop.restore()

    def evaluate_and_log(self, split: str) -> dict[str, float]:
        """Evaluation: `split` on the current state, with the task's report; logged and printed."""
        started = time.perf_counter()
        metrics, rows = evaluate(self.experiment, split, self.state, self.eval_step, self.data_sharding, self.eval_rng)
        gathered = sharding_lib.gathered(self.state, self.mesh)
        metrics.update(self.task.report(gathered, self.step, self.workdir, self.eval_rng, split, rows))
        self.logger.write(self.step, split, metrics)
        if self.is_main:
            print(f"step {self.step}  {split} " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                  + f"  ({time.perf_counter() - started:.1f} s)", flush=True)
        return metrics

    def finish(self) -> dict[str, float]:
        """The end: the final state checkpointed (already, unless restored at its last step), then the test split's
        metrics, evaluated and logged once (a rerun of a finished run returns the logged ones)."""
        if self.last_saved != self.step:
            self._save()
        logged = [row for row in metrics_log.read_metrics(self.workdir, TEST) if row["step"] == self.step]
        if not logged:
            return self.evaluate_and_log(TEST)
        if self.is_main:
            print(f"already trained to step {self.step}; its test metrics are in {self.workdir / metrics_log.METRICS_FILE}", flush=True)
        return {k: v for k, v in logged[-1].items() if k not in ("step", "split")}

    def close(self) -> None:
        """Waits for the checkpoint being written, then closes the checkpointers and the log."""
        self.checkpointer.wait()
        self.checkpointer.close()
        for opened in (self.best, self.logger):
            if opened is not None:
                opened.close()

    def _check_compatible(self, meta: dict, path: pathlib.Path) -> None:
        _check_compatible(meta, self.identity, path)

    def _checkpoint_meta(self) -> dict[str, Any]:
        return {**self.identity, "data_index": self.data_index, "train_rng": np.asarray(jax.random.key_data(self.train_rng)).tolist()}

    def _save(self) -> None:
        self.checkpointer.save(self.step, self.state, self._checkpoint_meta())
        self.last_saved = self.step

    def _offer_best(self, validation: dict[str, float]) -> None:
        if self.best is not None and self.best.offer(self.step, self.state, validation, self._checkpoint_meta()) and self.is_main:
            print(f"best {self.config.best_metric} so far: saved {self.best.checkpointer.path(self.step)}", flush=True)

    def _log_train(self, train_metrics: dict[str, float], rate: float) -> None:
        self.logger.write(self.step, "train", {**train_metrics, "steps_per_s": rate})
        if self.is_main:
            eta = (self.experiment.num_train_steps - self.step) / max(rate, 1e-9)
            print(f"step {self.step}/{self.experiment.num_train_steps}  loss {train_metrics['loss']:.4f}  "
                  f"{rate:.1f} steps/s  ETA {eta / 60:.1f} min", flush=True)

    def _fetch_window(self, totals: dict) -> dict[str, float]:
        """Host copy of the mean metrics over the finite steps since the last fetch.

        A non-finite metric stops the run, unless `skip_nonfinite`: then the skipped
        steps are counted in `skipped_updates`, and only a window of nothing but
        skipped steps stops it.
        """
        totals = jax.device_get(totals)
        count, skipped = int(totals["count"]), int(totals["skipped"])
        skip_nonfinite = self.config.skip_nonfinite
        if skipped and (not skip_nonfinite or count == 0):
            bad = sorted(k for k, v in totals["nonfinite"].items() if v)
            good = f"last good checkpoint: {self.checkpointer.path(self.last_saved)}" if self.last_saved is not None else "no checkpoint was written"
            every = f" (all {skipped} updates since the last log were skipped)" if skip_nonfinite else ""
            raise GenjaxError(
                f"non-finite {', '.join(bad)} at step {int(totals['first_bad'])}{every}; stopped without saving ({good}); "
                "lower the learning rate or enable gradient clipping (--config.optimizer.grad_clip_norm=1.0)"
            )
        means = {k: float(v) / count for k, v in totals["sums"].items()}
        return {**means, "skipped_updates": skipped} if skip_nonfinite else means


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
    identity = {"experiment": experiment_name, "state_signature": _state_signature(abstract_state)}
    checkpointer = Checkpointer(workdir, every_steps=1, keep=1_000_000, read_only=True, name=name)
    try:
        restored = checkpointer.restore_latest(
            abstract_with_shardings(abstract_state, state_shardings),
            check_meta=lambda meta, path: _check_compatible(meta, identity, path),
        )
    finally:
        checkpointer.close()
    if restored is None:
        raise GenjaxError(f"no {name} in workdir '{workdir}'; {how}")
    return restored[1]
