"""Labelled reviews (IMDb's `imdb_reviews`): the part of `train` trained on, the validation slice held out of it
(its last `validation_examples` reviews, never trained on), and the test split, each limited for smoke runs; the
`Experiment` of a review classifier over them."""

from __future__ import annotations

import pathlib
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

from genjax.data import sources
from genjax.data.loader import ShuffledArrayLoader, eval_splits
from genjax.data.splits import hold_out
from genjax.task import TEST, VALIDATION, Experiment, Task, num_train_steps


def labelled_split(config: ml_collections.ConfigDict, split: str, limit: int = 0) -> tuple[list[str], np.ndarray]:
    """(texts, int32 labels [N]) of `config.dataset`'s `split`: its first `limit` reviews (0: all)."""
    texts, labels = sources.labelled_texts(config.dataset, split, config.data_dir, config.download)
    return (texts[:limit], labels[:limit]) if limit > 0 else (texts, labels)


def training_reviews(config: ml_collections.ConfigDict) -> tuple[tuple[list[str], np.ndarray], dict[str, Any]]:
    """((texts, labels) trained on, validation {"text", "label"}): the train split's last `validation_examples`
    reviews validate; of the rest, the first `train_examples` (0: all) are trained on."""
    train, validation = hold_out(dict(zip(("text", "label"), labelled_split(config, "train"))), config.validation_examples)
    limit = config.train_examples if config.train_examples > 0 else len(train["label"])
    return (train["text"][:limit], train["label"][:limit]), validation


def review_experiment(
    config: ml_collections.ConfigDict,
    name: str,
    training: tuple[tuple[list[str], np.ndarray], dict[str, Any]],
    encode: Callable[[Sequence[str]], np.ndarray],
    make_task: Callable[[int], Task],
    workdir_files: dict[str, Callable[[pathlib.Path], None]],
) -> Experiment:
    """A review classifier's `Experiment`: `training` (`training_reviews(config)`) and the test split (first
    `config.test_examples`, 0: all) encoded by `encode` (texts -> int32 tokens [N, config.max_len]), shuffled
    batches, and `make_task(total steps)`."""
    (train_texts, train_labels), validation = training
    test_texts, test_labels = labelled_split(config, "test", config.test_examples)
    train = {"tokens": encode(train_texts), "label": train_labels}
    held_out = {
        VALIDATION: {"tokens": encode(validation["text"]), "label": validation["label"]},
        TEST: {"tokens": encode(test_texts), "label": test_labels},
    }
    loader = ShuffledArrayLoader(train, config.batch_size, seed=config.seed)
    steps = num_train_steps(config, loader.steps_per_epoch)
    return Experiment(
        name=name,
        task=make_task(steps),
        train_data=loader,
        eval_data=eval_splits(held_out, config.eval_batch_size),
        num_train_steps=steps,
        workdir_files=workdir_files,
        data_signature={"dataset": config.dataset, "train": len(train_labels), **{k: len(v["label"]) for k, v in held_out.items()}},
    )
