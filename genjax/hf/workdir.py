"""A genjax run's workdir in Hugging Face terms: the `model.json` (the config.json of the model it trains) and
`tokenizer.json` it keeps, the model they describe, where `--config.init_from` points, and the export.

    files = workdir_files(model, "BertForMaskedLM", tokenizer)      # Experiment.workdir_files
    model, tokenizer, config = saved_model(workdir, "BertForSequenceClassification")
    export_workdir(out, "BertForSequenceClassification", model, params, tokenizer, config)
"""

from __future__ import annotations

import functools
import json
import pathlib
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from genjax.errors import GenjaxError
from genjax.hf import files
from genjax.hf.config import config_from_model, model_from_config
from genjax.hf.directory import Pretrained, export_pretrained, load_pretrained
from genjax.hf.hub import PREFIX
from genjax.hf.tokenizer import FILE as TOKENIZER_FILE
from genjax.hf.tokenizer import HFTokenizer, load_tokenizer

MODEL_FILE = "model.json"
# where --config.init_from points
HUB, DIRECTORY, WORKDIR = "hub", "directory", "workdir"


def _write_json(record: dict[str, Any], path: pathlib.Path) -> None:
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def workdir_files(model: nn.Module, architecture: str, tokenizer: HFTokenizer) -> dict[str, Callable[[pathlib.Path], None]]:
    """{file name: write(path)} of the model's config.json (as `model.json`) and its tokenizer, for `Experiment.workdir_files`."""
    return {MODEL_FILE: functools.partial(_write_json, config_from_model(model, architecture)), TOKENIZER_FILE: tokenizer.save_file}


def saved_model(workdir: pathlib.Path, architecture: str, dtype: Any = jnp.float32) -> tuple[nn.Module, HFTokenizer, dict[str, Any]]:
    """(the module of `architecture` that `<workdir>/model.json` describes, the workdir's tokenizer, model.json's
    fields); GenjaxError when the workdir lacks either file."""
    workdir = pathlib.Path(workdir)
    path = workdir / MODEL_FILE
    if not path.is_file():
        raise GenjaxError(f"no {MODEL_FILE} in workdir '{workdir}'; train first with this --workdir (the run writes it)")
    config = files.read_json(path)
    tokenizer = load_tokenizer(workdir)
    if tokenizer is None:
        raise GenjaxError(f"no {TOKENIZER_FILE} in workdir '{workdir}'; train first with this --workdir (the run writes it)")
    return model_from_config(config, architecture, str(path), dtype), tokenizer, config


def source_kind(init_from: str) -> str:
    """HUB for `hf:NAME`, WORKDIR for a genjax run's workdir (its config.json names an experiment), else DIRECTORY
    (a Hugging Face model directory); GenjaxError for a path that is no directory."""
    if init_from.startswith(PREFIX):
        return HUB
    directory = pathlib.Path(init_from)
    if not directory.is_dir():
        raise GenjaxError(
            f"init_from '{init_from}' is not a directory; give a genjax pretraining workdir, a Hugging Face model "
            "directory or hf:NAME"
        )
    config = directory / files.CONFIG
    return WORKDIR if config.is_file() and "experiment" in files.read_json(config) else DIRECTORY


def load_hf_start(source: str, architecture: str, rng, dtype: Any = jnp.float32) -> Pretrained:
    """`load_pretrained` of a model directory or `hf:NAME` that must hold its tokenizer (the embeddings mean nothing
    with another one)."""
    pretrained = load_pretrained(source, architecture, rng, dtype)
    if pretrained.tokenizer is None:
        raise GenjaxError(
            f"{source} has no {TOKENIZER_FILE}; its embeddings need the tokenizer they were trained with: save it there "
            "(transformers: AutoTokenizer.from_pretrained(NAME).save_pretrained(DIR))"
        )
    return pretrained


def export_workdir(
    out: pathlib.Path, architecture: str, model: nn.Module, params: Any, tokenizer: HFTokenizer, config: dict[str, Any]
) -> None:
    """Writes the model directory `out` (config.json, model.safetensors, tokenizer.json); GenjaxError, writing
    nothing, when `out` already holds a config.json (another model's directory)."""
    out = pathlib.Path(out)
    if (out / files.CONFIG).exists():
        raise GenjaxError(f"{out / files.CONFIG} exists; export into a new or empty directory")
    export_pretrained(out, architecture, model, params, tokenizer, base_config=config)
