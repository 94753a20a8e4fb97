"""Reading and writing the files of a Hugging Face model directory: config.json and the weights
(model.safetensors, its sharded form with model.safetensors.index.json, or PyTorch's pytorch_model.bin)."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np
import safetensors
import safetensors.flax
import safetensors.numpy

from genjax.errors import GenjaxError, first_line

CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH = "pytorch_model.bin"


def read_json(path: pathlib.Path) -> dict[str, Any]:
    """The JSON object in `path`; a missing or unreadable file is a `GenjaxError` naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GenjaxError(f"{path} is missing; a Hugging Face model directory holds {CONFIG} and its weights") from None
    except (OSError, ValueError) as error:
        raise GenjaxError(f"{path} is not readable JSON ({first_line(error)}); download or export it again") from None


def read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    """All tensors of one safetensors file as numpy arrays (bfloat16 ones as float32)."""
    try:
        try:
            return safetensors.numpy.load_file(path)
        except TypeError:  # a dtype numpy lacks (bfloat16): read through jax
            return {name: np.asarray(tensor, np.float32) for name, tensor in safetensors.flax.load_file(path).items()}
    except (safetensors.SafetensorError, OSError, ValueError, TypeError) as error:
        raise GenjaxError(f"{path} is not a readable safetensors file ({first_line(error)}); download or export it again") from None


def read_pytorch(path: pathlib.Path) -> dict[str, np.ndarray]:
    """All tensors of a PyTorch state dict (read with torch, weights only)."""
    try:
        import torch
    except ImportError:
        raise GenjaxError(
            f"{path} is a PyTorch checkpoint and reading it needs torch: pip install torch, "
            f"or convert it to {SAFETENSORS}"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file (RuntimeError, UnpicklingError, EOFError)
        raise GenjaxError(f"{path} is not a readable PyTorch checkpoint ({first_line(error)}); download it again") from None
    return {name: tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy() for name, tensor in state.items()}


def read_weights(directory: pathlib.Path) -> tuple[dict[str, np.ndarray], pathlib.Path]:
    """(tensors by name, the file they came from) of the model directory, safetensors first."""
    if (directory / SAFETENSORS).is_file():
        return read_safetensors(directory / SAFETENSORS), directory / SAFETENSORS
    if (directory / SAFETENSORS_INDEX).is_file():
        shards = sorted(set(read_json(directory / SAFETENSORS_INDEX).get("weight_map", {}).values()))
        tensors = {}
        for shard in shards:
            tensors.update(read_safetensors(directory / shard))
        return tensors, directory / SAFETENSORS_INDEX
    if (directory / PYTORCH).is_file():
        return read_pytorch(directory / PYTORCH), directory / PYTORCH
    raise GenjaxError(f"{directory} holds no weights: expected {SAFETENSORS}, {SAFETENSORS_INDEX} or {PYTORCH}")


def write_safetensors(tensors: dict[str, np.ndarray], path: pathlib.Path) -> None:
    """Writes `tensors` with the metadata `transformers` requires ({"format": "pt"})."""
    safetensors.numpy.save_file(tensors, path, metadata={"format": "pt"})
