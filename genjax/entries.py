"""What an experiment module declares for the tools that find it, so that a new family is timed and tested without
editing any list:

- `BENCHMARKS = {"name": Benchmark(...), ...}`: the `--model` names of `benchmarks.step_throughput`, which times
  each; its tests and the bf16 check run every one.
- `SMOKE = {"dotted.key": value, ...}`: the settings with which tests run the experiment's command tiny but real
  (`tests/faults.py`); every experiment that declares them is killed and resumed by the preemption tests. A value
  the tests must supply (the GAN's trained metric network) is a `Fixture`.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any, Callable, Iterable

import ml_collections


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One `--model` of benchmarks.step_throughput: the experiment's config with these changes, built by its `build`.

    Attributes:
      recipe: passed as `get_config(recipe)` when set (the char LM's "gpu" recipe).
      overrides: config overrides (dotted key -> command-line text) that select the variant.
      build_kwargs: extra arguments of `build` (the GAN's `with_metrics=False`: no metric CNN to train first).
      forward: `(task, state, batch, rng) -> anything`, the forward passes of one step; None: the task's `loss` of
        network "model". The model FLOPs of a step are 3 times their matmul and convolution FLOPs (genjax/flops.py).
      tokens_per_example: for sequence models, `config -> tokens per example` (tokens/s are reported).
      test_overrides: `--config.*` arguments that make it quick to build and step in tests (fewer examples, one layer).
      module: the declaring module, filled in by `discover`.
    """

    recipe: str = ""
    overrides: dict[str, str] = dataclasses.field(default_factory=dict)
    build_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    forward: Callable[..., Any] | None = None
    tokens_per_example: Callable[[ml_collections.ConfigDict], int] | None = None
    test_overrides: tuple[str, ...] = ()
    module: str = ""


def discover(module_names: Iterable[str]) -> dict[str, Benchmark]:
    """{name: Benchmark (with its `module`)} of every entry the modules' `BENCHMARKS` declare, in their order."""
    found: dict[str, Benchmark] = {}
    for module_name in module_names:
        for name, entry in getattr(importlib.import_module(module_name), "BENCHMARKS", {}).items():
            if name in found:
                raise ValueError(f"benchmark '{name}' is declared by both {found[name].module} and {module_name}; rename one")
            found[name] = dataclasses.replace(entry, module=module_name)
    return found


@dataclasses.dataclass(frozen=True)
class Fixture:
    """A `SMOKE` value the tests supply: the value of the pytest fixture `name` (e.g. a trained network's workdir)."""

    name: str


def smoke_modules(package: str = "experiments") -> list[str]:
    """The modules of `package` that declare `SMOKE`, sorted by name."""
    found = importlib.import_module(package)
    names = [f"{package}.{info.name}" for info in pkgutil.iter_modules(found.__path__)]
    return sorted(name for name in names if hasattr(importlib.import_module(name), "SMOKE"))


def smoke_settings(module_name: str) -> dict[str, Any]:
    """The `SMOKE` settings of the experiment module `module_name` ({} when it declares none)."""
    return dict(getattr(importlib.import_module(module_name), "SMOKE", {}))
