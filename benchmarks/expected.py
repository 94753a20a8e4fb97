"""The README's CPU figures as stored data: `benchmarks/expected_results.json`, read, checked and rewritten.

Each run in the file has the exact README command (`--workdir runs/NAME`, and where a command reads another
run's workdir, that path too) and the figures read from its `metrics.jsonl`: split, key, step ("final" or a
step number), the expected value, the tolerance and the reason for it, and the README text each figure is
quoted as (a Python format string, filled with the expected value). `benchmarks/reproduce.py` re-runs the
commands; `benchmarks/readme_figures.py` checks the README's results table against the same file.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shlex
from typing import Any, Sequence

from genjax.errors import GenjaxError

PATH = pathlib.Path(__file__).resolve().parent / "expected_results.json"
RUN_KEYS = {"name", "title", "command", "only_with_all", "taken_on", "figures"}
FIGURE_KEYS = {"name", "split", "key", "step", "expected", "tolerance", "tolerance_reason", "readme"}


@dataclasses.dataclass(frozen=True)
class Figure:
    name: str
    split: str
    key: str
    step: str | int  # "final": the split's last row; a number: the row of that step
    expected: float
    tolerance: float
    tolerance_reason: str
    readme: str  # how the README quotes it: a format string such as "test neg_elbo {:.2f}"

    def within(self, value: float) -> bool:
        return abs(value - self.expected) <= self.tolerance

    def quoted(self) -> str:
        return self.readme.format(self.expected)


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    title: str
    command: str
    only_with_all: bool
    taken_on: dict[str, Any]  # hardware, commit, versions, date, note of the run the expected values come from
    figures: tuple[Figure, ...]

    @property
    def workdir(self) -> str:
        """The `--workdir` of the README command (replaced by a fresh temporary folder when it is re-run)."""
        args = shlex.split(self.command)
        for i, arg in enumerate(args):
            if arg == "--workdir" and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith("--workdir="):
                return arg.split("=", 1)[1]
        raise GenjaxError(f"run '{self.name}' in {PATH.name}: its command has no --workdir: {self.command!r}")


def _figure(run: str, entry: dict[str, Any]) -> Figure:
    where = f"{PATH.name}, run '{run}', figure {entry.get('name', '?')!r}"
    if set(entry) != FIGURE_KEYS:
        raise GenjaxError(f"{where}: keys {sorted(entry)}; a figure has exactly {sorted(FIGURE_KEYS)}")
    if not (entry["step"] == "final" or (isinstance(entry["step"], int) and entry["step"] > 0)):
        raise GenjaxError(f"{where}: step {entry['step']!r}; use \"final\" or a positive step number")
    if not entry["tolerance"] >= 0:
        raise GenjaxError(f"{where}: tolerance {entry['tolerance']!r}; it must be a number >= 0")
    try:
        entry["readme"].format(float(entry["expected"]))
    except (ValueError, IndexError, KeyError) as error:
        raise GenjaxError(f"{where}: readme {entry['readme']!r} is not a format string for one number ({error})") from None
    return Figure(**{**entry, "expected": float(entry["expected"]), "tolerance": float(entry["tolerance"])})


def _run(entry: dict[str, Any]) -> Run:
    if set(entry) != RUN_KEYS:
        raise GenjaxError(f"{PATH.name}, run {entry.get('name', '?')!r}: keys {sorted(entry)}; a run has exactly {sorted(RUN_KEYS)}")
    figures = tuple(_figure(entry["name"], f) for f in entry["figures"])
    return Run(**{**entry, "figures": figures})


def load(path: pathlib.Path = PATH) -> list[Run]:
    """The runs of the stored file, checked: known keys, unique names, one --workdir each."""
    runs = [_run(entry) for entry in json.loads(path.read_text())["runs"]]
    names = [run.name for run in runs]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise GenjaxError(f"{path.name}: run names {duplicated} appear more than once; give each run its own name")
    for run in runs:
        run.workdir  # raises when a command has none
    return runs


def needs(run: Run, runs: Sequence[Run]) -> list[Run]:
    """The other runs whose workdir `run`'s command reads (the GAN's metric CNN): they must run first."""
    args = shlex.split(run.command)
    return [other for other in runs if other is not run and any(_names(arg, other.workdir) for arg in args)]


def _names(arg: str, path: str) -> bool:
    return arg == path or arg.endswith("=" + path)


def select(runs: Sequence[Run], only: Sequence[str], everything: bool) -> list[Run]:
    """The runs to re-run, in the file's order: `only` (with what they need), else all with `everything`,
    else those not marked `only_with_all`."""
    by_name = {run.name: run for run in runs}
    unknown = [name for name in only if name not in by_name]
    if unknown:
        raise GenjaxError(f"--only {' '.join(unknown)}: no such run in {PATH.name}; choose from {', '.join(by_name)}")
    if only:
        chosen = set(only)
        pending = list(only)
        while pending:
            for dependency in needs(by_name[pending.pop()], runs):
                if dependency.name not in chosen:
                    chosen.add(dependency.name)
                    pending.append(dependency.name)
        return [run for run in runs if run.name in chosen]
    return [run for run in runs if everything or not run.only_with_all]


def substituted_command(run: Run, workdirs: dict[str, str]) -> list[str]:
    """The run's README command as arguments, every README workdir in it replaced by `workdirs[that path]`."""
    args = shlex.split(run.command)
    out = []
    for arg in args:
        for readme_path, fresh in workdirs.items():
            if arg == readme_path:
                arg = fresh
            elif arg.endswith("=" + readme_path):
                arg = arg[: -len(readme_path)] + fresh
        out.append(arg)
    return out


def updated(path: pathlib.Path, values: dict[str, dict[str, float]], taken_on: dict[str, Any]) -> list[str]:
    """Rewrites `path` with `values` ({run: {figure: value}}) as the expected values and `taken_on` as where
    those runs were taken; tolerances, reasons and README texts stay. Returns one line per figure changed."""
    data = json.loads(path.read_text())
    changes = []
    for entry in data["runs"]:
        if entry["name"] not in values:
            continue
        entry["taken_on"] = taken_on
        for figure in entry["figures"]:
            new = values[entry["name"]].get(figure["name"])
            if new is not None and new != figure["expected"]:
                changes.append(f"{entry['name']} {figure['name']}: {figure['expected']!r} -> {new!r}")
                figure["expected"] = new
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return changes
