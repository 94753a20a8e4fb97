"""The train state pytree shared by every family, and the one place gradients become updates."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from genjax.errors import GenjaxError
from genjax.optim import Optimizer, accumulate_gradients

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes; a pytree, so it jits, shards, donates and checkpoints.

    Networks are named: a VAE or a transformer has one ("model"), a GAN two
    ("generator", "discriminator"), each with its own optimizer state.

    Attributes:
      step: int32 scalar, the number of updates applied so far.
      params: {network: parameter pytree}.
      opt_state: {network: optax state}.
      ema_params: {network: EMA of its parameters}, only for networks whose optimizer has ema_decay > 0.
      model_state: {network: non-trainable collections such as batch_stats}; empty when none.
    """

    step: jax.Array
    params: dict[str, PyTree]
    opt_state: dict[str, PyTree]
    ema_params: dict[str, PyTree]
    model_state: dict[str, PyTree]


def create_train_state(
    params: dict[str, PyTree],
    optimizers: dict[str, Optimizer],
    model_state: dict[str, PyTree] | None = None,
) -> TrainState:
    """A step-0 state: optimizer states initialised, EMAs equal to the initial parameters."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state={name: opt.tx.init(params[name]) for name, opt in optimizers.items()},
        ema_params={name: params[name] for name, opt in optimizers.items() if opt.ema_decay > 0},
        model_state=model_state or {},
    )


def with_values(boxed: PyTree, values: PyTree | None, path: str = "") -> PyTree:
    """`boxed` (parameters from `model.init`, in their logical-axis boxes) holding `values` instead: a tree of the
    same nesting, unboxed (e.g. pretrained weights). A subtree `values` lacks (None, or a missing key: a fresh
    head on a pretrained encoder) keeps its initial values. The boxes keep their sharding names.
    A leaf of another shape, or a key `boxed` lacks, is a GenjaxError naming its path.
    """
    if values is None:
        return boxed
    if isinstance(boxed, nn.Partitioned) or not isinstance(boxed, dict):
        target = boxed.value if isinstance(boxed, nn.Partitioned) else boxed
        if tuple(np.shape(values)) != tuple(target.shape):
            raise GenjaxError(f"parameter {path} has shape {tuple(np.shape(values))} but the model's is {tuple(target.shape)}; start from a model of this size")
        value = jnp.asarray(values, target.dtype)
        return boxed.replace_boxed(value) if isinstance(boxed, nn.Partitioned) else value
    unknown = sorted(set(values) - set(boxed))
    if unknown:
        raise GenjaxError(f"parameter {path}/{unknown[0]} is not in the model (it has {sorted(boxed)}); start from a model of this architecture")
    return {key: with_values(value, values.get(key), f"{path}/{key}") for key, value in boxed.items()}


def apply_gradients(
    state: TrainState, name: str, grads: PyTree, optimizer: Optimizer
) -> tuple[TrainState, dict[str, jax.Array]]:
    """Updates network `name` from its gradients; returns the new state (step unchanged) and health scalars.

    Health scalars: grad_norm, update_norm, param_norm and learning_rate, prefixed
    with `<name>_` except for the single-network name "model".
    """
    updates, opt_state = optimizer.tx.update(grads, state.opt_state[name], state.params[name])
    params = optax.apply_updates(state.params[name], updates)
    ema_params = state.ema_params
    if name in ema_params:
        ema_params = {**ema_params, name: optax.incremental_update(params, ema_params[name], 1.0 - optimizer.ema_decay)}
    prefix = "" if name == "model" else f"{name}_"
    health = {
        f"{prefix}grad_norm": optax.global_norm(grads),
        f"{prefix}update_norm": optax.global_norm(updates),
        f"{prefix}param_norm": optax.global_norm(params),
        f"{prefix}learning_rate": optimizer.schedule(state.step),
    }
    state = state.replace(
        params={**state.params, name: params},
        opt_state={**state.opt_state, name: opt_state},
        ema_params=ema_params,
    )
    return state, health


def eval_params(state: TrainState, name: str = "model") -> PyTree:
    """The EMA of network `name`'s parameters when one is kept, else its trained parameters."""
    return state.ema_params.get(name, state.params[name])


def local_copy(tree: PyTree) -> PyTree:
    """`tree` as arrays on this process's first device: a (possibly multi-process) global state made usable by
    host-side evaluation code, uploaded once rather than with every jitted call."""
    return jax.device_put(jax.device_get(tree), jax.local_devices()[0])


def single_network_step(
    loss_fn: Callable[[PyTree, dict, jax.Array], tuple[jax.Array, dict]],
    optimizer: Optimizer,
    state: TrainState,
    batch: dict[str, jax.Array],
    rng: jax.Array,
    num_micro_batches: int = 1,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """The train step of every one-network family: key `fold_in(rng, step)`, (accumulated) grads, update.

    `loss_fn(params, batch, rng) -> (loss, metrics)`; returns the state one step on and
    {loss, metrics..., health scalars...}.
    """
    rng = jax.random.fold_in(rng, state.step)
    metrics, grads = accumulate_gradients(
        jax.value_and_grad(loss_fn, has_aux=True), state.params["model"], batch, rng, num_micro_batches
    )
    state, health = apply_gradients(state, "model", grads, optimizer)
    return state.replace(step=state.step + 1), {**metrics, **health}
