"""`hf:NAME` -> a local model directory, fetched from the Hugging Face hub with `huggingface_hub` (or its cache)."""

from __future__ import annotations

import pathlib

import huggingface_hub
import huggingface_hub.errors

from genjax.errors import GenjaxError, first_line

PREFIX = "hf:"
# what a genjax load reads; the hub's other files (TensorFlow, Flax, ONNX weights) are not downloaded
FILES = ["config.json", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors", "tokenizer.json"]


def model_directory(source: str | pathlib.Path) -> pathlib.Path:
    """`source` as a directory: a path as it is, `hf:NAME` downloaded (safetensors weights only)."""
    if not str(source).startswith(PREFIX):
        directory = pathlib.Path(source)
        if not directory.is_dir():
            raise GenjaxError(f"{directory} is not a directory; give a Hugging Face model directory or hf:NAME")
        return directory
    name = str(source)[len(PREFIX) :]
    try:
        return pathlib.Path(huggingface_hub.snapshot_download(name, allow_patterns=FILES))
    except (OSError, ValueError, huggingface_hub.errors.HfHubHTTPError) as error:
        raise GenjaxError(
            f"cannot fetch '{name}' from the Hugging Face hub ({first_line(error)[:120]}); on a machine with internet run "
            f"`hf download {name} --local-dir DIR`, copy DIR here and pass DIR instead of {source}"
        ) from None
