"""The one Optax pipeline every family builds its optimizers from, plus in-step gradient accumulation."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from genjax.errors import GenjaxError

PyTree = Any

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "warmup_cosine")


def optimizer_config(**overrides: Any) -> ml_collections.ConfigDict:
    """The optimizer fields every experiment config carries (defaults: Adam 1e-3, constant)."""
    config = ml_collections.ConfigDict(
        dict(
            name="adam",  # adam | adamw | sgd
            learning_rate=1e-3,
            schedule="constant",  # constant | warmup_cosine
            warmup_steps=0,
            end_lr_factor=0.0,  # warmup_cosine decays to learning_rate * end_lr_factor
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            momentum=0.9,  # sgd only
            weight_decay=0.0,  # decoupled; never applied to biases or norm scales (ndim < 2)
            grad_clip_norm=0.0,  # 0 disables global-norm clipping
            ema_decay=0.0,  # 0 disables the EMA of the parameters
        )
    )
    config.update(overrides)
    return config


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """An optax transformation with its learning-rate schedule and the EMA decay of its parameters."""

    tx: optax.GradientTransformation
    schedule: Callable[[jax.Array], jax.Array]
    ema_decay: float


def decay_mask(params: PyTree) -> PyTree:
    """True for the leaves weight decay applies to: kernels and embeddings, not biases or norm scales."""
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def make_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Builds the learning-rate schedule named by `config.schedule` over `total_steps` updates."""
    if config.schedule == "constant":
        return optax.constant_schedule(config.learning_rate)
    if config.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=config.learning_rate,
            warmup_steps=config.warmup_steps,
            decay_steps=max(total_steps, config.warmup_steps + 1),
            end_value=config.learning_rate * config.end_lr_factor,
        )
    raise GenjaxError(f"unknown optimizer.schedule '{config.schedule}'; choose one of {SCHEDULES}")


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int) -> Optimizer:
    """Builds clip -> optimizer -> masked weight decay -> schedule from an `optimizer_config()`."""
    schedule = make_schedule(config, total_steps)
    chain = []
    if config.grad_clip_norm > 0:
        chain.append(optax.clip_by_global_norm(config.grad_clip_norm))
    if config.name in ("adam", "adamw"):
        chain.append(optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps))
    elif config.name == "sgd":
        if config.momentum > 0:
            chain.append(optax.trace(decay=config.momentum))
    else:
        raise GenjaxError(f"unknown optimizer.name '{config.name}'; choose one of {OPTIMIZERS}")
    if config.weight_decay > 0:
        chain.append(optax.add_decayed_weights(config.weight_decay, mask=decay_mask))
    chain.append(optax.scale_by_learning_rate(schedule))
    return Optimizer(tx=optax.chain(*chain), schedule=schedule, ema_decay=float(config.ema_decay))


def accumulate_gradients(
    loss_and_grad: Callable[[PyTree, dict, jax.Array], tuple[tuple[jax.Array, dict], PyTree]],
    params: PyTree,
    batch: dict[str, jax.Array],
    rng: jax.Array,
    num_micro_batches: int,
) -> tuple[dict, PyTree]:
    """Mean loss metrics and gradients over `num_micro_batches` equal slices of `batch`.

    `loss_and_grad(params, micro_batch, rng) -> ((loss, metrics), grads)` is
    `jax.value_and_grad(loss_fn, has_aux=True)`. With equal slices the mean of the
    micro-batch means equals the full-batch mean, so k micro-batches of B/k give the
    update of one batch of B while holding only B/k activations. Micro-batch i holds
    rows i, i + k, i + 2k, ...: a batch split over devices along its rows stays split,
    each device computing its own rows of every micro-batch. Micro-batch i uses
    the key `fold_in(rng, i)`; with one micro-batch `rng` is used as it is.
    """
    if num_micro_batches == 1:
        (loss, metrics), grads = loss_and_grad(params, batch, rng)
        return {"loss": loss, **metrics}, grads
    leading = {x.shape[0] for x in jax.tree.leaves(batch)}
    size = leading.pop()
    if size % num_micro_batches:
        raise GenjaxError(
            f"batch of {size} does not split into grad_accum_steps={num_micro_batches} equal micro-batches; "
            "choose a batch size divisible by it"
        )
    micro = jax.tree.map(lambda x: x.reshape(size // num_micro_batches, num_micro_batches, *x.shape[1:]).swapaxes(0, 1), batch)

    def one(index: jax.Array, micro_batch: dict) -> tuple[dict, PyTree]:
        (loss, metrics), grads = loss_and_grad(params, micro_batch, jax.random.fold_in(rng, index))
        return {"loss": loss, **metrics}, grads

    def body(carry, inputs):
        return jax.tree.map(jnp.add, carry, one(*inputs)), None

    first = one(jnp.int32(0), jax.tree.map(lambda x: x[0], micro))
    rest = (jnp.arange(1, num_micro_batches), jax.tree.map(lambda x: x[1:], micro))
    total, _ = jax.lax.scan(body, first, rest)
    return jax.tree.map(lambda x: x / num_micro_batches, total)
