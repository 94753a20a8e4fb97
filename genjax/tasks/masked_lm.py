"""Masked-LM pretraining (BERT's): the token corruption as a pure function of a key, and the `Task` that trains
a `BertMaskedLM` to recover the corrupted tokens. Shapes: B rows, L tokens."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from genjax.models.bert import BertMaskedLM
from genjax.optim import Optimizer
from genjax.state import TrainState, create_train_state, eval_params, single_network_step
from genjax.task import EvalSums, Task

MASK_RATE = 0.15
# of the selected tokens: this share becomes [MASK], the same share again a random token, the rest stays
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1


def max_predictions(length: int, rate: float) -> int:
    """K, the prediction slots per row of `length` tokens: enough for round(rate x length) selections."""
    return max(1, round(rate * length))


class Masked(NamedTuple):
    """One corrupted batch: `inputs` int [B, L] go into the model, which predicts the original tokens `targets`
    int [B, K] at `positions` int [B, K]; slots whose `weights` [B, K] are 0 select nothing (rows with fewer
    ordinary tokens) and point at distinct unselected positions."""

    inputs: jax.Array
    positions: jax.Array
    targets: jax.Array
    weights: jax.Array


def mask_tokens(
    rng: jax.Array, tokens: jax.Array, *, mask_id: int, vocab_size: int, special_ids: Sequence[int], rate: float = MASK_RATE
) -> Masked:
    """BERT's corruption of tokens int [B, L] (see `Masked`).

    Each row selects round(`rate` x n) of its n tokens that are not special (`special_ids`, which include
    padding), uniformly at random, as Google's BERT does (Hugging Face's collator draws each token
    independently: the same rate on average). A selected token becomes `mask_id` with probability 0.8, a token
    drawn uniformly from the vocabulary with probability 0.1 (special ones included, as both do), and stays
    itself otherwise. At most `max_predictions(L, rate)` tokens are selected per row.
    """
    select_key, action_key, random_key = jax.random.split(rng, 3)
    ordinary = ~jnp.isin(tokens, jnp.asarray(special_ids, tokens.dtype))
    slots = max_predictions(tokens.shape[1], rate)
    # A uniform random subset: the `slots` highest scores, ordinary tokens first; the row's first `count` selected.
    scores = jax.random.uniform(select_key, tokens.shape) + ordinary
    _, positions = jax.lax.top_k(scores, slots)
    count = jnp.round(rate * ordinary.sum(axis=1, keepdims=True))
    selected = jnp.arange(slots) < count
    targets = jnp.take_along_axis(tokens, positions, axis=1)
    action = jax.random.uniform(action_key, positions.shape)
    random_tokens = jax.random.randint(random_key, positions.shape, 0, vocab_size, tokens.dtype)
    corrupted = jnp.where(action < MASK_SHARE, mask_id, jnp.where(action < MASK_SHARE + RANDOM_SHARE, random_tokens, targets))
    rows = jnp.arange(tokens.shape[0])[:, None]
    inputs = tokens.at[rows, positions].set(jnp.where(selected, corrupted, targets), unique_indices=True)
    return Masked(inputs, positions, targets, selected.astype(jnp.float32))


class MaskedLMTask(Task):
    """Trains a `BertMaskedLM` on {'tokens': int32 [B, L] (padding = the model's pad_id)}.

    Metrics, per selected token: `loss` (cross-entropy in nats) and `accuracy` (of the arg-max prediction).
    Attention ignores padding by the original tokens, so a random replacement that happens to be the
    padding id does not hide its position.
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        optimizer: Optimizer,
        model: BertMaskedLM,
        mask_id: int,
        special_ids: Sequence[int],
        rate: float = MASK_RATE,
    ):
        self.config = config
        self.model = model
        self.optimizer = optimizer
        self.mask_id = mask_id
        self.special_ids = tuple(special_ids)
        self.rate = rate

    def init_state(self, rng: jax.Array, batch: dict[str, jax.Array]) -> TrainState:
        """A fresh state whose parameters (and optimizer moments) keep their logical-axis boxes (the loop unboxes)."""
        return create_train_state({"model": self.model.init(rng, batch["tokens"][:1])["params"]}, {"model": self.optimizer})

    def param_logical_axes(self, batch: dict[str, jax.Array]):
        """The params tree as PartitionSpecs of logical names ('vocab', 'embed', 'mlp', 'heads', 'kv')."""
        return nn.get_partition_spec(jax.eval_shape(self.init_state, jax.random.key(0), batch).params["model"])

    def masked_sums(self, params, tokens: jax.Array, rng: jax.Array, row_weights: jax.Array, dropout_rng: jax.Array | None) -> EvalSums:
        """{loss, accuracy} and their count: sums over the selected tokens of rows weighted by `row_weights` [B]; no dropout
        when `dropout_rng` is None."""
        masked = mask_tokens(
            rng, tokens, mask_id=self.mask_id, vocab_size=self.model.vocab_size, special_ids=self.special_ids, rate=self.rate
        )
        logits = self.model.apply(
            {"params": params}, masked.inputs, masked.positions, valid=tokens != self.model.pad_id,
            deterministic=dropout_rng is None, rngs={} if dropout_rng is None else {"dropout": dropout_rng},
            method=BertMaskedLM.predict_at,
        )
        weights = masked.weights * row_weights[:, None]
        correct = (jnp.argmax(logits, -1) == masked.targets).astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, masked.targets)
        return EvalSums({"loss": jnp.sum(loss * weights), "accuracy": jnp.sum(correct * weights)}, weights.sum())

    def loss(self, params, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, dict]:
        mask_rng, dropout_rng = jax.random.split(rng)
        sums = self.masked_sums(params, batch["tokens"], mask_rng, jnp.ones(batch["tokens"].shape[:1]), dropout_rng)
        count = jnp.maximum(sums.count, 1.0)
        return sums.sums["loss"] / count, {"accuracy": sums.sums["accuracy"] / count}

    def train_step(self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[TrainState, dict]:
        return single_network_step(self.loss, self.optimizer, state, batch, rng, self.config.grad_accum_steps)

    def eval_step(self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array) -> EvalSums:
        """Sums over the selected tokens of the real rows, `count` being their number (so the loop's means are per
        token). Every evaluation masks with the same key, so its figures are comparable from one to the next."""
        return self.masked_sums(eval_params(state), batch["tokens"], rng, batch["mask"].astype(jnp.float32), None)
