"""BERT (Devlin et al. 2018) on the shared stack: post-norm blocks, learned positions, token types, exact GELU,
LayerNorm epsilon 1e-12; a [CLS] tanh pooler with a classifier, and a masked-LM head tied to the word embeddings.

Parameter names follow genjax's stack; genjax/hf/layout.py maps them to and from Hugging Face's
`BertForSequenceClassification` / `BertForMaskedLM`. Shapes: B batch, T tokens, E width, C classes.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from genjax.models.attention import dense, layer_norm, partitioned
from genjax.models.transformer import Stack

class Bert(Stack):
    """The BERT encoder under a head: tokens int [B, T] -> `head`(final hidden states [B, T, E]).

    The heads are the subclasses' `head` methods. Padding: keys where `valid` is False (None: where
    tokens == `pad_id`) get no attention weight; outputs at padded positions exist but mean nothing.
    """

    positions: str = "learned"
    num_token_types: int = 2
    post_norm: bool = True
    layer_norm_epsilon: float = 1e-12
    approximate_gelu: bool = False
    pad_id: int = 0

    def encode(
        self, tokens: jax.Array, token_types: jax.Array | None = None, valid: jax.Array | None = None, deterministic: bool = True
    ) -> jax.Array:
        """tokens int [B, T], token_types int [B, T] (None: all 0), valid bool [B, T] -> final hidden states [B, T, E]."""
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        valid = tokens != self.pad_id if valid is None else valid
        h, _ = self.run_blocks(
            self.embed_tokens(tokens, positions, token_types), positions, causal=False, mask=valid[:, None, :],
            caches=None, deterministic=deterministic,
        )
        return h

    def __call__(
        self,
        tokens: jax.Array,
        token_types: jax.Array | None = None,
        valid: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """The head's logits (float32) over `encode`'s hidden states."""
        return self.head(self.encode(tokens, token_types, valid, deterministic), deterministic)


class BertClassifier(Bert):
    """BERT with the tanh pooler on [CLS] (position 0) and a linear classifier: logits float32 [B, C]."""

    num_classes: int = 2

    def setup(self) -> None:
        super().setup()
        self.pooler = dense(self.width, ("embed", None), self.dtype, self.param_dtype, "pooler")
        self.classifier = dense(self.num_classes, ("embed", None), self.dtype, self.param_dtype, "classifier")

    def head(self, h: jax.Array, deterministic: bool) -> jax.Array:
        """Hidden states [B, T, E] -> class logits float32 [B, C]."""
        pooled = jnp.tanh(self.pooler(h[:, 0]))
        return self.classifier(self.dropout(pooled, deterministic)).astype(jnp.float32)


class BertMaskedLM(Bert):
    """BERT with the masked-LM head: dense + GELU + LayerNorm, then the word embeddings' transpose plus a bias."""

    def setup(self) -> None:
        super().setup()
        self.mlm_dense = dense(self.width, ("embed", None), self.dtype, self.param_dtype, "mlm_dense")
        self.mlm_norm = layer_norm("mlm_norm", self.dtype, self.param_dtype, self.layer_norm_epsilon, self.hand_backward)
        self.mlm_bias = self.param("mlm_bias", partitioned(nn.initializers.zeros, "vocab"), (self.vocab_size,), self.param_dtype)

    def predict_at(
        self, tokens: jax.Array, at: jax.Array, valid: jax.Array | None = None, deterministic: bool = True
    ) -> jax.Array:
        """Token logits float32 [B, K, vocab] at positions `at` int [B, K] only: the head (whose vocabulary-wide
        decoder costs more than a bert-mini encoder per position) runs on the K gathered hidden states, as Google's
        BERT pretraining does with `max_predictions_per_seq`. Same values as `__call__` at those positions."""
        h = jnp.take_along_axis(self.encode(tokens, None, valid, deterministic), at[..., None], axis=1)
        return self.head(h, deterministic)

    def head(self, h: jax.Array, deterministic: bool) -> jax.Array:
        """Hidden states [B, T, E] -> token logits float32 [B, T, vocab]."""
        h = self.mlm_norm(nn.gelu(self.mlm_dense(h), approximate=self.approximate_gelu))
        return self.logits(h) + self.mlm_bias.astype(jnp.float32)
