"""Re-run the README's CPU results and compare each figure with the value stored in the repository.

Command:  python -m benchmarks.reproduce [--all] [--only NAME ...] [--update] [--keep-workdirs]
Runs (benchmarks/expected_results.json): by default those that take minutes (the VAE, the char LM, IMDb and
the MLP); `--all` adds those that take an hour or more (the conv VAE, the CNN, the GAN); `--only NAME ...` runs
the named ones and whatever they read (the GAN's metric CNN).

Each run is the README's exact command in a fresh subprocess, with its workdir replaced by a new temporary
folder. The figures are read from that run's `metrics.jsonl` (a split, a key, the final row or a given step)
and compared with the stored value within the tolerance stored next to it. Prints a table (figure, expected,
got, tolerance, ok, wall time, and whether every stored digit came back: on the machine type, core count and
jax/jaxlib the value was taken with, it does) with the CPU, the jax/jaxlib/flax versions and the git commit, then
one JSON line; exits 1 when a figure is outside its tolerance or a run failed.

`--update` writes the figures of this run into the stored file as the new expected values (for a change
that moves a figure on purpose); then `pytest tests/test_reproduce.py` names every README figure to edit.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

from benchmarks import expected
from benchmarks.step_throughput import source_revision
from genjax import cli
from genjax.errors import GenjaxError
from genjax.metrics_log import read_metrics

REPO = pathlib.Path(__file__).resolve().parent.parent
LOG_TAIL_LINES = 20


@dataclasses.dataclass
class Outcome:
    run: str
    figure: expected.Figure
    got: float | None  # None: the run failed, or its metrics.jsonl lacks the figure
    wall_s: float
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.got is not None and self.figure.within(self.got)


def cpu_description() -> str:
    """The CPU model with its family/model numbers, the AVX-512 flag and the cores this process may use:
    XLA:CPU's kernels and thread count, hence the rounding of every figure, depend on all of them."""
    fields: dict[str, str] = {}
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus"
    flags = fields.get("flags", "").split()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{fields.get('model name', '?')} (family {fields.get('cpu family', '?')} model {fields.get('model', '?')}, {isa}), {cores} core{'s' if cores != 1 else ''} usable"


def versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in ("jax", "jaxlib", "flax", "optax")}


def read_figure(workdir: pathlib.Path, figure: expected.Figure) -> float:
    """The figure's value in `workdir/metrics.jsonl`; a GenjaxError naming what the file has instead."""
    rows = read_metrics(workdir) if (workdir / "metrics.jsonl").exists() else []
    if not rows:
        raise GenjaxError(f"no metrics.jsonl rows in {workdir}")
    of_split = [row for row in rows if row["split"] == figure.split]
    if not of_split:
        splits = sorted({row["split"] for row in rows})
        if figure.split == "test":
            raise GenjaxError(f"no rows of split 'test' in {workdir} (the run logged {splits}): test is scored once, when the run ends; "
                              "a run stopped early (SIGTERM, Ctrl-C) resumes with the same command")
        raise GenjaxError(f"no rows of split '{figure.split}' (the run logged {splits}): fix the figure's split in {expected.PATH.name}")
    steps = [row for row in of_split if row["step"] == figure.step] if figure.step != "final" else [max(of_split, key=lambda r: r["step"])]
    if not steps:
        raise GenjaxError(f"no '{figure.split}' row at step {figure.step} (steps logged: {sorted({r['step'] for r in of_split})})")
    row = steps[-1]
    if figure.key not in row:
        keys = sorted(k for k in row if k not in ("step", "split"))
        raise GenjaxError(f"no key '{figure.key}' in the '{figure.split}' row of step {row['step']} (keys: {keys}): fix the figure's key in {expected.PATH.name}")
    return float(row[figure.key])


def run_command(run: expected.Run, workdirs: dict[str, str], log: pathlib.Path) -> tuple[int, float]:
    """Runs the command (output to `log`) from the repository root; (exit status, wall seconds)."""
    args = expected.substituted_command(run, workdirs)
    if args[:1] == ["python"]:
        args[0] = sys.executable  # the interpreter (and virtual environment) running this command
    print(f"[{run.name}] {run.title}: {' '.join(args)}", flush=True)
    start = time.perf_counter()
    with log.open("w") as out:
        status = subprocess.run(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    return status, time.perf_counter() - start


def reproduce(runs: Sequence[expected.Run], root: pathlib.Path) -> list[Outcome]:
    """Runs each of `runs` in its own folder under `root` and reads its figures."""
    workdirs = {run.workdir: str(root / run.name) for run in runs}
    outcomes = []
    for run in runs:
        log = root / f"{run.name}.log"
        status, wall = run_command(run, workdirs, log)
        if status != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])
            print(f"[{run.name}] exited with status {status}; the end of {log}:\n{tail}", flush=True)
        for figure in run.figures:
            try:
                got, problem = read_figure(pathlib.Path(workdirs[run.workdir]), figure), ""
            except (GenjaxError, OSError, ValueError) as error:
                got, problem = None, f"exit {status}: {error}" if status else str(error)
            outcomes.append(Outcome(run.name, figure, got, wall, problem))
        print(f"[{run.name}] {wall:.0f} s: " + ", ".join(f"{o.figure.name} {o.got}" for o in outcomes if o.run == run.name), flush=True)
    return outcomes


def format_table(outcomes: Sequence[Outcome], context: dict[str, Any]) -> str:
    header = ("run", "figure", "expected", "got", "tolerance", "ok", "identical", "wall time")
    rows = [header]
    for o in outcomes:
        got = f"{o.got:.6g}" if o.got is not None else "-"
        identical = "-" if o.got is None else "yes" if o.got == o.figure.expected else "no"  # the same machine type gives every digit
        rows.append((o.run, o.figure.name, f"{o.figure.expected:.6g}", got, f"{o.figure.tolerance:g}", "yes" if o.ok else "NO",
                     identical, f"{o.wall_s / 60:.1f} min"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines += [f"{o.run} {o.figure.name}: {o.problem}" for o in outcomes if o.problem]
    lines += [f"{key}: {value}" for key, value in context.items()]
    return "\n".join(lines)


def summary(outcomes: Sequence[Outcome], context: dict[str, Any]) -> dict[str, Any]:
    figures = [
        {"run": o.run, "figure": o.figure.name, "expected": o.figure.expected, "got": o.got, "tolerance": o.figure.tolerance,
         "ok": o.ok, "identical": o.got == o.figure.expected, "wall_s": round(o.wall_s, 1), **({"problem": o.problem} if o.problem else {})}
        for o in outcomes
    ]
    return {"ok": all(o.ok for o in outcomes), "figures": figures, **context}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reproduce", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--all", action="store_true", help="also the runs of an hour or more (conv VAE, CNN, GAN)")
    parser.add_argument("--only", nargs="+", default=[], metavar="NAME", help="only these runs (and the runs they read)")
    parser.add_argument("--update", action="store_true", help=f"store this run's figures as the expected values in {expected.PATH.name}")
    parser.add_argument("--keep-workdirs", action="store_true", help="keep the runs' temporary workdirs and logs (printed at the end)")
    flags = parser.parse_args(argv)
    if flags.all and flags.only:
        parser.error("--all and --only exclude each other: --only names the runs to do, --all does every run")
    return flags


def main(argv: Sequence[str]) -> int:
    flags = parse_args(argv)
    runs = expected.select(expected.load(), flags.only, flags.all)
    context = {"cpu": cpu_description(), "versions": versions(), "commit": source_revision(), "python": platform.python_version()}
    if os.environ.get("XLA_FLAGS"):
        context["XLA_FLAGS"] = os.environ["XLA_FLAGS"]  # the runs inherit it, and flags can change the figures
    root = pathlib.Path(tempfile.mkdtemp(prefix="genjax_reproduce_"))
    try:
        outcomes = reproduce(runs, root)
    finally:
        if flags.keep_workdirs:
            print(f"workdirs and logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(format_table(outcomes, context))
    print(json.dumps(summary(outcomes, context)), flush=True)
    if flags.update:
        store(outcomes, context)
    return 0 if all(o.ok for o in outcomes) else 1


def store(outcomes: Sequence[Outcome], context: dict[str, Any]) -> None:
    missing = [o.figure.name for o in outcomes if o.got is None]
    if missing:
        raise GenjaxError(f"--update: no value for {', '.join(missing)} (see above); nothing was written, fix the run first")
    values: dict[str, dict[str, float]] = {}
    for o in outcomes:
        values.setdefault(o.run, {})[o.figure.name] = o.got
    taken_on = {"hardware": context["cpu"], "commit": context["commit"], "versions": context["versions"], "date": time.strftime("%Y-%m-%d")}
    changes = expected.updated(expected.PATH, values, taken_on)
    print(f"updated {expected.PATH.name}: " + ("; ".join(changes) if changes else "no value changed"))
    print("then: python -m pytest tests/test_reproduce.py names every README figure that no longer matches")


if __name__ == "__main__":
    cli.run_main(lambda argv: sys.exit(main(argv)))
