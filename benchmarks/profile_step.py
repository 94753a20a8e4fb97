"""Where a train step's time goes: a `jax.profiler` trace of the library's real step, summed per compiled op.

Command:  python -m benchmarks.profile_step --model charlm --batch-size 12 --steps 10 --out DIR
          [--dtype bf16] [--top 25] [--config.KEY=VALUE ...]
The step is built as in `benchmarks.step_throughput` (the experiments' own jitted step, a device-resident
batch), compiled, run a few times, then traced for `steps` steps. Writes:
  DIR/trace/       the profile: TensorBoard's profile plugin or XProf read it; ui.perfetto.dev opens
                   its *.trace.json.gz
  DIR/step.hlo.txt the compiled step after XLA's passes: the op names below are its instructions
Prints the ops that took longest (ms per step, share, launches per step, kind, and the JAX operation that
produced each, from the HLO metadata), the time per kind, and a last JSON line with every figure.

The profiler reports every op XLA executes, with its start and duration and the HLO op and module it
ran (`args.hlo_op`, `args.hlo_module`): on CPU each thunk. Checked on CPU only; no GPU was at hand.
Per step: `wall_ms` is the traced steps' wall time, `op_ms` the sum of op durations (more than the
wall time when ops run side by side), `busy_ms` the time at least one op runs, and `idle_ms` the
rest: launch gaps and host work between ops. Tracing slows a step: on the 2-core CPU the VAE's 6 ms
step took 10 ms traced, the char LM's 40-45 ms took 51-93 ms, nearly all of the excess in elementwise
fusions (12.6 to 40.7 ms per step between runs, the matmuls 34 to 40 ms), which XLA:CPU splits over
threads in many small parts, each recorded by the profiler. So time steps with
`benchmarks.step_throughput`, and read this for where the time goes, comparing ops within one run.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import gzip
import json
import pathlib
import re
import sys
from typing import Any, Sequence

import jax

from benchmarks.step_throughput import (
    DTYPES, check_sizes, family_of, make_config, repeat, set_up, source_revision, step_parser, time_windows,
)
from genjax import cli
from genjax.errors import GenjaxError

WARMUP_STEPS = 3
KINDS = ("matmul", "convolution", "copy/transpose", "reduction", "elementwise", "other")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = (.*?) ([a-z][\w\-]*)\((.*)$")
_COMPUTATION = re.compile(r"^\s*%?([\w.\-]+) .*\{\s*$")


@dataclasses.dataclass(frozen=True)
class Op:
    """One instruction of the compiled step: its opcode, what kind of work it does, and the JAX operation behind it."""

    opcode: str
    kind: str
    source: str


def parse_hlo(hlo_text: str) -> dict[str, Op]:
    """Every instruction of a compiled module's text, by name (names are unique within a module).

    A fusion's kind is that of its body: a dot makes it a matmul, a convolution a convolution, a body
    of only copies and transposes a copy, a reduce a reduction, anything else elementwise. Its source
    is its own `op_name` metadata or, where XLA left none, that of its body's matmul or convolution
    (or, for any op left without, what it is and its output shape).
    """
    bodies: dict[str, list[tuple[str, str, str]]] = collections.defaultdict(list)  # computation -> [(opcode, source, shape)]
    lines: dict[str, tuple[str, str, str, str]] = {}  # name -> (opcode, source, shape, rest of the line)
    computation = ""
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)
        if header and " = " not in line:
            computation = header.group(1)
            continue
        match = _INSTRUCTION.match(line)
        if match:
            name, shape, opcode, rest = match.groups()
            source = re.search(r'op_name="(?:jit\([^)]*\)/)?([^"]*)"', rest)  # without the redundant jit(train_step)/
            lines[name] = (opcode, source.group(1) if source else "", shape.split("{")[0], rest)
            bodies[computation].append(lines[name][:3])
    ops = {}
    for name, (opcode, source, shape, rest) in lines.items():
        called = re.search(r"calls=%?([\w.\-]+)", rest)
        body = bodies.get(called.group(1), []) if called else []
        main = next((entry for entry in body if entry[0] in ("dot", "convolution")), (opcode, source, shape))
        if not source:  # a fusion's matmul or convolution: its metadata, else (as for any op) its output shape
            source = main[1] or f"({main[0]} -> {main[2]}, no metadata)"
        ops[name] = Op(opcode, _kind(opcode, [op for op, _, _ in body], rest), source)
    return ops


def _kind(opcode: str, body: list[str], rest: str) -> str:
    """The kind of work of an instruction (`rest`: its line after the opcode; `body`: its fusion's opcodes)."""
    if opcode == "custom-call":  # on GPU, library calls: cuBLAS matmuls, cuDNN convolutions
        target = re.search(r'custom_call_target="([^"]*)"', rest)
        target = target.group(1).lower() if target else ""
        return "matmul" if "gemm" in target or "matmul" in target else "convolution" if "conv" in target else "other"
    opcodes = set(body) if opcode == "fusion" else {opcode}
    if "dot" in opcodes:
        return "matmul"
    if "convolution" in opcodes:
        return "convolution"
    if opcodes and opcodes <= {"copy", "transpose", "parameter", "bitcast"}:
        return "copy/transpose"
    if opcodes & {"reduce", "reduce-window"}:
        return "reduction"
    return "elementwise" if opcode == "fusion" else "other"


def trace_events(trace_dir: pathlib.Path) -> list[dict[str, Any]]:
    """The complete ('X') events of the newest *.trace.json.gz under `trace_dir`."""
    files = sorted(trace_dir.rglob("*.trace.json.gz"), key=lambda path: path.stat().st_mtime)
    if not files:
        raise GenjaxError(f"jax.profiler wrote no *.trace.json.gz under {trace_dir}; check that the profiler works here "
                          "(python -c 'import jax; jax.profiler.trace(\"/tmp/t\").__enter__()')")
    with gzip.open(files[-1]) as file:
        return [event for event in json.load(file)["traceEvents"] if event.get("ph") == "X" and "dur" in event]


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def module_name(hlo_text: str) -> str:
    """The name a compiled module's ops carry in the trace (`args.hlo_module`)."""
    match = re.match(r"HloModule ([\w.\-]+)", hlo_text)
    return match.group(1) if match else ""


def summarize(events: list[dict[str, Any]], module: str, ops: dict[str, Op], steps: int, wall_s: float, top: int) -> dict[str, Any]:
    """Per-step figures of the traced steps from the events of module `module`'s ops (`args.hlo_op` names one of `ops`)."""
    timed = [e for e in events if e.get("args", {}).get("hlo_module") == module and e["args"].get("hlo_op") in ops]
    if not timed:
        raise GenjaxError("the trace holds no op of the compiled step; was the step run inside the trace?")
    seconds: dict[str, float] = collections.defaultdict(float)
    launches: collections.Counter = collections.Counter()
    for event in timed:
        name = event["args"]["hlo_op"]
        seconds[name] += event["dur"] * 1e-6  # trace times are in microseconds
        launches[name] += 1
    op_s = sum(seconds.values())
    by_kind = {kind: 0.0 for kind in KINDS}
    for name, s in seconds.items():
        by_kind[ops[name].kind] += s
    busy_s = busy_seconds([(e["ts"] * 1e-6, (e["ts"] + e["dur"]) * 1e-6) for e in timed])
    ranked = sorted(seconds, key=seconds.get, reverse=True)[:top]
    return {
        "wall_ms": wall_s / steps * 1e3,
        "op_ms": op_s / steps * 1e3,
        "busy_ms": busy_s / steps * 1e3,
        "idle_ms": max(wall_s - busy_s, 0.0) / steps * 1e3,
        "ops_per_step": len(timed) / steps,
        "kind_ms": {kind: s / steps * 1e3 for kind, s in by_kind.items()},
        "top_ops": [
            {"op": name, "ms": seconds[name] / steps * 1e3, "share": seconds[name] / op_s, "launches": launches[name] / steps,
             "kind": ops[name].kind, "source": ops[name].source}
            for name in ranked
        ],
    }


def profile(model: str, batch_size: int, steps: int, out: pathlib.Path, dtype: str = "float32",
            config_args: Sequence[str] = (), top: int = 25) -> dict[str, Any]:
    """Traces `steps` steps of family `model` into `out`; returns the figures of the JSON line."""
    family = family_of(model)
    check_sizes(steps, batch_size)
    config = make_config(family, batch_size, dtype, config_args)
    setup = set_up(family, config)
    compiled = setup.train_step.lower(setup.state, setup.batch, setup.train_rng).compile()
    out.mkdir(parents=True, exist_ok=True)
    hlo_text, hlo_path = compiled.as_text(), out / "step.hlo.txt"
    hlo_path.write_text(hlo_text)
    state, _ = time_windows(compiled, setup.state, repeat(setup.batch), setup.train_rng, WARMUP_STEPS)
    trace_dir = out / "trace"
    with jax.profiler.trace(str(trace_dir)):
        _, step_s = time_windows(compiled, state, repeat(setup.batch), setup.train_rng, steps)
    summary = summarize(trace_events(trace_dir), module_name(hlo_text), parse_hlo(hlo_text), steps, step_s * steps, top)
    device = setup.mesh.devices.flat[0]
    return {
        "model": model,
        "batch_size": batch_size,
        "steps": steps,
        "dtype": dtype,
        **summary,
        "trace_dir": str(trace_dir),
        "hlo_path": str(hlo_path),
        "device_kind": device.device_kind,
        "platform": device.platform,
        "num_devices": int(setup.mesh.devices.size),
        "jax": jax.__version__,
        "config_args": list(config_args),
        "source_revision": source_revision(),
    }


def format_report(result: dict[str, Any]) -> str:
    """The top ops and the time per kind, as aligned text."""
    rows = [f"{result['model']}, batch {result['batch_size']}, {result['steps']} traced steps on {result['device_kind']}: "
            f"wall {result['wall_ms']:.2f} ms/step, ops {result['op_ms']:.2f}, busy {result['busy_ms']:.2f}, "
            f"idle {result['idle_ms']:.2f}, {result['ops_per_step']:.0f} op launches/step",
            f"{'ms/step':>8} {'share':>6} {'x/step':>6}  {'kind':<14} {'op':<32} source"]
    for op in result["top_ops"]:
        rows.append(f"{op['ms']:8.3f} {op['share']:6.1%} {op['launches']:6.1f}  {op['kind']:<14} {op['op'][:32]:<32} {op['source'][-90:]}")
    rows.append("time per kind, ms/step: " + ", ".join(f"{kind} {ms:.2f}" for kind, ms in result["kind_ms"].items()))
    return "\n".join(rows)


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """(flags, the `--config.KEY=VALUE` arguments left for the experiment's config)."""
    parser = step_parser(__doc__, 10, "traced steps (after compilation and warm-up)")
    parser.add_argument("--out", required=True, type=pathlib.Path, help="folder for the trace and the compiled HLO")
    parser.add_argument("--top", type=int, default=25, help="how many of the longest ops to list")
    return parser.parse_known_args(argv)


def main(argv: Sequence[str]) -> None:
    flags, config_args = parse_args(argv)
    result = profile(flags.model, flags.batch_size, flags.steps, flags.out, DTYPES[flags.dtype], config_args, flags.top)
    print(format_report(result))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    cli.run_main(main, sys.argv[1:])
