"""Next-token language modelling: cross-entropy in nats per token, bits per token, text samples."""

from __future__ import annotations

import math
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from genjax import sampling
from genjax.data.text import Tokenizer
from genjax.models.layer_norm import uses_hand_backward
from genjax.models.transformer import DecoderLM
from genjax.optim import Optimizer
from genjax.precision import compute_dtype
from genjax.state import TrainState, create_train_state, eval_params, local_copy, single_network_step, with_values
from genjax.task import VALIDATION, EvalSums, Task


def token_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """-log p(target): logits float [B, T, vocab], targets int [B, T] -> nats [B, T]."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets)


def split_window(tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A window [B, T + 1] -> (inputs [B, T], next-token targets [B, T])."""
    return tokens[:, :-1], tokens[:, 1:]


def model_from_config(config: ml_collections.ConfigDict, vocab_size: int) -> DecoderLM:
    """The `DecoderLM` described by `config.model` (its context is `config.context`)."""
    m = config.model
    return DecoderLM(
        vocab_size=vocab_size, num_layers=m.num_layers, num_heads=m.num_heads, width=m.width, mlp_dim=m.mlp_ratio * m.width,
        max_len=config.context, num_kv_heads=m.num_kv_heads, positions=m.positions, dropout_rate=m.dropout,
        attention_kernel=m.attention_kernel, hand_backward=uses_hand_backward(m.backward), dtype=compute_dtype(config.dtype),
    )


class LanguageModelTask(Task):
    """Trains a `DecoderLM` on windows {'tokens': int32 [B, context + 1]}; metrics `loss` (nats/token) and the same
    in bits (`bits_name`: "bits_per_char" for a character tokenizer, "bits_per_token" for subwords).

    `model`: the `DecoderLM` (a `GPT2`, ...); None builds the one `config.model` describes. `initial_params`: its
    starting parameters (unboxed, e.g. pretrained), or None for a fresh initialisation.
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        optimizer: Optimizer,
        tokenizer: Tokenizer,
        model: DecoderLM | None = None,
        initial_params=None,
        bits_name: str = "bits_per_char",
    ):
        self.config = config
        self.model = model_from_config(config, tokenizer.vocab_size) if model is None else model
        self.optimizer = optimizer
        self.tokenizer = tokenizer
        self.initial_params = initial_params
        self.bits_name = bits_name

    def init_state(self, rng: jax.Array, batch: dict[str, jax.Array], initial_params=None) -> TrainState:
        """A fresh state whose parameters (and optimizer moments) keep their logical-axis boxes (the loop unboxes),
        holding `initial_params` (the task's `initial_params`, passed by the loop) where they give a value."""
        inputs, _ = split_window(batch["tokens"][:1])
        params = with_values(self.model.init(rng, inputs)["params"], initial_params)
        return create_train_state({"model": params}, {"model": self.optimizer})

    def param_logical_axes(self, batch: dict[str, jax.Array]):
        """The params tree as PartitionSpecs of logical names ('vocab', 'embed', 'mlp', 'heads', 'kv')."""
        return nn.get_partition_spec(jax.eval_shape(self.init_state, jax.random.key(0), batch).params["model"])

    def loss(self, params, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, dict]:
        inputs, targets = split_window(batch["tokens"])
        logits = self.model.apply({"params": params}, inputs, deterministic=False, rngs={"dropout": rng})
        loss = token_cross_entropy(logits, targets).mean()
        return loss, {self.bits_name: loss / math.log(2)}

    def train_step(self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[TrainState, dict]:
        return single_network_step(self.loss, self.optimizer, state, batch, rng, self.config.grad_accum_steps)

    def eval_step(self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array) -> EvalSums:
        """Sums over the real windows of their mean nats per token (all windows have the same length)."""
        inputs, targets = split_window(batch["tokens"])
        per_window = token_cross_entropy(self.model.apply({"params": eval_params(state)}, inputs), targets).mean(-1)
        mask = batch["mask"].astype(jnp.float32)
        loss = jnp.sum(per_window * mask)
        return EvalSums({"loss": loss, self.bits_name: loss / math.log(2)}, mask.sum())

    def sample(self, params, prompt: str, rng: jax.Array, length: int, temperature: float, top_k: int, num_samples: int = 1) -> list[str]:
        """`num_samples` continuations of `prompt`, each `length` tokens, decoded to text."""
        ids = np.tile(self.tokenizer.encode(prompt)[None], (num_samples, 1))
        tokens = sampling.generate(self.model, params, ids, rng, length, temperature, top_k)
        return [self.tokenizer.decode(row) for row in tokens]

    def report(
        self, state: TrainState, step: int, workdir: pathlib.Path, rng: jax.Array, split: str, rows: dict[str, np.ndarray]
    ) -> dict[str, float]:
        """At each validation, writes `<workdir>/samples/sample_<step>.txt` (prompt + continuations at the configured
        temperature/top-k)."""
        if jax.process_index() == 0 and split == VALIDATION:
            s = self.config.sample
            params = local_copy(eval_params(state))
            texts = self.sample(params, s.prompt, jax.random.fold_in(rng, step), s.length, s.temperature, s.top_k, s.num_samples)
            path = workdir / "samples" / f"sample_{step:07d}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            header = f"step {step}, temperature {s.temperature}, top_k {s.top_k}\n"
            path.write_text(header + "\n\n----\n\n".join(s.prompt + text for text in texts) + "\n", encoding="utf-8")
        return {}
