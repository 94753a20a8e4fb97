"""Step time, throughput and MFU of the library's real jitted train step, for one model family.

Command:  python -m benchmarks.step_throughput --model vae --batch-size 128 --steps 200
          [--dtype bf16] [--data real] [--matmul-bound] [--config.KEY=VALUE ...]
          python -m benchmarks.step_throughput --model gpt2 --size 124m --seq-len 1024 --batch-size 16 --dtype bf16
          python -m benchmarks.step_throughput --model bert --size base --seq-len 512 --batch-size 32 --dtype bf16
          [--config.model.remat=full|dots] [--config.model.scan_layers=True] [--config.mesh.tensor=2]
          [--fit 80]: instead of timing, the largest batch whose compiled step needs at most 80 GiB per device
Prints a table, then one JSON line (the last line of stdout) with every figure, the `--config.*`
arguments and the git commit of the code timed, so that a figure names what produced it.

The step is the one the experiments train with: the experiment comes from
`experiments.<module>.build(config)`, its state is laid out by `genjax.loop.state_layout`
and the step jitted by `genjax.loop.compile_steps` (state donated, shardings explicit).
`--data synthetic` (default) feeds one device-resident batch to every step; `--data real`
also times the real input pipeline (`device_prefetch` over the experiment's train loader),
alternating windows of both so that a change of machine load hits both alike.
The first call (trace, compile, one step) and a few warm-up steps are not timed; the timed
steps run in windows, each closed by `block_until_ready`, and the median and 90th percentile
are over the windows' per-step times. MFU is model FLOPs per second over the peak of all devices
(benchmarks/peaks.py: published, or on CPU the fastest of three large matmuls timed after every window,
in the same process and under the same load), the median over windows. FLOP conventions: genjax/flops.py
(`FLOPS_FORMULA`). Memory: what the compiled step says it needs per device (`memory_analysis()`: arguments,
outputs, temporaries, less the donated buffers it reuses) next to the device's own peak where it reports one
(`memory_stats()`; none on CPU); a step predicted above the device's limit stops before it runs.
`--matmul-bound` adds the step's matmul-only bound and the MFU ceiling it implies (benchmarks/matmul_bound.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import pathlib
import pkgutil
import subprocess
import sys
import time
from typing import Any, Callable, Iterator, Sequence

import flax
import jax
import jaxlib
import ml_collections
import numpy as np
import optax

import experiments
from benchmarks import matmul_bound, peaks
from genjax import cli, cpu_tuning, device_memory, entries, flops, loop
from genjax.checkpoint import abstract_with_shardings
from genjax import config as config_lib
from genjax import sharding as sharding_lib
from genjax.data.loader import device_prefetch, to_global
from genjax.entries import Benchmark
from genjax.errors import GenjaxError
from genjax.state import TrainState
from genjax.task import Experiment

DTYPES = {"f32": "float32", "bf16": "bfloat16"}
FLOPS_FORMULA = (
    "3 x the forward pass's matmul FLOPs, counted from its jaxpr (genjax/flops.py): for a transformer "
    "6N + 12 L T E per token (N: matmul weights, the tied output layer included; L layers, T context, E width: "
    "attention scores and weighted values, the causal half counted), as nanoGPT and MaxText count; BERT's "
    "masked-LM output layer only at the predicted 15% of positions, where it runs"
)
WARMUP_STEPS = 3
NUM_WINDOWS = 10


def model_loss(task: Any, state: TrainState, batch: dict, rng: jax.Array) -> Any:
    """The forward pass of a single-network family: its training loss on the batch."""
    return task.loss(state.params["model"], batch, rng)


SIZED_MODULE = "benchmarks.sized_transformers"
# Every `--model`: the `BENCHMARKS` the experiments (and the sized transformers) declare (genjax/entries.py).
FAMILIES: dict[str, Benchmark] = entries.discover(
    [f"experiments.{info.name}" for info in pkgutil.iter_modules(experiments.__path__)] + [SIZED_MODULE]
)


def make_config(family: Benchmark, batch_size: int, dtype: str, config_args: Sequence[str]) -> ml_collections.ConfigDict:
    """The experiment's config with the family's overrides, the batch size, the dtype and `--config.*` applied."""
    module = importlib.import_module(family.module)
    config = module.get_config(family.recipe) if family.recipe else module.get_config()
    for key, text in family.overrides.items():
        config_lib.apply_override(config, key, text)
    config.batch_size = batch_size
    config.dtype = dtype
    rest = config_lib.parse_overrides(config, config_args)
    if rest:
        raise GenjaxError(f"unknown arguments {rest}; pass --config.KEY=VALUE for config fields, see --help")
    cpu_tuning.apply(config.cpu_tuning)  # as the experiments' entry points do, so the step timed is the one they run
    return config


def step_flops(family: Benchmark, task: Any, state: TrainState, batch: dict, rng: jax.Array) -> tuple[int, int]:
    """(model FLOPs: 3 x the family's forward passes, executed FLOPs: the matmuls and convolutions
    of the train step itself, backward included), counted from shapes; `state` may be abstract."""
    model = flops.train_flops(functools.partial(family.forward or model_loss, task), state, batch, rng)
    return model, flops.count_flops(task.train_step, state, batch, rng)


def time_windows(step: Callable, state: Any, batches: Iterator[dict], rng: jax.Array, window: int) -> tuple[Any, float]:
    """Runs `window` steps and waits for the last; returns (state, seconds per step)."""
    start = time.perf_counter()
    for _ in range(window):
        state, metrics = step(state, next(batches), rng)
    jax.block_until_ready((state, metrics))
    return state, (time.perf_counter() - start) / window


def repeat(batch: dict) -> Iterator[dict]:
    while True:
        yield batch


def summary(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"step_ms_median": float(np.median(ms)), "step_ms_p90": float(np.percentile(ms, 90))}


@dataclasses.dataclass
class StepSetup:
    """One family's experiment, ready to time: a fresh state and the jitted train step on one mesh."""

    config: ml_collections.ConfigDict
    mesh: Any
    experiment: Experiment
    batch: dict  # the first training batch, device-resident and sharded
    abstract_state: Any
    state: TrainState
    train_step: Callable
    train_rng: jax.Array
    compiled: Any  # train_step compiled for this state layout and batch
    compile_s: float  # lowering and compiling it, from abstract shapes
    memory: dict[str, Any]  # `memory_figures` of the compiled step


def memory_figures(compiled: Any, device: Any) -> dict[str, Any]:
    """Per-device bytes the compiled step needs (`device_memory.step_memory`), and the limit `device` reports (None
    on CPU, which reports none)."""
    return {**device_memory.step_memory(compiled), "device_bytes_limit": device_memory.reported_limit(device)}


@dataclasses.dataclass
class CompiledStep:
    """The compiled train step of `config`'s experiment on its mesh, from abstract shapes (no state allocated)."""

    mesh: Any
    experiment: Experiment
    batch: dict
    abstract_state: Any
    state_shardings: Any
    train_step: Callable
    init_rng: jax.Array
    train_rng: jax.Array
    compiled: Any
    compile_s: float
    memory: dict[str, Any]


def compile_step(family: Benchmark, config: ml_collections.ConfigDict) -> CompiledStep:
    """Builds `config`'s experiment and mesh, and compiles its train step as the experiments jit it."""
    mesh = sharding_lib.make_mesh(config.num_devices, config.mesh)
    sharding_lib.check_batch_size(config.batch_size, mesh)
    experiment: Experiment = importlib.import_module(family.module).build(config, **family.build_kwargs)
    init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
    batch = to_global(experiment.train_data.batch_at(0), sharding_lib.batch_sharding(mesh))
    abstract_state, state_shardings = loop.state_layout(experiment.task, mesh, init_rng, batch)
    train_step, _ = loop.compile_steps(experiment.task, mesh, state_shardings, config.skip_nonfinite)
    start = time.perf_counter()
    compiled = train_step.lower(abstract_with_shardings(abstract_state, state_shardings), batch, train_rng).compile()
    compile_s = time.perf_counter() - start
    memory = memory_figures(compiled, mesh.devices.flat[0])
    return CompiledStep(mesh, experiment, batch, abstract_state, state_shardings, train_step, init_rng, train_rng, compiled, compile_s, memory)


def set_up(family: Benchmark, config: ml_collections.ConfigDict, bound: bool = False) -> StepSetup:
    """Builds the experiment of `config`, its mesh, its compiled train step (checked to fit the device's memory)
    and a fresh state, as the experiments do."""
    devices = config.num_devices or len(jax.devices())
    if bound and devices > 1:
        raise GenjaxError(f"--matmul-bound times each matmul alone on one device; run it with --config.num_devices=1, not {devices}")
    step = compile_step(family, config)
    device_memory.check_fits(step.memory["memory_predicted_bytes"], device_memory.device_limit(step.mesh), f"batch_size={config.batch_size}",
                             device_memory.train_fixes("lower --batch-size (--fit finds the largest)"))
    state = loop.init_state(step.experiment.task, step.state_shardings, step.init_rng, step.batch)
    return StepSetup(config, step.mesh, step.experiment, step.batch, step.abstract_state, state, step.train_step, step.train_rng,
                     step.compiled, step.compile_s, step.memory)


def fit_batch(model: str, dtype: str, budget_gib: float, config_args: Sequence[str] = (), start: int = 0) -> dict[str, Any]:
    """The largest global batch (a multiple of data x fsdp) whose compiled train step needs at most `budget_gib`
    GiB per device: doubling from `start` (rounded down to a multiple; at least one row per batch shard), then
    bisecting. Compiles only; returns {"fit_batch_size" (0: not even the smallest fits), "budget_bytes", "probes"}."""
    family = family_of(model)
    budget = int(budget_gib * device_memory.GIB)
    probes: list[dict[str, Any]] = []

    def fits(batch_size: int) -> bool:
        need = compile_step(family, make_config(family, batch_size, dtype, config_args)).memory["memory_predicted_bytes"]
        probes.append({"batch_size": batch_size, "memory_predicted_bytes": need})
        return need <= budget

    config = make_config(family, 1, dtype, config_args)
    unit = sharding_lib.batch_devices(sharding_lib.make_mesh(config.num_devices, config.mesh))
    low, high = 0, max(unit, start // unit * unit)
    while fits(high):
        low, high = high, high * 2
    while high - low > unit:
        middle = (low + high) // 2 // unit * unit
        low, high = (middle, high) if fits(middle) else (low, middle)
    return {"model": model, "dtype": dtype, "fit_batch_size": low, "budget_bytes": budget, "probes": probes,
            "config_args": list(config_args), "source_revision": source_revision()}


def check_sizes(steps: int, batch_size: int) -> None:
    if steps < 1 or batch_size < 1:
        raise GenjaxError(f"--steps ({steps}) and --batch-size ({batch_size}) must be >= 1")


def family_of(model: str) -> Benchmark:
    if model not in FAMILIES:
        raise GenjaxError(f"unknown --model '{model}'; choose one of {sorted(FAMILIES)}")
    return FAMILIES[model]


def benchmark(model: str, batch_size: int, steps: int, dtype: str = "float32", data: str = "synthetic",
              config_args: Sequence[str] = (), bound: bool = False) -> dict[str, Any]:
    """Times `steps` train steps of family `model`; returns the figures of the JSON line.

    With `bound`, also the step's matmul-only bound (benchmarks/matmul_bound.py), on one device only.
    """
    family = family_of(model)
    check_sizes(steps, batch_size)
    config = make_config(family, batch_size, dtype, config_args)
    setup = set_up(family, config, bound)
    mesh, experiment, batch, abstract_state = setup.mesh, setup.experiment, setup.batch, setup.abstract_state
    state, train_step, train_rng, task = setup.state, setup.train_step, setup.train_rng, setup.experiment.task
    data_sharding = sharding_lib.batch_sharding(mesh)

    model_flops, executed_flops = step_flops(family, task, abstract_state, batch, train_rng)

    meter = peaks.PeakMeter(mesh, dtype)
    train_step = setup.compiled  # compiled from abstract shapes in set_up (compile_s)
    state, _ = time_windows(train_step, state, repeat(batch), train_rng, WARMUP_STEPS)

    window = max(1, steps // NUM_WINDOWS)
    synthetic, real, peak = [], [], []
    real_batches = device_prefetch(experiment.train_data, 1, data_sharding) if data == "real" else None
    try:
        for _ in range(max(1, steps // window)):
            state, seconds = time_windows(train_step, state, repeat(batch), train_rng, window)
            synthetic.append(seconds)
            if real_batches is not None:
                state, seconds = time_windows(train_step, state, real_batches, train_rng, window)
                real.append(seconds)
            peak.append(meter.sample())
    finally:
        if real_batches is not None:
            real_batches.close()

    timed = summary(real if real else synthetic)
    step_s = timed["step_ms_median"] / 1e3
    mfu = float(np.median([model_flops / seconds / p for seconds, p in zip(real or synthetic, peak)]))
    bound_s = matmul_bound.matmul_bound_s(task.train_step, abstract_state, batch, train_rng) if bound else None
    tokens = family.tokens_per_example(config) * batch_size if family.tokens_per_example else None
    device = mesh.devices.flat[0]
    stats = device.memory_stats()
    return {
        "model": model,
        "batch_size": batch_size,
        "steps": len(synthetic) * window,
        "data": data,
        **timed,
        "examples_per_s": batch_size / step_s,
        "tokens_per_s": tokens / step_s if tokens else None,
        "flops_per_step": model_flops,
        "flops_formula": FLOPS_FORMULA,
        "executed_flops_per_step": executed_flops,
        "tflops_per_s": model_flops / step_s / 1e12,
        "mfu": mfu,
        "peak_tflops_per_s": float(np.median(peak)) / 1e12,
        "peak_source": meter.source,
        "compile_s": setup.compile_s,
        **setup.memory,
        "device_peak_bytes": stats.get("peak_bytes_in_use") if stats else None,  # None where the device reports none (CPU)
        "mesh": dict(mesh.shape),
        "matmul_bound_ms": bound_s * 1e3 if bound_s else None,
        "mfu_ceiling": mfu * step_s / bound_s if bound_s else None,  # the MFU at the bound, against the same peak
        "synthetic_step_ms_median": summary(synthetic)["step_ms_median"],
        "real_over_synthetic": summary(synthetic)["step_ms_median"] / timed["step_ms_median"] if real else None,
        "device_kind": device.device_kind,
        "platform": device.platform,
        "num_devices": int(mesh.devices.size),
        "dtype": dtype,
        "versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__, "optax": optax.__version__},
        "config_args": list(config_args),
        "source_revision": source_revision(),
    }


def source_revision() -> str | None:
    """The git commit of the genjax checkout being timed, with "-dirty" when tracked files differ from it;
    None outside a git checkout (or without git)."""
    repo = pathlib.Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=30).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def format_table(result: dict[str, Any]) -> str:
    """The figures as aligned `name  value` lines."""
    rows = []
    for key, value in result.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, dict):
            value = " ".join(f"{k}={v}" for k, v in value.items())
        rows.append(f"{key:<26}{value}")
    return "\n".join(rows)


def step_parser(description: str, steps: int, steps_help: str, dtype_help: str = "computation dtype (config field 'dtype')") -> argparse.ArgumentParser:
    """A parser with the flags every benchmark command shares: --model, --batch-size, --steps, --dtype."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help=f"one of {sorted(FAMILIES)}")
    parser.add_argument("--batch-size", type=int, required=True, help="global batch size")
    parser.add_argument("--steps", type=int, default=steps, help=steps_help)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="f32", help=dtype_help)
    return parser


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """(flags, the `--config.KEY=VALUE` arguments left for the experiment's config)."""
    parser = step_parser(__doc__, 100, "timed steps (after compilation and warm-up)")
    parser.add_argument("--data", choices=("synthetic", "real"), default="synthetic",
                        help="real: also time the real input pipeline and report real/synthetic")
    parser.add_argument("--matmul-bound", action="store_true",
                        help="also time each matmul and convolution of the step alone: the MFU if nothing else cost time")
    parser.add_argument("--fit", type=float, metavar="GIB",
                        help="instead of timing: the largest batch (from --batch-size up) whose compiled step needs at most GIB GiB per device")
    return parse_sized(parser, argv)


def parse_sized(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Parses `argv` with `parser` plus --size and --seq-len (GPT-2 and BERT), which become config overrides:
    (flags, `--config.KEY=VALUE` arguments)."""
    parser.add_argument("--size", help="--model gpt2: tiny | 124m | 355m | 774m | 1.5b; --model bert: tiny | mini | base | large")
    parser.add_argument("--seq-len", type=int, help="--model gpt2|bert: tokens per example (config field seq_len)")
    flags, config_args = parser.parse_known_args(argv)
    sized = {"model.size": flags.size, "seq_len": flags.seq_len}
    if any(value is not None for value in sized.values()) and family_of(flags.model).module != SIZED_MODULE:
        raise GenjaxError(f"--size and --seq-len apply to --model gpt2 or bert, not '{flags.model}'")
    return flags, [f"--config.{key}={value}" for key, value in sized.items() if value is not None] + config_args


def main(argv: Sequence[str]) -> None:
    flags, config_args = parse_args(argv)
    if flags.fit is not None:
        result = fit_batch(flags.model, DTYPES[flags.dtype], flags.fit, config_args, flags.batch_size)
        print(format_table(result))
        print(json.dumps(result), flush=True)
        return
    result = benchmark(flags.model, flags.batch_size, flags.steps, DTYPES[flags.dtype], flags.data, config_args, flags.matmul_bound)
    print(format_table(result))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    cli.run_main(main, sys.argv[1:])
