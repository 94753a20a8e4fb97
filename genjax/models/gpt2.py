"""GPT-2 (Radford et al. 2019) on the shared stack: a `DecoderLM` with learned positions, pre-norm blocks,
tanh-approximate GELU, LayerNorm epsilon 1e-5, a final norm and the output head tied to the token embeddings.

KV-cached sampling is genjax/sampling.py's, as for every `DecoderLM`; genjax/hf/layout.py maps the
parameters to and from Hugging Face's `GPT2LMHeadModel`.
"""

from __future__ import annotations

from genjax.models.transformer import DecoderLM


class GPT2(DecoderLM):
    """GPT-2: tokens int [B, T] -> next-token logits float32 [B, T, vocab] (see `DecoderLM`)."""

    positions: str = "learned"
    layer_norm_epsilon: float = 1e-5
