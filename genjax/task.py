"""What a model family hands the shared loop: pure init/step functions and its data."""

from __future__ import annotations

import abc
import dataclasses
import pathlib
from typing import Any, Callable, Iterable

import flax.struct
import jax
import ml_collections
import numpy as np

from genjax import vis
from genjax.data.loader import Batch, Loader
from genjax.errors import GenjaxError
from genjax.sharding import mesh_config
from genjax.state import TrainState


@flax.struct.dataclass
class EvalSums:
    """What a task's `eval_step` returns for one evaluation batch (a pytree, so it leaves jit as it is).

    Attributes:
      sums: {metric: scalar} sums over the batch's real rows (`batch['mask']` True); the loop reports each
        summed over the split and divided by the summed `count`.
      count: scalar, what the sums are sums over: the real rows, or e.g. their selected tokens.
      rows: per-example values {name: [B, ...]} (none by default). The loop keeps the real rows, in the split's
        order, and hands them to `report`, so metrics that need every example (ROC-AUC, a confusion matrix) take
        no second pass over the split.
    """

    sums: dict[str, jax.Array]
    count: jax.Array
    rows: dict[str, jax.Array] = flax.struct.field(default_factory=dict)


def row_keys(rng: jax.Array, batch: dict[str, jax.Array]) -> jax.Array:
    """One key per row of an evaluation batch, `fold_in(rng, row)` of its index in the split (`batch['row']` [B]):
    per-example noise that is the same for a row at every evaluation, whatever the batch size. -> keys [B]."""
    return jax.vmap(lambda row: jax.random.fold_in(rng, row))(batch["row"])


class Task(abc.ABC):
    """A model family's pure functions: what it hands the loop. `init_state`, `train_step` and `eval_step` are
    jitted by the loop; `write_samples` and `report` run on the host, with the state gathered on one device.

    A task whose `report` adds metrics on the validation split names them in `report_metrics`, so that
    `best_metric` can be checked against them before training.
    """

    report_metrics: tuple[str, ...] = ()
    # Starting values of some parameters (unboxed host arrays: a pretrained encoder, a Hugging Face checkpoint), or
    # None. A task that has them takes them as `init_state(rng, batch, initial_params)`; the loop passes them as an
    # argument of the jitted initialisation, never as constants of the compiled program (bert-base's: 440 MB).
    initial_params: Any = None

    @abc.abstractmethod
    def init_state(self, rng: jax.Array, batch: dict[str, jax.Array]) -> TrainState:
        """A fresh state; `batch` is a global batch that fixes input shapes."""

    @abc.abstractmethod
    def train_step(self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[TrainState, dict]:
        """One update. Uses the key `fold_in(rng, state.step)` and returns `state.step + 1`.

        The returned metrics must include `loss` (the scalar minimised).
        """

    @abc.abstractmethod
    def eval_step(self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array) -> EvalSums:
        """Metric sums over one evaluation batch's real rows. Every batch has `mask` (bool [B]) and `row` (int32
        [B], each row's index in the split: `row_keys(rng, batch)` gives per-example keys)."""

    def write_samples(self, state: TrainState, step: int, workdir: pathlib.Path, rng: jax.Array) -> None:
        """Host-side samples of the model at `step` (grids, texts), every `sample_every` steps or, when that is 0,
        at every validation evaluation. `rng` is the same at every call (the same noise shows the progress).
        Writes nothing by default."""

    def report(
        self, state: TrainState, step: int, workdir: pathlib.Path, rng: jax.Array, split: str, rows: dict[str, np.ndarray]
    ) -> dict[str, float]:
        """Host-side metrics after an evaluation of `split` (those that need all the rows or a sampler); {} by default.

        `split`: VALIDATION (every periodic evaluation and the last step's) or TEST (once, at the end).
        `rows`: this evaluation's per-example values from `eval_step`, {name: [N, ...]} ({} when it returns none).
        """
        return {}

    @staticmethod
    def save_samples(workdir: pathlib.Path, step: int, images: np.ndarray | jax.Array, kind: str = "samples", columns: int = 8) -> None:
        """Writes images [N, H, W, C] in [0, 1] as the grid `<workdir>/samples/<kind>_<step:07d>.png` (process 0 only;
        a resumed run removes those of later steps, see `workdir.retire_after`)."""
        if jax.process_index() == 0:
            vis.save_image_grid(np.asarray(jax.device_get(images)), workdir / "samples" / f"{kind}_{step:07d}.png", columns)


VALIDATION, TEST = "validation", "test"  # the two held-out splits every experiment has (see `Experiment`)


@dataclasses.dataclass
class Experiment:
    """A task with its data, ready for `loop.train_and_evaluate`.

    Attributes:
      name: experiment identity, stored in checkpoints; a workdir of another experiment is refused.
      task: the family's pure functions.
      train_data: the training loader (global batches by index).
      eval_data: {VALIDATION: ..., TEST: ...}, each a callable returning that split's evaluation batches afresh
        (each batch has a `mask` and a `row`: see `data.loader.EvalBatches`). Periodic evaluations and `best_metric` read VALIDATION, never trained on;
        TEST is evaluated once, at the end.
      num_train_steps: total number of updates.
      data_signature: what a resumed run must read the same: the dataset and the size of each split, e.g.
        {"dataset": "mnist", "train": 55000, "validation": 5000, "test": 10000}; checked against the checkpoint.
      workdir_files: {file name: write(path)}: files the run keeps in its workdir (a trained tokenizer), written
        by the loop once it holds the workdir, when missing.
    """

    name: str
    task: Task
    train_data: Loader
    eval_data: dict[str, Callable[[], Iterable[Batch]]]
    num_train_steps: int
    data_signature: dict[str, Any] = dataclasses.field(default_factory=dict)
    workdir_files: dict[str, Callable[[pathlib.Path], None]] = dataclasses.field(default_factory=dict)


def loop_config(**overrides: Any) -> ml_collections.ConfigDict:
    """The fields the shared loop reads; every experiment config starts from these."""
    config = ml_collections.ConfigDict(
        dict(
            seed=0,
            batch_size=128,  # global, over all devices and processes
            eval_batch_size=1000,
            num_epochs=10,
            num_train_steps=0,  # > 0 overrides num_epochs
            log_every=100,
            eval_every=0,  # 0: evaluate once per epoch
            sample_every=0,  # > 0: the task writes samples every this many steps; 0: at every evaluation
            grad_accum_steps=1,  # micro-batches per step (the same update, 1/k of the activation memory)
            checkpoint_every=1000,
            keep_checkpoints=3,
            best_metric="",  # an evaluation metric (e.g. "loss"): also keep the state where it was best; "": off
            best_mode="min",  # min: lower is better | max: higher is better
            dtype="float32",  # computation dtype: float32 | bfloat16 (parameters, optimizer state and losses stay float32)
            skip_nonfinite=False,  # True: a step with a NaN/Inf loss or gradient keeps the old state, counted in skipped_updates
            num_devices=0,  # 0: all visible devices
            # devices along each mesh axis (-1: the rest): data (batch split, state replicated), fsdp (batch and
            # state split), tensor (attention heads and MLP hidden split, Megatron); see genjax/sharding.py
            mesh=mesh_config(),
            data_dir="",  # "": $TFDS_DATA_DIR, else TFDS's default
            download=True,  # prepare a dataset missing from data_dir (needs internet and TensorFlow once)
            cpu_tuning=True,  # entry points apply genjax/cpu_tuning.py at start on CPU (process-wide; the library never does)
        )
    )
    config.update(overrides)
    return config


def check_loop_config(config: ml_collections.ConfigDict) -> None:
    """GenjaxError naming the first loop field (see `task.loop_config`) outside its range, before anything runs."""
    at_least = {"batch_size": 1, "eval_batch_size": 1, "log_every": 1, "checkpoint_every": 1, "keep_checkpoints": 1,
                "eval_every": 0, "sample_every": 0, "num_train_steps": 0,
                "grad_accum_steps": 1}
    for key, low in at_least.items():
        if key in config and config[key] < low:
            raise GenjaxError(f"{key}={config[key]} must be >= {low}; pass e.g. --config.{key}={max(low, loop_config().get(key, low))}")
    if config.num_train_steps == 0 and config.num_epochs < 1:
        raise GenjaxError(f"num_epochs={config.num_epochs} trains nothing; set --config.num_epochs >= 1 or --config.num_train_steps > 0")
    if config.best_mode not in ("min", "max"):
        raise GenjaxError(f"unknown best_mode '{config.best_mode}'; choose 'min' (lower is better, e.g. loss) or 'max'")


def num_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """`num_train_steps` when set, else `num_epochs` full epochs."""
    return config.num_train_steps if config.num_train_steps > 0 else config.num_epochs * steps_per_epoch
