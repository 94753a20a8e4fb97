"""Binary text classification with an encoder: cross-entropy, accuracy, and the final test-set figures
(precision, recall, F1, ROC-AUC, ROC curve PNG)."""

from __future__ import annotations

import functools
import pathlib
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from matplotlib.figure import Figure

from genjax.models.layer_norm import uses_hand_backward
from genjax.models.transformer import EncoderClassifier
from genjax.optim import Optimizer
from genjax.precision import compute_dtype
from genjax.state import TrainState, create_train_state, eval_params, single_network_step, with_values
from genjax.task import TEST, EvalSums, Task
from genjax.tasks.classifier import classification_sums


def attention_kernel(name: str) -> str:
    """`name`, or for "auto" the faster kernel on this platform at IMDb's 512 tokens: "blocked" on CPU,
    "xla" elsewhere (2-core CPU: 220-242 against 392-511 ms per step; H100: 1.4 against 4.0 ms in bf16;
    benchmarks/HISTORY.md)."""
    if name != "auto":
        return name
    return "blocked" if jax.default_backend() == "cpu" else "xla"


def model_from_config(config: ml_collections.ConfigDict, vocab_size: int) -> EncoderClassifier:
    """The `EncoderClassifier` described by `config.model` over `config.max_len` tokens."""
    m = config.model
    return EncoderClassifier(
        vocab_size=vocab_size, num_layers=m.num_layers, num_heads=m.num_heads, width=m.width, mlp_dim=m.mlp_ratio * m.width,
        max_len=config.max_len, num_classes=2, num_kv_heads=m.num_kv_heads, positions=m.positions, pooling=m.pooling,
        dropout_rate=m.dropout, attention_kernel=attention_kernel(m.attention_kernel), hand_backward=uses_hand_backward(m.backward),
        dtype=compute_dtype(config.dtype),
    )


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates) [distinct scores + 1], thresholds from high to low; ties kept together."""
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order].astype(np.float64)
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    true_pos, false_pos = np.cumsum(labels)[last_of_tie], np.cumsum(1 - labels)[last_of_tie]
    return np.r_[0.0, false_pos / max(false_pos[-1], 1)], np.r_[0.0, true_pos / max(true_pos[-1], 1)]


def binary_metrics(probabilities: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """accuracy, precision, recall, f1 (positive class 1, predicted when p >= threshold) and roc_auc.

    ROC-AUC is undefined when `labels` hold one class only: it is then nan, with one warning line on stderr.
    """
    predicted = probabilities >= threshold
    positive = labels == 1
    tp, fp, fn = np.sum(predicted & positive), np.sum(predicted & ~positive), np.sum(~predicted & positive)
    precision = tp / max(tp + fp, 1)
    recall = tp / max(tp + fn, 1)
    fpr, tpr = roc_curve(probabilities, labels)
    return {
        "accuracy": float(np.mean(predicted == positive)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(2 * precision * recall / max(precision + recall, 1e-12)),
        "roc_auc": roc_auc(fpr, tpr, labels),
    }


def roc_auc(fpr: np.ndarray, tpr: np.ndarray, labels: np.ndarray) -> float:
    """The area under the ROC curve (`roc_curve`'s rates); nan, with a warning line, when `labels` hold one class."""
    classes = np.unique(labels)
    if len(classes) < 2:
        print(f"warning: ROC-AUC is undefined with labels of one class only ({classes.tolist()}); reported as nan", file=sys.stderr)
        return float("nan")
    return float(np.trapezoid(tpr, fpr))


def save_roc_png(probabilities: np.ndarray, labels: np.ndarray, path: pathlib.Path, title: str) -> None:
    fpr, tpr = roc_curve(probabilities, labels)
    figure = Figure(figsize=(4.5, 4.5))
    axes = figure.subplots()
    axes.plot(fpr, tpr, label=f"AUC {np.trapezoid(tpr, fpr):.4f}")
    axes.plot([0, 1], [0, 1], "--", color="gray", linewidth=0.8)
    axes.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1))
    axes.legend(loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")


def positive_class_probability(logits: jax.Array) -> jax.Array:
    """P(label 1) from two-class logits [B, 2] -> [B]."""
    return jax.nn.softmax(logits, -1)[:, 1]


@functools.partial(jax.jit, static_argnames="model")
def positive_probability(model: nn.Module, params, tokens: jax.Array) -> jax.Array:
    """P(label 1): tokens int32 [B, L] -> [B]."""
    return positive_class_probability(model.apply({"params": params}, tokens))


class TextClassifierTask(Task):
    """Trains a text classifier on {'tokens': int32 [B, L] (padding = the model's padding id), 'label': int32 [B]}.

    `model`: any module with `apply({"params": p}, tokens [B, L], deterministic=...) -> logits [B, 2]` (an
    `EncoderClassifier`, a `BertClassifier`). `initial_params`: its starting parameters (unboxed; e.g. a pretrained
    encoder with a fresh head), or None for a fresh initialisation.
    """

    def __init__(self, config: ml_collections.ConfigDict, optimizer: Optimizer, model: nn.Module, initial_params=None):
        self.config = config
        self.model = model
        self.optimizer = optimizer
        self.initial_params = initial_params

    def init_state(self, rng: jax.Array, batch: dict[str, jax.Array], initial_params=None) -> TrainState:
        """A fresh state whose parameters (and optimizer moments) keep their logical-axis boxes (the loop unboxes),
        holding `initial_params` (the task's `initial_params`, passed by the loop) where they give a value."""
        params = with_values(self.model.init(rng, batch["tokens"][:1])["params"], initial_params)
        return create_train_state({"model": params}, {"model": self.optimizer})

    def param_logical_axes(self, batch: dict[str, jax.Array]):
        """The params tree as PartitionSpecs of logical names ('vocab', 'embed', 'mlp', 'heads', 'kv')."""
        return nn.get_partition_spec(jax.eval_shape(self.init_state, jax.random.key(0), batch).params["model"])

    def loss(self, params, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, dict]:
        logits = self.model.apply({"params": params}, batch["tokens"], deterministic=False, rngs={"dropout": rng})
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}

    def train_step(self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[TrainState, dict]:
        return single_network_step(self.loss, self.optimizer, state, batch, rng, self.config.grad_accum_steps)

    def eval_step(self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array) -> EvalSums:
        """Loss and accuracy sums, and `rows`: P(label 1) [B] with the labels, for the final ROC-AUC."""
        logits = self.model.apply({"params": eval_params(state)}, batch["tokens"])
        rows = {"probability": positive_class_probability(logits), "label": batch["label"]}
        return classification_sums(logits, batch["label"], batch["mask"], rows)

    def probabilities(self, params, tokens: np.ndarray) -> np.ndarray:
        """P(label 1) for every row of tokens [N, L] (all rows, on every process), in batches of `eval_batch_size`."""
        size = self.config.eval_batch_size
        return np.concatenate([np.asarray(positive_probability(self.model, params, tokens[i : i + size])) for i in range(0, len(tokens), size)])

    def report(
        self, state: TrainState, step: int, workdir: pathlib.Path, rng: jax.Array, split: str, rows: dict[str, np.ndarray]
    ) -> dict[str, float]:
        """At the end: test precision / recall / F1 / ROC-AUC and `<workdir>/roc_curve.png`, from the evaluation's rows."""
        if split != TEST:
            return {}
        metrics = binary_metrics(rows["probability"], rows["label"])
        if jax.process_index() == 0:
            save_roc_png(rows["probability"], rows["label"], workdir / "roc_curve.png", f"test ROC, step {step}")
        return {k: v for k, v in metrics.items() if k != "accuracy"}
