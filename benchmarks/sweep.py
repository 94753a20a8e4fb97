"""Sweeps batch sizes x dtypes x device counts (x remat policies) of one family's step benchmark; writes a CSV and a PNG.

Command:  python -m benchmarks.sweep --model vae --batch-sizes 32,128,512 --dtypes f32 \
              --device-counts 1,2 --steps 50 --out runs/sweep_vae [--config.KEY=VALUE ...]
          python -m benchmarks.sweep --model gpt2 --remats none,dots,full --batch-sizes 4,8,16 --out runs/sweep_remat \
              --size tiny --seq-len 128
Writes <out>/sweep.csv (one row per point, the JSON fields of benchmarks.step_throughput, plus `remat`)
and <out>/sweep.png (examples/s, MFU and the compiled step's memory per device against batch size, a line
per dtype, device count and remat policy). `--remats` (transformers: `--config.model.remat`) is the remat
policy x batch size table of issue "Scale on accelerators"; arguments it does not know go to step_throughput.
A point that fails (out of memory, say) is reported and skipped; the files hold the points that ran,
and the command then exits with an error naming the failed points.

Every point runs `python -m benchmarks.step_throughput` in its own process: on CPU the
device count is emulated with XLA_FLAGS=--xla_force_host_platform_device_count=N, which XLA
reads once, before JAX starts; elsewhere the first N real devices are used.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import pathlib
import subprocess
import sys
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from genjax import cli
from genjax.launch import process_env
from genjax.errors import GenjaxError

REPO = pathlib.Path(__file__).resolve().parents[1]
def run_point(
    model: str, batch_size: int, dtype: str, devices: int, remat: str, steps: int, data: str, config_args: Sequence[str]
) -> dict[str, Any]:
    """The JSON figures of one benchmark process (its last stdout line), with the point's `remat` ("" when not swept)."""
    command = [
        sys.executable, "-m", "benchmarks.step_throughput", "--model", model, "--batch-size", str(batch_size),
        "--steps", str(steps), "--dtype", dtype, "--data", data, f"--config.num_devices={devices}", *config_args,
        *([f"--config.model.remat={remat}"] if remat else []),
    ]
    done = subprocess.run(command, cwd=REPO, env=process_env(devices), capture_output=True, text=True)
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise GenjaxError(f"benchmark point {point_name(batch_size, dtype, devices, remat)} failed: {last[0]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "remat": remat}


def point_name(batch_size: int, dtype: str, devices: int, remat: str) -> str:
    return f"batch={batch_size} dtype={dtype} devices={devices}" + (f" remat={remat}" if remat else "")


def csv_row(result: dict[str, Any]) -> dict[str, Any]:
    """One flat CSV row: the nested `versions` become `version_<package>` columns, `config_args` one string."""
    row = {k: v for k, v in result.items() if k != "versions"}
    row.update({f"version_{k}": v for k, v in result["versions"].items()})
    row["config_args"] = " ".join(result["config_args"])
    return row


def write_csv(results: list[dict[str, Any]], path: pathlib.Path) -> None:
    rows = [csv_row(r) for r in results]
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot(results: list[dict[str, Any]], path: pathlib.Path) -> None:
    """examples/s, MFU and the compiled step's memory per device against batch size, one line per (dtype, device
    count, remat)."""
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4))
    line = lambda r: (r["dtype"], r["num_devices"], r["remat"])  # noqa: E731
    for (dtype, devices, remat), group in itertools.groupby(sorted(results, key=lambda r: (*line(r), r["batch_size"])), key=line):
        group = list(group)
        batch = [r["batch_size"] for r in group]
        label = f"{dtype}, {devices} device{'s' if devices > 1 else ''}" + (f", remat {remat}" if remat else "")
        left.plot(batch, [r["examples_per_s"] for r in group], marker="o", label=label)
        middle.plot(batch, [100 * r["mfu"] for r in group], marker="o", label=label)
        right.plot(batch, [r["memory_predicted_bytes"] / 2**20 for r in group], marker="o", label=label)
    first, sizes = results[0], sorted({r["batch_size"] for r in results})
    for axes, ylabel in (
        (left, "examples / s"), (middle, f"MFU % (peak: {first['peak_source']})"), (right, "compiled step memory per device, MiB")
    ):
        axes.set_xscale("log", base=2)
        axes.set_xticks(sizes, [str(size) for size in sizes])
        axes.minorticks_off()
        axes.set(xlabel="global batch size", ylabel=ylabel)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(f"{first['model']} train step on {first['device_kind']} ({first['data']} data)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise GenjaxError(f"expected comma-separated integers such as 32,128, got '{text}'") from None


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch-sizes", default="32,128,512")
    parser.add_argument("--dtypes", default="f32", help="comma-separated: f32,bf16")
    parser.add_argument("--device-counts", default="1", help="comma-separated; emulated host devices on CPU")
    parser.add_argument("--remats", default="", help="comma-separated remat policies (transformers): none,dots,full")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--data", choices=("synthetic", "real"), default="synthetic")
    parser.add_argument("--out", required=True, help="folder for sweep.csv and sweep.png")
    flags, config_args = parser.parse_known_args(argv)
    out = pathlib.Path(flags.out)
    out.mkdir(parents=True, exist_ok=True)
    results, failures = [], []
    points = itertools.product(
        int_list(flags.device_counts), flags.dtypes.split(","), flags.remats.split(","), int_list(flags.batch_sizes)
    )
    for devices, dtype, remat, batch_size in points:
        try:
            result = run_point(flags.model, batch_size, dtype, devices, remat, flags.steps, flags.data, config_args)
        except GenjaxError as error:
            print(error, flush=True)
            failures.append(point_name(batch_size, dtype, devices, remat))
            continue
        print(f"{point_name(batch_size, dtype, devices, remat)}  {result['step_ms_median']:8.2f} ms  "
              f"{result['examples_per_s']:10.0f} ex/s  MFU {100 * result['mfu']:5.1f}%  "
              f"{result['memory_predicted_bytes'] / 2**20:8.1f} MiB", flush=True)
        results.append(result)
    if results:
        write_csv(results, out / "sweep.csv")
        plot(results, out / "sweep.png")
        print(f"wrote {out / 'sweep.csv'} and {out / 'sweep.png'}")
    if failures:
        raise GenjaxError(f"{len(failures)} of {len(failures) + len(results)} sweep points failed: {'; '.join(failures)}")


if __name__ == "__main__":
    cli.run_main(main)
