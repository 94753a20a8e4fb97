"""Reads TFDS datasets through `tfds.data_source` (array_record, no TensorFlow) with clear errors.

Small datasets are decoded once per process and kept as numpy arrays: decoding
MNIST's PNGs costs seconds, so no epoch pays for it again.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pathlib
from typing import Iterator

import numpy as np

from genjax.errors import GenjaxError, first_line


def resolve_data_dir(data_dir: str = "") -> str | None:
    """The TFDS data dir: the config's value, else $TFDS_DATA_DIR, else None (TFDS's default)."""
    return data_dir or os.environ.get("TFDS_DATA_DIR") or None


def _tfds():
    import tensorflow_datasets as tfds  # imported lazily: it is slow to import

    return tfds


def _prepare(name: str, data_dir: str | None) -> None:
    """First run with internet: TFDS downloads and prepares array_record files (needs TensorFlow once)."""
    tfds = _tfds()
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        raise GenjaxError(
            f"dataset '{name}' is not prepared in {data_dir or 'the TFDS default dir'}; preparing it needs "
            "TensorFlow once: `pip install -e .[prepare]` (with internet), or set TFDS_DATA_DIR to a folder "
            "that holds the prepared dataset"
        ) from None
    tfds.builder(name, data_dir=data_dir).download_and_prepare(file_format="array_record")


def data_source(name: str, split: str, data_dir: str = "", download: bool = True, features: tuple[str, ...] = ()):
    """Returns the random-access TFDS source of `name`/`split`, preparing it first if allowed.

    Raises GenjaxError for an unknown dataset, a data dir that does not exist,
    a dataset missing from the data dir (when `download` is False), an unknown split
    and a dataset lacking one of the `features` the caller reads (e.g. text asked of MNIST).
    """
    tfds = _tfds()
    directory = resolve_data_dir(data_dir)
    if directory is not None and not pathlib.Path(directory).is_dir():
        raise GenjaxError(
            f"data dir '{directory}' does not exist; set TFDS_DATA_DIR (or --config.data_dir) to the folder "
            "that contains the prepared datasets (e.g. mnist/), or unset it to use TFDS's default download"
        )
    try:
        builder = tfds.builder(name, data_dir=directory)
    except tfds.core.registered.DatasetNotFoundError:
        prepared = sorted(p.name for p in pathlib.Path(directory).iterdir() if p.is_dir()) if directory else []
        raise GenjaxError(
            f"unknown dataset '{name}'; use a TFDS dataset name"
            + (f" (prepared in {directory}: {', '.join(prepared) or 'none'})" if directory else "")
        ) from None
    if not builder.is_prepared():
        if not download:
            raise GenjaxError(
                f"dataset '{name}' is not prepared in data dir '{builder.data_dir_root}'; point TFDS_DATA_DIR at "
                "the folder holding it, or allow the download with --config.download=True"
            )
        _prepare(name, directory)
    splits = list(builder.info.splits.keys())
    if split not in splits:
        raise GenjaxError(f"dataset '{name}' has no split '{split}'; its splits are {splits}")
    missing = [f for f in features if f not in builder.info.features.keys()]
    if missing:
        raise GenjaxError(
            f"dataset '{name}' lacks feature(s) {missing} (it has {sorted(builder.info.features.keys())}); "
            f"choose a dataset with {list(features)}"
        )
    with _damaged_files(builder, split):
        return tfds.data_source(name, split=split, data_dir=directory, download=False)


@contextlib.contextmanager
def _damaged_files(builder, split: str) -> Iterator[None]:
    """Turns array_record's error for a truncated or overwritten file into a GenjaxError naming the split's files."""
    try:
        yield
    except (RuntimeError, OSError, ValueError) as error:
        files = sorted(str(p) for p in pathlib.Path(builder.data_dir).glob(f"*-{split}.*"))
        raise GenjaxError(
            f"dataset '{builder.name}' split '{split}' cannot be read from {', '.join(files) or builder.data_dir} "
            f"({first_line(error)}); the file is damaged: prepare the dataset again (delete {builder.data_dir} and rerun "
            "with --config.download=True and internet) or copy it anew"
        ) from None


def read_split(name: str, split: str, data_dir: str = "", download: bool = True, features: tuple[str, ...] = ()) -> list[dict]:
    """Every record of `name`/`split`, decoded (see `data_source`); GenjaxError naming the files if one is damaged."""
    source = data_source(name, split, data_dir, download, features)
    with _damaged_files(_tfds().builder(name, data_dir=resolve_data_dir(data_dir)), split):
        return source.__getitems__(range(len(source)))


@functools.lru_cache(maxsize=8)
def image_arrays(name: str, split: str, data_dir: str = "", download: bool = True) -> dict[str, np.ndarray]:
    """The whole split decoded once: {'image': uint8 [N, H, W, C], 'label': int32 [N]}."""
    records = read_split(name, split, data_dir, download, features=("image", "label"))
    return {
        "image": np.stack([r["image"] for r in records]),
        "label": np.asarray([r["label"] for r in records], np.int32),
    }


@functools.lru_cache(maxsize=8)
def text(name: str, split: str, data_dir: str = "", download: bool = True) -> str:
    """A single-text split (e.g. tiny_shakespeare) as one UTF-8 string."""
    return "".join(r["text"].decode("utf-8") for r in read_split(name, split, data_dir, download, features=("text",)))


@functools.lru_cache(maxsize=8)
def labelled_texts(name: str, split: str, data_dir: str = "", download: bool = True) -> tuple[list[str], np.ndarray]:
    """A text-classification split (e.g. imdb_reviews): (texts, int32 labels [N])."""
    records = read_split(name, split, data_dir, download, features=("text", "label"))
    return [r["text"].decode("utf-8") for r in records], np.asarray([r["label"] for r in records], np.int32)
