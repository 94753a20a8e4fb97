"""Same-process A/B: config variants of one family's train step, timed in turns.

Command:  python -m benchmarks.compare --model imdb --batch-size 64 --steps 100 [--rounds 20] [--dtype bf16] \
              [--config.KEY=VALUE ...] \
              --variant xla --config.model.attention_kernel=xla \
              --variant blocked --config.model.attention_kernel=blocked
`--config.*` arguments before the first `--variant` apply to every variant; those after `--variant NAME`
to that variant alone. Each variant is built and compiled as in `benchmarks.step_throughput` (its real
jitted train step, a device-resident batch, no input pipeline). Then `rounds` rounds each time one
window of steps per variant, the order rotated every round, so a change of machine load hits every
variant alike: on a shared machine, runs in separate processes minutes apart differ by more than the
few per cent a change is often worth (benchmarks/HISTORY.md).

Prints a table, then one JSON line: per variant the median, 25th and 75th percentile and minimum over
windows of ms per step, the median relative to the first variant's, MFU (as in step_throughput), compile
seconds, the compiled step's temporary memory, and the metrics of its third step from the same start:
variants that compute the same function show the same metrics. The line also names the git commit
of the code timed (`source_revision`, "-dirty" with local changes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Any, Sequence

import jax
import numpy as np

from benchmarks import peaks
from benchmarks.step_throughput import (
    DTYPES, StepSetup, check_sizes, family_of, format_table, make_config, repeat, set_up, source_revision, step_flops,
    step_parser, time_windows,
)
from genjax import cli
from genjax.errors import GenjaxError

FIRST_STEPS = 3  # steps from the fresh state whose last metrics are reported (compilation included)


@dataclasses.dataclass
class Variant:
    """One variant being timed: its compiled step, its running state and its windows."""

    name: str
    setup: StepSetup
    step: Any  # the AOT-compiled train step
    flops: int
    compile_s: float
    temp_mib: float | None
    first_metrics: dict[str, float]
    seconds: list[float] = dataclasses.field(default_factory=list)
    mfu: list[float] = dataclasses.field(default_factory=list)


def split_variants(args: Sequence[str]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(arguments for every variant, [(variant name, its own arguments)]) of a command line."""
    common, variants = [], []
    args = list(args)
    while args:
        arg = args.pop(0)
        if arg == "--variant" or arg.startswith("--variant="):
            name = arg.partition("=")[2] if "=" in arg else (args.pop(0) if args else "")
            if not name or name.startswith("--"):
                raise GenjaxError("--variant needs a name: --variant NAME --config.KEY=VALUE ...")
            variants.append((name, []))
        elif variants:
            variants[-1][1].append(arg)
        else:
            common.append(arg)
    names = [name for name, _ in variants]
    if len(names) < 2 or len(set(names)) < len(names):
        raise GenjaxError(f"give at least two variants with distinct names (got {names}): --variant A ... --variant B ...")
    return common, variants


def prepare(name: str, setup: StepSetup, flops: int) -> Variant:
    """Compiles the variant's step ahead of time and runs its first steps from the fresh state."""
    start = time.perf_counter()
    compiled = setup.train_step.lower(setup.state, setup.batch, setup.train_rng).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    temp_mib = memory.temp_size_in_bytes / 2**20 if memory is not None else None
    state = setup.state
    for _ in range(FIRST_STEPS):
        state, metrics = compiled(state, setup.batch, setup.train_rng)
    first = {key: float(value) for key, value in jax.device_get(metrics).items()}
    setup.state = state
    return Variant(name, setup, compiled, flops, compile_s, temp_mib, first)


def compare(model: str, batch_size: int, steps: int, rounds: int, dtype: str, common: Sequence[str],
            variants: Sequence[tuple[str, Sequence[str]]]) -> dict[str, Any]:
    """Times the variants in turns; returns the figures of the JSON line."""
    family = family_of(model)
    check_sizes(steps, batch_size)
    if rounds < 1:
        raise GenjaxError(f"--rounds ({rounds}) must be >= 1")
    prepared = []
    for name, args in variants:
        config = make_config(family, batch_size, dtype, [*common, *args])
        setup = set_up(family, config)
        flops, _ = step_flops(family, setup.experiment.task, setup.abstract_state, setup.batch, setup.train_rng)
        prepared.append(prepare(name, setup, flops))
    sizes = {v.name: int(v.setup.mesh.devices.size) for v in prepared}
    if len(set(sizes.values())) > 1:
        raise GenjaxError(f"the variants run on different device counts {sizes}; compare on one mesh (drop --config.num_devices from the variants)")
    meters = {}
    for variant in prepared:
        meters.setdefault(variant.setup.config.dtype, peaks.PeakMeter(variant.setup.mesh, variant.setup.config.dtype))
    window = max(1, steps // rounds)
    for v in prepared:  # warm-up, untimed
        v.setup.state, _ = time_windows(v.step, v.setup.state, repeat(v.setup.batch), v.setup.train_rng, window)
    for index in range(rounds):
        order = prepared[index % len(prepared):] + prepared[:index % len(prepared)]
        for v in order:
            v.setup.state, seconds = time_windows(v.step, v.setup.state, repeat(v.setup.batch), v.setup.train_rng, window)
            v.seconds.append(seconds)
        peak = {dtype_name: meter.sample() for dtype_name, meter in meters.items()}
        for v in prepared:
            v.mfu.append(v.flops / v.seconds[-1] / peak[v.setup.config.dtype])
    baseline = float(np.median(prepared[0].seconds))
    device = prepared[0].setup.mesh.devices.flat[0]
    return {
        "model": model,
        "batch_size": batch_size,
        "steps_per_window": window,
        "rounds": rounds,
        "common_args": list(common),
        "variants": [variant_figures(v, args, baseline) for v, (_, args) in zip(prepared, variants)],
        "peak_source": next(iter(meters.values())).source,
        "device_kind": device.device_kind,
        "platform": device.platform,
        "num_devices": int(prepared[0].setup.mesh.devices.size),
        "jax": jax.__version__,
        "source_revision": source_revision(),
    }


def variant_figures(v: Variant, args: Sequence[str], baseline_s: float) -> dict[str, Any]:
    ms = np.asarray(v.seconds) * 1e3
    return {
        "name": v.name,
        "args": list(args),
        "dtype": v.setup.config.dtype,
        "step_ms_median": float(np.median(ms)),
        "step_ms_p25": float(np.percentile(ms, 25)),
        "step_ms_p75": float(np.percentile(ms, 75)),
        "step_ms_min": float(ms.min()),
        "relative_to_first": float(np.median(v.seconds)) / baseline_s,
        "flops_per_step": v.flops,
        "mfu": float(np.median(v.mfu)),
        "compile_s": v.compile_s,
        "temp_mib": v.temp_mib,
        f"metrics_after_{FIRST_STEPS}_steps": v.first_metrics,
    }


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """(flags, the remaining arguments: common `--config.*` and the `--variant` groups)."""
    parser = step_parser(__doc__, 100, "timed steps per variant, over all rounds", "computation dtype (a variant may set --config.dtype)")
    parser.add_argument("--rounds", type=int, default=20, help="turns: each times one window of steps per variant")
    return parser.parse_known_args(argv)


def main(argv: Sequence[str]) -> None:
    flags, rest = parse_args(argv)
    common, variants = split_variants(rest)
    result = compare(flags.model, flags.batch_size, flags.steps, flags.rounds, DTYPES[flags.dtype], common, variants)
    for figures in result["variants"]:
        print(f"--- {figures['name']}")
        print(format_table({k: v for k, v in figures.items() if k != "name"}))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    cli.run_main(main, sys.argv[1:])
