"""Self-attention as readable Flax modules: multi-head / grouped-query attention, rotary positions, pre- or post-norm blocks.

Shapes: B batch, T query length, S key length, E width, N query heads, K key/value
heads (K divides N; K < N is grouped-query attention), D head dim.

Parameters carry logical axis names ('vocab', 'embed', 'mlp', 'heads', 'kv') so
that a mesh can shard them by name (`nn.get_partition_spec` of the boxed init).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from genjax.errors import GenjaxError
from genjax.models.layer_norm import EPSILON, LayerNorm

KERNELS = ("auto", "xla", "blocked", "fused", "cudnn")
FUSED_DTYPES = (jnp.bfloat16, jnp.float16)  # the dtypes cuDNN flash attention takes (fp8 aside)
CUDNN_MAX_HEAD_DIM = 128  # cuDNN's limit before Hopper (256 from compute capability 9.0): the safe bound
BLOCK_SCORES = 2**20  # attention scores per block of the "blocked" kernel: 4 MiB in float32, cache-sized (benchmarks/HISTORY.md)
POSITIONS = ("rotary", "learned")

Dtype = Any
Cache = dict[str, jax.Array]


def partitioned(init: nn.initializers.Initializer, *names: str | None) -> nn.initializers.Initializer:
    return nn.with_logical_partitioning(init, names)


def dense(features: int, axes: tuple[str | None, str | None], dtype: Dtype, param_dtype: Dtype, name: str) -> nn.Dense:
    """A biased `nn.Dense` [..., in] -> [..., features] whose kernel [in, features] has the logical `axes`."""
    return nn.Dense(
        features,
        kernel_init=partitioned(nn.initializers.lecun_normal(), *axes),
        bias_init=partitioned(nn.initializers.zeros, axes[1]),
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


def dot_product_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool, mask: jax.Array | None, kernel: str
) -> tuple[jax.Array, jax.Array | None]:
    """softmax(q k^T / sqrt(D)) v over the allowed keys.

    Args:
      q: [B, T, N, D]; k, v: [B, S, K, D].
      causal: query t sees keys s <= t (needs T == S).
      mask: bool, broadcastable to [B, T, S]; True where a key may be seen (padding, cache slots).
      kernel: "xla" (einsums, softmax in float32; returns the weights), "blocked" (the same over blocks
        of batch rows, for long sequences on CPU: see `blocked_attention`; no weights), "fused"
        (`jax.nn.dot_product_attention` with its default implementation, XLA's in jax 0.10; no weights),
        "cudnn" (the same with `implementation="cudnn"`: cuDNN flash attention, GPU only, bf16/fp16; no weights)
        or "auto" ("cudnn" where `cudnn_fits`, else "xla").
    Returns:
      (out [B, T, N, D], weights [B, N, T, S] float32 or None).
    """
    if kernel == "auto":
        kernel = "cudnn" if cudnn_fits(q, k, causal=causal, mask=mask) else "xla"
    if kernel in ("fused", "cudnn"):
        fused_mask = None if mask is None else jnp.broadcast_to(mask, (q.shape[0], q.shape[1], k.shape[1]))[:, None]
        implementation = "cudnn" if kernel == "cudnn" else None
        return jax.nn.dot_product_attention(q, k, v, mask=fused_mask, is_causal=causal, implementation=implementation), None
    if kernel == "blocked":
        return blocked_attention(q, k, v, causal=causal, mask=mask), None
    if kernel != "xla":
        raise GenjaxError(f"unknown attention kernel '{kernel}'; choose one of {KERNELS}")
    return einsum_attention(q, k, v, causal=causal, mask=mask)


def cudnn_fits(q: jax.Array, k: jax.Array, *, causal: bool, mask: jax.Array | None) -> bool:
    """Whether cuDNN flash attention takes q [B, T, N, D], k [B, S, K, D] here: the default backend is a GPU, the
    dtype bf16 or fp16, D a multiple of 8 up to CUDNN_MAX_HEAD_DIM, T == S when causal, T and S even under a mask
    (cuDNN turns the mask into a bias). Decided from shapes and dtypes at trace time."""
    t, d, s = q.shape[1], q.shape[-1], k.shape[1]
    return (
        jax.default_backend() == "gpu"
        and q.dtype in FUSED_DTYPES
        and d % 8 == 0
        and d <= CUDNN_MAX_HEAD_DIM
        and (not causal or t == s)
        and (mask is None or (t % 2 == 0 and s % 2 == 0))
    )


def einsum_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool, mask: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
    """The "xla" kernel: (out [B, T, N, D], weights [B, N, T, S] float32); arguments as in `dot_product_attention`."""
    b, t, n, d = q.shape
    s, kv_heads = k.shape[1], k.shape[2]
    if kv_heads < n:
        # Query head i reads key/value head i // (n / K). Repeating the K heads keeps one [B, N, T, S] layout
        # for every head count: a size-1 group axis made XLA:CPU's forward + backward 1.6x slower (benchmarks/HISTORY.md).
        k, v = jnp.repeat(k, n // kv_heads, axis=2), jnp.repeat(v, n // kv_heads, axis=2)
    logits = jnp.einsum("btnd,bsnd->bnts", q * jnp.asarray(d**-0.5, q.dtype), k).astype(jnp.float32)
    allowed = jnp.ones((t, s), bool) if mask is None else jnp.broadcast_to(mask, (b, t, s))[:, None]
    if causal:
        allowed = allowed & jnp.tril(jnp.ones((t, s), bool))
    logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1)
    return jnp.einsum("bnts,bsnd->btnd", weights.astype(v.dtype), v), weights


def blocked_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool, mask: jax.Array | None) -> jax.Array:
    """`einsum_attention` over blocks of batch rows: out [B, T, N, D]; arguments as in `dot_product_attention`.

    A block holds at most about BLOCK_SCORES scores (at least one row), so that its scores stay in
    cache, and the backward pass recomputes them instead of reading stored ones (`jax.checkpoint`).
    With C blocks, block c holds rows c, c + C, c + 2C, ...: a batch split over devices in contiguous
    ranges stays split the same way within every block.
    """
    b, t, n, _ = q.shape
    rows = max(1, BLOCK_SCORES // (n * t * k.shape[1]))
    num_blocks = next(c for c in range(-(-b // rows), b + 1) if b % c == 0)
    mask = jnp.ones((1, 1, 1), bool) if mask is None else mask
    mask = jnp.broadcast_to(mask, jnp.broadcast_shapes(mask.shape, (b, 1, 1)))

    def to_blocks(x: jax.Array) -> jax.Array:  # [B, ...] -> [C, B / C, ...]
        return x.reshape(b // num_blocks, num_blocks, *x.shape[1:]).swapaxes(0, 1)

    @jax.checkpoint
    def attend(block: tuple[jax.Array, ...]) -> jax.Array:
        q_block, k_block, v_block, mask_block = block
        return einsum_attention(q_block, k_block, v_block, causal=causal, mask=mask_block)[0]

    out = jax.lax.map(attend, tuple(to_blocks(x) for x in (q, k, v, mask)))
    return out.swapaxes(0, 1).reshape(q.shape)


def rotary(x: jax.Array, positions: jax.Array, base: float = 10_000.0, hand_backward: bool = False) -> jax.Array:
    """Rotary position embedding (RoFormer, half-split form): x [B, T, H, D], positions int [B, T] -> [B, T, H, D].

    Pairs (x_i, x_{i+D/2}) rotate by positions * base^(-2i/D), so q.k depends only on relative position.
    The cos/sin tables [B, T, 1, D/2] are materialised once (an optimisation barrier) rather than
    recomputed for every element of the rotation. With `hand_backward` the backward pass rotates the gradient
    back (`_rotate`), a CPU kernel like `LayerNorm`'s (benchmarks/RESULTS.md has the same-run A/B): reverse mode
    only, not forward mode (`jax.jvp`).
    """
    half = x.shape[-1] // 2
    frequencies = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions[..., None].astype(jnp.float32) * frequencies  # [B, T, D/2]
    cos, sin = jax.lax.optimization_barrier((jnp.cos(angles)[:, :, None], jnp.sin(angles)[:, :, None]))
    rotate = _rotate if hand_backward else _rotation
    return rotate(x, cos.astype(x.dtype), sin.astype(x.dtype))


def _rotation(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [..., D] rotated pairwise by the angles whose cos, sin [..., D/2] are given (broadcasting)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


_rotate = jax.custom_vjp(_rotation)
# A rotation's transpose is the rotation by minus the angle; cos and sin come from integer positions and get no gradient.
_rotate.defvjp(
    lambda x, cos, sin: (_rotation(x, cos, sin), (cos, sin)),
    lambda tables, grad: (_rotation(grad, tables[0], -tables[1]), None, None),
)


def empty_cache(batch: int, length: int, num_kv_heads: int, head_dim: int, dtype: Dtype = jnp.float32) -> Cache:
    """A key/value cache of `length` slots per layer; `position` -1 marks an empty slot."""
    return {
        "key": jnp.zeros((batch, length, num_kv_heads, head_dim), dtype),
        "value": jnp.zeros((batch, length, num_kv_heads, head_dim), dtype),
        "position": jnp.full((batch, length), -1, jnp.int32),
    }


def write_cache(cache: Cache, k: jax.Array, v: jax.Array, positions: jax.Array) -> Cache:
    """Stores the new k, v [B, T, K, D] at slots `positions % length` (a ring: the oldest slots are overwritten)."""
    slots = positions % cache["position"].shape[1]
    rows = jnp.arange(k.shape[0])[:, None]
    return {
        "key": cache["key"].at[rows, slots].set(k.astype(cache["key"].dtype)),
        "value": cache["value"].at[rows, slots].set(v.astype(cache["value"].dtype)),
        "position": cache["position"].at[rows, slots].set(positions),
    }


def cache_mask(cache: Cache, positions: jax.Array) -> jax.Array:
    """bool [B, T, S]: query at `positions` [B, T] may see filled slots holding earlier or equal positions."""
    slot_positions = cache["position"][:, None, :]
    return (slot_positions >= 0) & (slot_positions <= positions[:, :, None])


class SelfAttention(nn.Module):
    """Multi-head (or grouped-query) self-attention with one fused q/k/v projection.

    Attributes:
      num_heads: N query heads. num_kv_heads: K key/value heads (0: N).
      head_dim: D. use_rotary: rotate q and k by their positions.
      kernel: one of KERNELS (see `dot_product_attention`).
      hand_backward: rotary's hand-written backward pass (a CPU kernel; see `rotary`).
    """

    num_heads: int
    head_dim: int
    num_kv_heads: int = 0
    use_rotary: bool = True
    kernel: str = "xla"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    hand_backward: bool = False

    @nn.compact
    def __call__(
        self, x: jax.Array, positions: jax.Array, *, causal: bool, mask: jax.Array | None = None, cache: Cache | None = None
    ) -> tuple[jax.Array, Cache | None]:
        """x [B, T, E], positions int32 [B, T] -> (y [B, T, E], updated cache).

        With a cache, the new keys/values are written first and the queries attend to
        every slot `cache_mask` allows (prefill and one-token decoding alike); `causal`
        and `mask` then do not apply.
        """
        n, kv = self.num_heads, self.num_kv_heads or self.num_heads
        if n % kv:
            raise GenjaxError(f"num_heads={n} is not a multiple of num_kv_heads={kv}; use a divisor of {n} (0: one per head)")
        qkv = nn.DenseGeneral(
            (n + 2 * kv, self.head_dim),
            kernel_init=partitioned(nn.initializers.lecun_normal(), "embed", "heads", "kv"),
            bias_init=partitioned(nn.initializers.zeros, "heads", "kv"),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="qkv",
        )(x)
        q, k, v = jnp.split(qkv, [n, n + kv], axis=2)
        if self.use_rotary:
            q, k = (rotary(t, positions, hand_backward=self.hand_backward) for t in (q, k))
        if cache is not None:
            cache = write_cache(cache, k, v, positions)
            k, v = cache["key"].astype(self.dtype), cache["value"].astype(self.dtype)
            causal, mask = False, cache_mask(cache, positions)
        out, weights = dot_product_attention(q, k, v, causal=causal, mask=mask, kernel=self.kernel)
        if weights is not None:
            self.sow("intermediates", "attention_weights", weights)
        y = nn.DenseGeneral(
            x.shape[-1],
            axis=(-2, -1),
            kernel_init=partitioned(nn.initializers.lecun_normal(), "heads", "kv", "embed"),
            bias_init=partitioned(nn.initializers.zeros, "embed"),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="out",
        )(out)
        return y, cache


class MLP(nn.Module):
    """E -> hidden (GELU: tanh approximation, or exact erf with `approximate_gelu` False) -> E."""

    hidden: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    approximate_gelu: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x [..., E] -> [..., E]."""
        h = dense(self.hidden, ("embed", "mlp"), self.dtype, self.param_dtype, "up")(x)
        h = nn.gelu(h, approximate=self.approximate_gelu)
        return dense(x.shape[-1], ("mlp", "embed"), self.dtype, self.param_dtype, "down")(h)


def layer_norm(name: str, dtype: Dtype, param_dtype: Dtype, epsilon: float = EPSILON, hand_backward: bool = False) -> nn.Module:
    """`flax.linen.LayerNorm`, or with `hand_backward` genjax's `LayerNorm` (the same function and parameters, a
    hand-written backward pass for XLA:CPU, reverse mode only)."""
    norm = LayerNorm if hand_backward else nn.LayerNorm
    return norm(
        dtype=dtype,
        param_dtype=param_dtype,
        epsilon=epsilon,
        scale_init=partitioned(nn.initializers.ones, "embed"),
        bias_init=partitioned(nn.initializers.zeros, "embed"),
        name=name,
    )


class TransformerBlock(nn.Module):
    """A residual attention sublayer, then a residual MLP sublayer, dropout on each branch.

    Pre-norm (GPT-2, the char LM): x + Attention(LN(x)), then x + MLP(LN(x)).
    Post-norm (`post_norm`, BERT): LN(x + Attention(x)), then LN(x + MLP(x)).
    `hand_backward`: LayerNorm's and rotary's hand-written backward passes (CPU kernels, reverse mode only).
    """

    num_heads: int
    head_dim: int
    mlp_dim: int
    num_kv_heads: int = 0
    use_rotary: bool = True
    dropout_rate: float = 0.0
    kernel: str = "xla"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    post_norm: bool = False
    layer_norm_epsilon: float = EPSILON
    approximate_gelu: bool = True
    hand_backward: bool = False

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        *,
        causal: bool,
        mask: jax.Array | None = None,
        cache: Cache | None = None,
        deterministic: bool = True,
    ) -> tuple[jax.Array, Cache | None]:
        """x [B, T, E] -> ([B, T, E], updated cache); arguments as in `SelfAttention`."""
        norm1, norm2 = (
            layer_norm(name, self.dtype, self.param_dtype, self.layer_norm_epsilon, self.hand_backward) for name in ("norm1", "norm2")
        )
        before_branch = (lambda norm, x: x) if self.post_norm else (lambda norm, x: norm(x))
        after_residual = (lambda norm, x: norm(x)) if self.post_norm else (lambda norm, x: x)
        attention = SelfAttention(
            self.num_heads, self.head_dim, self.num_kv_heads, self.use_rotary, self.kernel, self.dtype, self.param_dtype,
            self.hand_backward, name="attention",
        )
        h, cache = attention(before_branch(norm1, x), positions, causal=causal, mask=mask, cache=cache)
        x = after_residual(norm1, x + nn.Dropout(self.dropout_rate)(h, deterministic))
        mlp = MLP(self.mlp_dim, self.dtype, self.param_dtype, self.approximate_gelu, name="mlp")
        h = mlp(before_branch(norm2, x))
        return after_residual(norm2, x + nn.Dropout(self.dropout_rate)(h, deterministic)), cache
