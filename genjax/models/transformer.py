"""Transformers from the attention blocks: the shared embedding + block stack, a decoder-only language model
(with a KV cache) and an encoder classifier. BERT (genjax/models/bert.py) and GPT-2 (genjax/models/gpt2.py)
are this stack with their own settings.

The stack's blocks can be rematerialised (`remat`: their activations recomputed in the backward pass instead
of kept) and scanned (`scan_layers`: one block traced and compiled once, its parameters stacked on a leading
'layers' axis, so compile time does not grow with depth); neither changes the numbers.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from genjax.errors import GenjaxError

from genjax.models.attention import POSITIONS, Cache, Dtype, TransformerBlock, empty_cache, layer_norm, partitioned
from genjax.models.layer_norm import EPSILON


# What a rematerialised block keeps for the backward pass: "none" (no remat: every activation), "full" (only its
# inputs; the whole block is recomputed), "dots" (the outputs of its weight matmuls; the rest is recomputed).
REMAT_POLICIES: dict[str, Callable[..., bool] | None] = {
    "full": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
REMAT_NAMES = ("none", *REMAT_POLICIES)
LAYERS_AXIS = "layers"  # the logical name of the stacked-layers axis of scanned parameters (never sharded)
SCANNED_BLOCKS = "blocks"  # the parameter name of the scanned blocks; unrolled ones are block0, block1, ...


def check_remat(name: str) -> None:
    """GenjaxError unless `name` is one of REMAT_NAMES."""
    if name not in REMAT_NAMES:
        raise GenjaxError(f"unknown remat '{name}'; choose one of {REMAT_NAMES} (e.g. --config.model.remat=full)")


class Embed(nn.Embed):
    """`nn.Embed` that gathers rows in the parameter dtype and casts them to `dtype` afterwards.

    The forward values are the same as gathering from a `dtype` copy of the table, but the
    gradient's scatter-add runs in float32: a bf16 scatter-add of many tokens into a few rows is
    slow on GPU (14x for 16,384 tokens into 65 rows on an H100, benchmarks/HISTORY.md) and rounds
    each accumulation to bf16.
    """

    def __call__(self, inputs: jax.Array) -> jax.Array:
        """int [...] -> [..., features] in `dtype`."""
        return jnp.take(self.embedding, inputs, axis=0).astype(self.dtype)


class Stack(nn.Module):
    """Token (+ learned position, + token type) embedding, `num_layers` uniform blocks and their norm.

    Pre-norm blocks (default) end with a final norm; post-norm blocks (`post_norm`, BERT) start from a
    norm of the embeddings instead. `num_token_types` > 0 adds token-type (segment) embeddings.
    `remat` (one of REMAT_NAMES) rematerialises each block; `scan_layers` runs the blocks as one `nn.scan` whose
    parameters are stacked [num_layers, ...] under SCANNED_BLOCKS (`stack_blocks` converts unrolled ones).
    `hand_backward`: LayerNorm's and rotary's hand-written backward passes, CPU kernels (reverse mode only;
    see genjax/models/layer_norm.py); off, the whole model differentiates in forward and reverse mode.
    """

    vocab_size: int
    num_layers: int
    num_heads: int
    width: int
    mlp_dim: int
    max_len: int
    num_kv_heads: int = 0
    positions: str = "rotary"
    dropout_rate: float = 0.0
    attention_kernel: str = "xla"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    num_token_types: int = 0
    post_norm: bool = False
    layer_norm_epsilon: float = EPSILON
    approximate_gelu: bool = True
    remat: str = "none"
    scan_layers: bool = False
    hand_backward: bool = False

    def setup(self) -> None:
        check_remat(self.remat)
        if self.positions not in POSITIONS:
            raise GenjaxError(f"unknown positions '{self.positions}'; choose one of {POSITIONS}")
        if self.width % self.num_heads:
            raise GenjaxError(f"width={self.width} is not a multiple of num_heads={self.num_heads}; use a num_heads dividing the width")
        self.embed = Embed(
            self.vocab_size,
            self.width,
            embedding_init=partitioned(nn.initializers.normal(0.02), "vocab", "embed"),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        if self.positions == "learned":
            self.position_embed = self._table(self.max_len)
        if self.num_token_types:
            self.token_type_embed = self._table(self.num_token_types)
        def block(name: str) -> TransformerBlock:
            return TransformerBlock(
                self.num_heads, self.width // self.num_heads, self.mlp_dim, self.num_kv_heads, self.positions == "rotary",
                self.dropout_rate, self.attention_kernel, self.dtype, self.param_dtype, self.post_norm,
                self.layer_norm_epsilon, self.approximate_gelu, self.hand_backward, name=name,
            )

        # Scanned: one block whose parameters `run_blocks`' nn.scan stacks; unrolled: one block per layer.
        self.blocks = block(SCANNED_BLOCKS) if self.scan_layers else [block(f"block{i}") for i in range(self.num_layers)]
        self.dropout = nn.Dropout(self.dropout_rate)
        if self.post_norm:
            self.embed_norm = layer_norm("embed_norm", self.dtype, self.param_dtype, self.layer_norm_epsilon, self.hand_backward)
        else:
            self.final_norm = layer_norm("final_norm", self.dtype, self.param_dtype, self.layer_norm_epsilon, self.hand_backward)

    def _table(self, rows: int) -> Embed:
        """An embedding table [rows, E] of positions or token types (rows not sharded)."""
        return Embed(
            rows,
            self.width,
            embedding_init=partitioned(nn.initializers.normal(0.02), None, "embed"),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )

    def add_positions(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        """Adds the learned position embeddings (rotary ones act inside attention): [B, T, E] -> [B, T, E]."""
        return x + self.position_embed(positions) if self.positions == "learned" else x

    def embed_tokens(self, tokens: jax.Array, positions: jax.Array, token_types: jax.Array | None = None) -> jax.Array:
        """int [B, T] (tokens, positions, token types: None is type 0) -> [B, T, E]."""
        x = self.add_positions(self.embed(tokens), positions)
        if self.num_token_types:
            x = x + self.token_type_embed(jnp.zeros_like(tokens) if token_types is None else token_types)
        return x

    def run_blocks(
        self,
        x: jax.Array,
        positions: jax.Array,
        *,
        causal: bool,
        mask: jax.Array | None,
        caches: list[Cache] | None,
        deterministic: bool,
    ) -> tuple[jax.Array, list[Cache] | None]:
        """Embedded x [B, T, E] -> normed hidden states [B, T, E] (and the updated per-layer caches)."""
        x = self.dropout(self.embed_norm(x) if self.post_norm else x, deterministic)

        def layer(block: TransformerBlock, x: jax.Array, cache: Cache | None) -> tuple[jax.Array, Cache | None]:
            """One block: (its module, hidden states [B, T, E], its cache) -> (hidden states, updated cache)."""
            return block(x, positions, causal=causal, mask=mask, cache=cache, deterministic=deterministic)

        if self.remat != "none":
            # Inside a scan no common subexpression can cross iterations: CSE prevention would only cost speed.
            layer = nn.remat(layer, policy=REMAT_POLICIES[self.remat], prevent_cse=not self.scan_layers)
        if self.scan_layers:
            scanned = nn.scan(
                layer,
                variable_axes={True: 0},  # parameters (and sown intermediates) stacked on a leading layers axis
                split_rngs={True: True},  # each layer its own initialisation and dropout keys
                length=self.num_layers,
                metadata_params={nn.PARTITION_NAME: LAYERS_AXIS},
            )
            stacked = None if caches is None else jax.tree.map(lambda *per_layer: jnp.stack(per_layer), *caches)
            x, stacked = scanned(self.blocks, x, stacked)
            new_caches = None if caches is None else [jax.tree.map(lambda c, i=i: c[i], stacked) for i in range(self.num_layers)]
        else:
            new_caches = []
            for i, block in enumerate(self.blocks):
                x, cache = layer(block, x, None if caches is None else caches[i])
                new_caches.append(cache)
        return x if self.post_norm else self.final_norm(x), None if caches is None else new_caches

    def logits(self, h: jax.Array) -> jax.Array:
        """Output head tied to the token embedding: [B, T, E] -> float32 [B, T, vocab]."""
        return self.embed.attend(h).astype(jnp.float32)


def stack_blocks(params: dict[str, Any], num_layers: int) -> dict[str, Any]:
    """A stack's parameters with unrolled blocks `block0 ... block{L-1}` -> the same with them stacked [L, ...] under
    SCANNED_BLOCKS, as `scan_layers=True` holds them; found at any depth (a classifier's `encoder`). Same numbers."""
    if not isinstance(params, dict):
        return params
    names = [f"block{i}" for i in range(num_layers)]
    out = {k: stack_blocks(v, num_layers) for k, v in params.items() if k not in names}
    if all(name in params for name in names):
        out[SCANNED_BLOCKS] = jax.tree.map(lambda *layers: jnp.stack(layers), *(params[name] for name in names))
    return out


def unstack_blocks(params: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `stack_blocks`: scanned blocks [L, ...] -> `block0 ... block{L-1}` (for unrolled models, HF export)."""
    if not isinstance(params, dict):
        return params
    out = {k: unstack_blocks(v) for k, v in params.items() if k != SCANNED_BLOCKS}
    if SCANNED_BLOCKS in params:
        layers = jax.tree.leaves(params[SCANNED_BLOCKS])[0].shape[0]
        out.update({f"block{i}": jax.tree.map(lambda x, i=i: x[i], params[SCANNED_BLOCKS]) for i in range(layers)})
    return out


class DecoderLM(Stack):
    """Decoder-only language model (GPT): tokens int [B, T] -> next-token logits float32 [B, T, vocab].

    `max_len` bounds positions only with learned positions; rotary ones extrapolate,
    so `decode` can run past the training context with a sliding-window cache.
    """

    def __call__(self, tokens: jax.Array, deterministic: bool = True, valid: jax.Array | None = None) -> jax.Array:
        """`valid` bool [B, T]: False at padding, which no query attends to (None: no padding)."""
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        mask = None if valid is None else valid[:, None, :]
        h, _ = self.run_blocks(
            self.embed_tokens(tokens, positions), positions, causal=True, mask=mask, caches=None, deterministic=deterministic
        )
        return self.logits(h)

    def decode(self, tokens: jax.Array, positions: jax.Array, caches: list[Cache]) -> tuple[jax.Array, list[Cache]]:
        """Cached forward of new tokens int [B, T] at `positions` [B, T]: (logits [B, T, vocab], updated caches).

        Each query sees the cached keys of earlier positions (the last `cache length`
        of them) and the new ones up to itself.
        """
        h, caches = self.run_blocks(
            self.embed_tokens(tokens, positions), positions, causal=False, mask=None, caches=caches, deterministic=True
        )
        return self.logits(h), caches


def init_caches(model: DecoderLM, batch: int, length: int) -> list[Cache]:
    """Empty per-layer KV caches of `length` slots for `model`."""
    kv_heads = model.num_kv_heads or model.num_heads
    return [empty_cache(batch, length, kv_heads, model.width // model.num_heads, model.dtype) for _ in range(model.num_layers)]


class EncoderClassifier(nn.Module):
    """Bidirectional encoder over padded tokens (0 = padding) -> class logits float32 [B, num_classes].

    `pooling` "mean" averages the non-padding positions; "cls" prepends a learned
    [CLS] vector and reads its final state. Padding never changes the output.
    """

    vocab_size: int
    num_layers: int
    num_heads: int
    width: int
    mlp_dim: int
    max_len: int
    num_classes: int = 2
    num_kv_heads: int = 0
    positions: str = "learned"
    pooling: str = "mean"
    dropout_rate: float = 0.0
    attention_kernel: str = "xla"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: str = "none"
    scan_layers: bool = False
    hand_backward: bool = False

    @nn.compact
    def __call__(self, tokens: jax.Array, deterministic: bool = True) -> jax.Array:
        if self.pooling not in ("mean", "cls"):
            raise GenjaxError(f"unknown pooling '{self.pooling}'; choose 'mean' or 'cls'")
        extra = int(self.pooling == "cls")
        stack = Stack(
            self.vocab_size, self.num_layers, self.num_heads, self.width, self.mlp_dim, self.max_len + extra,
            self.num_kv_heads, self.positions, self.dropout_rate, self.attention_kernel, self.dtype, self.param_dtype,
            remat=self.remat, scan_layers=self.scan_layers, hand_backward=self.hand_backward, name="encoder",
        )
        valid = tokens != 0
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1] + extra), (tokens.shape[0], tokens.shape[1] + extra))
        x = stack.embed_tokens(tokens, positions[:, extra:])
        if extra:
            cls = self.param("cls", partitioned(nn.initializers.normal(0.02), "embed"), (self.width,), self.param_dtype)
            cls = jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, self.width))
            x = jnp.concatenate([stack.add_positions(cls, positions[:, :1]), x], axis=1)
            valid = jnp.concatenate([jnp.ones_like(valid[:, :1]), valid], axis=1)
        h, _ = stack.run_blocks(x, positions, causal=False, mask=valid[:, None, :], caches=None, deterministic=deterministic)
        if extra:
            pooled = h[:, 0]
        else:
            weights = valid[..., None].astype(h.dtype)
            pooled = (h * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
        pooled = nn.Dropout(self.dropout_rate)(pooled, deterministic)
        return nn.Dense(
            self.num_classes,
            kernel_init=partitioned(nn.initializers.lecun_normal(), "embed", None),
            bias_init=partitioned(nn.initializers.zeros, None),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="head",
        )(pooled).astype(jnp.float32)
