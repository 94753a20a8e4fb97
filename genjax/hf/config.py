"""A Hugging Face `config.json` <-> the genjax BERT / GPT-2 module it describes.

Which architectures genjax reads (`SOURCES`: the name in config.json's "architectures") and which it builds and
exports (`TARGETS`). Settings genjax does not implement (another activation, relative positions, untied
output weights, ...) stop with the field named. Dropout: BERT's hidden_dropout_prob and GPT-2's resid_pdrop
become the model's dropout rate; attention-probability dropout is not implemented.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from genjax.errors import GenjaxError
from genjax.models.bert import BertClassifier, BertMaskedLM
from genjax.models.gpt2 import GPT2

# the architectures genjax builds and exports, with their modules
TARGETS = {"BertForSequenceClassification": BertClassifier, "BertForMaskedLM": BertMaskedLM, "GPT2LMHeadModel": GPT2}
# architecture in config.json -> the genjax target it loads into by default
SOURCES = {
    "BertForSequenceClassification": "BertForSequenceClassification",
    "BertForMaskedLM": "BertForMaskedLM",
    "BertForPreTraining": "BertForMaskedLM",
    "BertModel": "BertForMaskedLM",
    "GPT2LMHeadModel": "GPT2LMHeadModel",
    "GPT2Model": "GPT2LMHeadModel",
}
# (field, the values genjax implements): anything else stops the load
BERT_REQUIRES = (("hidden_act", ("gelu",)), ("position_embedding_type", ("absolute",)), ("is_decoder", (False,)))
GPT2_REQUIRES = (
    ("activation_function", ("gelu_new", "gelu_pytorch_tanh")),
    ("scale_attn_weights", (True,)),
    ("scale_attn_by_inverse_layer_idx", (False,)),
    ("add_cross_attention", (False,)),
)


def family(architecture: str) -> str:
    """"bert" or "gpt2"."""
    return "gpt2" if architecture.startswith("GPT2") else "bert"


def source_architecture(config: dict[str, Any], source: str) -> str:
    """The architecture config.json names (first of "architectures", else the bare model of its model_type)."""
    named = config.get("architectures") or [{"bert": "BertModel", "gpt2": "GPT2Model"}.get(config.get("model_type"), "")]
    if named[0] not in SOURCES:
        raise GenjaxError(
            f"{source}: architecture '{named[0]}' (model_type '{config.get('model_type')}') is not implemented; "
            f"genjax loads {', '.join(SOURCES)}"
        )
    return named[0]


def _field(config: dict[str, Any], key: str, source: str) -> Any:
    if config.get(key) is None:
        raise GenjaxError(f"{source}: config.json has no '{key}'; add it (see the model's published config.json)")
    return config[key]


def _check(config: dict[str, Any], requires: tuple[tuple[str, tuple], ...], source: str) -> None:
    for key, allowed in (*requires, ("tie_word_embeddings", (True,))):
        if key in config and config[key] not in allowed:
            raise GenjaxError(f"{source}: config.json sets {key}={config[key]!r}; genjax implements only {allowed}")


def model_from_config(config: dict[str, Any], architecture: str, source: str, dtype: Any = jnp.float32) -> nn.Module:
    """The genjax module of `architecture` (one of `TARGETS`) with config.json's sizes; `dtype` is the computation dtype."""
    get = functools.partial(_field, config, source=source)
    if family(architecture) == "gpt2":
        _check(config, GPT2_REQUIRES, source)
        width = get("n_embd")
        return TARGETS[architecture](
            vocab_size=get("vocab_size"), num_layers=get("n_layer"), num_heads=get("n_head"), width=width,
            mlp_dim=config.get("n_inner") or 4 * width, max_len=get("n_positions"),
            dropout_rate=config.get("resid_pdrop", 0.1), layer_norm_epsilon=config.get("layer_norm_epsilon", 1e-5), dtype=dtype,
        )
    _check(config, BERT_REQUIRES, source)
    fields = dict(
        vocab_size=get("vocab_size"), num_layers=get("num_hidden_layers"), num_heads=get("num_attention_heads"),
        width=get("hidden_size"), mlp_dim=get("intermediate_size"), max_len=get("max_position_embeddings"),
        num_token_types=config.get("type_vocab_size", 2), dropout_rate=config.get("hidden_dropout_prob", 0.1),
        layer_norm_epsilon=config.get("layer_norm_eps", 1e-12), pad_id=config.get("pad_token_id") or 0, dtype=dtype,
    )
    if architecture == "BertForSequenceClassification":
        fields["num_classes"] = len(config.get("id2label") or {}) or config.get("num_labels", 2)
    return TARGETS[architecture](**fields)


def config_from_model(model: nn.Module, architecture: str, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config.json of `model` as `architecture`: `base` (e.g. the config it was loaded from) with the model's sizes."""
    config = dict(base or {})
    config.update(architectures=[architecture], tie_word_embeddings=True, vocab_size=model.vocab_size)
    if family(architecture) == "gpt2":
        config.update(
            model_type="gpt2", n_layer=model.num_layers, n_head=model.num_heads, n_embd=model.width, n_inner=model.mlp_dim,
            n_positions=model.max_len, layer_norm_epsilon=model.layer_norm_epsilon, activation_function="gelu_new",
            resid_pdrop=model.dropout_rate,
        )
        for special in ("bos_token_id", "eos_token_id"):  # transformers' default, 50256, is only right for GPT-2's own tokenizer
            config.setdefault(special, None)
        return config
    config.update(
        model_type="bert", num_hidden_layers=model.num_layers, num_attention_heads=model.num_heads, hidden_size=model.width,
        intermediate_size=model.mlp_dim, max_position_embeddings=model.max_len, type_vocab_size=model.num_token_types,
        layer_norm_eps=model.layer_norm_epsilon, hidden_act="gelu", pad_token_id=model.pad_id,
        hidden_dropout_prob=model.dropout_rate,
    )
    if architecture == "BertForSequenceClassification" and len(config.get("id2label") or {}) != model.num_classes:
        config["id2label"] = {str(i): f"LABEL_{i}" for i in range(model.num_classes)}
        config["label2id"] = {label: int(i) for i, label in config["id2label"].items()}
    return config
