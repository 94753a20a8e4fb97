"""Sampling from a `DecoderLM`: temperature / top-k token draws and jitted KV-cached generation.

The prompt runs once through the model, filling every layer's cache; each new
token then costs one single-position forward that reads the cache, inside one
`lax.scan`, so the prefix is never recomputed.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from genjax.errors import GenjaxError
from genjax.models.transformer import DecoderLM, init_caches


def sample_token(rng: jax.Array, logits: jax.Array, temperature: float, top_k: int) -> jax.Array:
    """Draws ids int32 [B] from logits [B, vocab] / temperature among the `top_k` largest (0: all).

    temperature 0 is greedy (argmax).
    """
    if temperature <= 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if 0 < top_k < logits.shape[-1]:
        kth_largest = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "num_new", "temperature", "top_k"))
def _generate(model: DecoderLM, params, prompt: jax.Array, rng: jax.Array, *, num_new: int, temperature: float, top_k: int) -> jax.Array:
    batch, length = prompt.shape
    caches = init_caches(model, batch, model.max_len)
    positions = jnp.broadcast_to(jnp.arange(length), prompt.shape)
    logits, caches = model.apply({"params": params}, prompt, positions, caches, method=DecoderLM.decode)
    first = sample_token(jax.random.fold_in(rng, 0), logits[:, -1], temperature, top_k)

    def step(carry, i):
        token, caches = carry
        position = jnp.full((batch, 1), length + i, jnp.int32)
        logits, caches = model.apply({"params": params}, token[:, None], position, caches, method=DecoderLM.decode)
        return (sample_token(jax.random.fold_in(rng, i + 1), logits[:, 0], temperature, top_k), caches), token

    (last, _), tokens = jax.lax.scan(step, (first, caches), jnp.arange(num_new - 1))
    return jnp.concatenate([tokens.T, last[:, None]], axis=1)


def generate(
    model: DecoderLM, params, prompt: np.ndarray, rng: jax.Array, num_new: int, temperature: float = 1.0, top_k: int = 0
) -> np.ndarray:
    """Continues each prompt row int [B, P] by `num_new` tokens: int32 [B, num_new].

    Token i is drawn with the key `fold_in(rng, i)`. The cache holds `model.max_len`
    positions: with rotary positions older ones slide out (generation may run past
    the training context, and a longer prompt keeps its last `max_len` tokens); with
    learned positions prompt + new tokens must fit in `max_len`.
    """
    prompt = np.asarray(prompt, np.int32)
    if prompt.ndim != 2 or prompt.shape[1] == 0:
        raise GenjaxError("the prompt is empty; give at least one character, e.g. --prompt 'ROMEO:'")
    if num_new < 1:
        raise GenjaxError(f"cannot generate {num_new} tokens; ask for at least 1")
    if model.positions == "learned" and prompt.shape[1] + num_new > model.max_len:
        raise GenjaxError(
            f"prompt ({prompt.shape[1]}) + new tokens ({num_new}) exceed the {model.max_len} learned positions; "
            "shorten them or train with rotary positions"
        )
    prompt = prompt[:, -model.max_len :]
    tokens = _generate(model, params, jnp.asarray(prompt), rng, num_new=num_new, temperature=float(temperature), top_k=int(top_k))
    return np.asarray(jax.device_get(tokens))
