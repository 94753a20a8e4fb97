"""The train state pytree shared by every family, and the one place gradients become updates."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from genjax.optim import Optimizer

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
