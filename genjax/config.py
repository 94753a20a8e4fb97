"""Configs as code: command-line overrides of every field, type checks, and saving to the workdir."""

from __future__ import annotations

import ast
import json
import pathlib
from typing import Any, Sequence

import ml_collections

from genjax.errors import GenjaxError

CONFIG_PREFIX = "--config."


def _parse_value(text: str) -> Any:
    """Parses a Python literal (`3`, `1e-3`, `True`, `(1, 2)`); anything else stays a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _coerce(key: str, old: Any, new: Any) -> Any:
    """Returns `new` converted to the type of `old`, or raises naming the key and both types."""
    if old is None or isinstance(old, ml_collections.ConfigDict):
        return new
    if isinstance(old, bool):
        if isinstance(new, bool):
            return new
    elif isinstance(old, int):
        if isinstance(new, int) and not isinstance(new, bool):
            return new
    elif isinstance(old, float):
        if isinstance(new, (int, float)) and not isinstance(new, bool):
            return float(new)
    elif isinstance(old, str):
        return str(new)
    elif isinstance(old, (tuple, list)):
        if isinstance(new, (tuple, list)):
            return type(old)(new)
        if isinstance(new, (int, float)):
            return type(old)([new])
    raise GenjaxError(
        f"config key '{key}' expects {type(old).__name__} (default {old!r}), "
        f"got {new!r} ({type(new).__name__}); pass e.g. --config.{key}={old!r}"
    )


def _set(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
    """Sets `config.<key>` (dotted, an existing field) to `value`, type-checked against its current value."""
    *parents, leaf = key.split(".")
    node = config
    for i, part in enumerate(parents):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise _unknown_key(config, ".".join(parents[: i + 1]))
        node = node[part]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise _unknown_key(config, key)
    with node.unlocked():
        node[leaf] = _coerce(key, node[leaf], value)


def apply_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
    """Sets `config.<key>` (dotted) from its command-line text, type-checked against the default."""
    _set(config, key, _parse_value(text))


def _unknown_key(config: ml_collections.ConfigDict, key: str) -> GenjaxError:
    known = ", ".join(sorted(flatten(config)))
    return GenjaxError(f"unknown config key '{key}'; known keys: {known}")


def flatten(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    """Returns {dotted_key: value} for every leaf of the config."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def parse_overrides(config: ml_collections.ConfigDict, args: Sequence[str]) -> list[str]:
    """Applies every `--config.KEY=VALUE` (or `--config.KEY VALUE`) in `args`; returns the other args."""
    rest: list[str] = []
    args = list(args)
    while args:
        arg = args.pop(0)
        if not arg.startswith(CONFIG_PREFIX):
            rest.append(arg)
            continue
        body = arg[len(CONFIG_PREFIX):]
        if "=" in body:
            key, text = body.split("=", 1)
        elif args:
            key, text = body, args.pop(0)
        else:
            raise GenjaxError(f"config override '{arg}' has no value; write {arg}=VALUE")
        apply_override(config, key, text)
    return rest


def load_saved_config(config: ml_collections.ConfigDict, workdir: pathlib.Path, experiment: str) -> ml_collections.ConfigDict:
    """`config` with every field `<workdir>/config.json` holds set to its saved value: the config a run trained with.

    Saved fields this config lacks are ignored; a missing or unreadable file, or one written by another
    `experiment`, is a GenjaxError.
    """
    path = pathlib.Path(workdir) / "config.json"
    try:
        record = json.loads(path.read_text())
        saved = flatten(ml_collections.ConfigDict(record))
    except FileNotFoundError:
        raise GenjaxError(f"no config.json in workdir '{workdir}'; train first with this --workdir") from None
    except ValueError as error:
        raise GenjaxError(f"{path} is not a readable config ({error}); use the workdir of a finished run") from None
    if record.get("experiment", experiment) != experiment:  # written before the name was saved: checked on restore
        raise GenjaxError(f"workdir '{workdir}' holds a run of experiment '{record['experiment']}', not '{experiment}'; use that experiment's command")
    defaults = flatten(config)
    for key, value in saved.items():
        if key in defaults:
            _set(config, key, value)
    return config
