"""Digit classification: cross-entropy train/eval steps, macro precision/recall/F1 and a confusion-matrix PNG."""

from __future__ import annotations

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import ml_collections
import numpy as np
import optax

from genjax.data import sources
from genjax.data.images import augment_digits
from genjax.data.loader import ShuffledArrayLoader, eval_splits
from genjax.data.splits import hold_out
from genjax.models.classifier import make_classifier
from genjax.optim import Optimizer, make_optimizer, optimizer_config
from genjax.precision import compute_dtype
from genjax.state import TrainState, create_train_state, eval_params, single_network_step
from genjax.task import TEST, VALIDATION, EvalSums, Experiment, Task, loop_config, num_train_steps


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> tuple[np.ndarray, dict[str, float]]:
    """(confusion [true, predicted] counts [C, C], {accuracy, precision_macro, recall_macro, f1_macro}).

    Macro averages weigh every class equally; a class never predicted has precision 0.
    """
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    hits = np.diag(confusion).astype(np.float64)
    precision = hits / np.maximum(confusion.sum(0), 1)
    recall = hits / np.maximum(confusion.sum(1), 1)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    return confusion, {
        "accuracy": float(hits.sum() / confusion.sum()),
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "f1_macro": float(f1.mean()),
    }


def save_confusion_matrix(confusion: np.ndarray, path: pathlib.Path, title: str) -> None:
    """A counts-annotated heat map of `confusion` [true, predicted] as a PNG."""
    num_classes = confusion.shape[0]
    figure, axes = plt.subplots(figsize=(6.5, 5.5))
    image = axes.imshow(np.log1p(confusion), cmap="Blues")
    threshold = np.log1p(confusion).max() / 2
    for (true, predicted), count in np.ndenumerate(confusion):
        color = "white" if np.log1p(count) > threshold else "black"
        axes.text(predicted, true, str(count), ha="center", va="center", fontsize=7, color=color)
    axes.set(xticks=range(num_classes), yticks=range(num_classes), xlabel="predicted", ylabel="true", title=title)
    figure.colorbar(image, ax=axes, label="log(1 + count)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)



def classification_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array, rows: dict[str, jax.Array] | None = None) -> EvalSums:
    """Eval sums {loss, accuracy} over the real rows, with their count: logits [B, C], labels int [B], mask bool [B];
    `rows`: per-example values {name: [B, ...]} passed on to the loop."""
    mask = mask.astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return EvalSums({"loss": jnp.sum(loss * mask), "accuracy": jnp.sum(correct * mask)}, mask.sum(), rows or {})


class ClassifierTask(Task):
    """Softmax cross-entropy on uint8 images scaled to [0, 1]; optional on-device augmentation; dropout keys from the step rng."""

    def __init__(self, config: ml_collections.ConfigDict, model: nn.Module, optimizer: Optimizer):
        self.config = config
        self.model = model
        self.optimizer = optimizer

    def _inputs(self, rng: jax.Array, images: jax.Array, train: bool) -> jax.Array:
        x = images.astype(jnp.float32) / 255.0
        return augment_digits(rng, x) if train and self.config.data.augment else x

    def init_state(self, rng: jax.Array, batch: dict[str, jax.Array]) -> TrainState:
        params = self.model.init(rng, jnp.zeros((1, *batch["image"].shape[1:])))["params"]
        return create_train_state({"model": params}, {"model": self.optimizer})

    def loss(self, params, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, dict]:
        augment_rng, dropout_rng = jax.random.split(rng)
        x = self._inputs(augment_rng, batch["image"], train=True)
        logits = self.model.apply({"params": params}, x, train=True, rngs={"dropout": dropout_rng})
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}

    def train_step(self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[TrainState, dict]:
        return single_network_step(self.loss, self.optimizer, state, batch, rng, self.config.grad_accum_steps)

    def eval_step(self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array) -> EvalSums:
        """Loss and accuracy sums, and `rows`: the predicted class [B] with the labels, for the final confusion matrix."""
        logits = self.model.apply({"params": eval_params(state)}, self._inputs(rng, batch["image"], train=False))
        rows = {"prediction": jnp.argmax(logits, -1), "label": batch["label"]}
        return classification_sums(logits, batch["label"], batch["mask"], rows)

    def report(
        self, state: TrainState, step: int, workdir: pathlib.Path, rng: jax.Array, split: str, rows: dict[str, np.ndarray]
    ) -> dict[str, float]:
        """At the end: macro precision/recall/F1 over the whole test split and `<workdir>/confusion_matrix.png`,
        from the evaluation's rows."""
        if split != TEST:
            return {}
        confusion, metrics = classification_metrics(rows["label"], rows["prediction"], self.model.num_classes)
        if jax.process_index() == 0:
            title = f"test confusion matrix, step {step}, accuracy {100 * metrics['accuracy']:.2f}%"
            save_confusion_matrix(confusion, workdir / "confusion_matrix.png", title)
        return {k: v for k, v in metrics.items() if k != "accuracy"}  # accuracy comes from eval_step


def digit_classifier_config(
    model: dict, augment: bool, num_epochs: int, learning_rate: float, checkpoint_every: int
) -> ml_collections.ConfigDict:
    """The config the MNIST classifiers share (batches of 128, Adam with 200 warmup steps then cosine decay to 1% of
    `learning_rate`, the last 5,000 train images as validation) around their own model, augmentation and schedule."""
    config = loop_config(num_epochs=num_epochs, batch_size=128, eval_batch_size=1000, checkpoint_every=checkpoint_every)
    config.dataset = "mnist"
    config.validation_examples = 5000  # the last 5,000 train images (train[55000:]): the validation split, never trained on
    config.model = ml_collections.ConfigDict(model)
    config.data = ml_collections.ConfigDict(dict(augment=augment))  # augment: small random rotation/zoom/shift
    config.optimizer = optimizer_config(
        name="adam", learning_rate=learning_rate, schedule="warmup_cosine", warmup_steps=200, end_lr_factor=0.01
    )
    return config


def build_experiment(config: ml_collections.ConfigDict, name: str) -> Experiment:
    """Data, optimizer and task of a classifier experiment (`config.model.kind` picks the network).

    Trains on the train split less its last `config.validation_examples` images, which are the validation split.
    """
    train, validation = hold_out(sources.image_arrays(config.dataset, "train", config.data_dir, config.download), config.validation_examples)
    test = sources.image_arrays(config.dataset, "test", config.data_dir, config.download)
    loader = ShuffledArrayLoader(train, config.batch_size, seed=config.seed)
    steps = num_train_steps(config, loader.steps_per_epoch)
    task = ClassifierTask(config, make_classifier(config.model, compute_dtype(config.dtype)), make_optimizer(config.optimizer, steps))
    held_out = {VALIDATION: validation, TEST: test}
    return Experiment(
        name=name,
        task=task,
        train_data=loader,
        eval_data=eval_splits(held_out, config.eval_batch_size),
        num_train_steps=steps,
        data_signature={"dataset": config.dataset, "train": len(train["label"]), **{k: len(v["label"]) for k, v in held_out.items()}},
    )
