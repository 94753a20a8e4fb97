"""The step benchmark and the sweep run every present family at a tiny size and report complete, consistent figures.

Correctness only: no assertion on how fast anything is.
"""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess

import pytest

import jax
import jax.numpy as jnp

from benchmarks import compare, loop_cost, matmul_bound, peaks, step_throughput, sweep
from conftest import REPO, emulated_cpu_env, run_module
from genjax import cli, flops, loop, sharding
from genjax.data.loader import to_global
from genjax.errors import GenjaxError

FIELDS = {
    "model", "batch_size", "steps", "data", "step_ms_median", "step_ms_p90", "examples_per_s", "tokens_per_s",
    "flops_per_step", "executed_flops_per_step", "tflops_per_s", "mfu", "peak_tflops_per_s", "peak_source",
    "compile_s", "synthetic_step_ms_median", "real_over_synthetic", "device_kind", "platform", "num_devices",
    "dtype", "versions", "matmul_bound_ms", "mfu_ceiling", "config_args", "source_revision",
    "flops_formula", "mesh", "memory_argument_bytes", "memory_output_bytes", "memory_temp_bytes", "memory_alias_bytes",
    "memory_predicted_bytes", "device_bytes_limit", "device_peak_bytes",
}
BATCH = 8


def run_benchmark(capsys, *args: str) -> dict:
    step_throughput.main(list(args))
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def traced_step(module, config) -> tuple:
    """(task, abstract state, batch, rng) of the experiment `module` builds from `config`, on one device."""
    experiment = module.build(config)
    mesh = sharding.make_mesh(1)
    batch = to_global(experiment.train_data.batch_at(0), sharding.batch_sharding(mesh))
    return experiment.task, loop.state_layout(experiment.task, mesh, jax.random.key(0), batch)[0], batch, jax.random.key(1)


@pytest.mark.parametrize("model", list(step_throughput.FAMILIES))
def test_every_family_reports_every_field(model, family_args, capsys):
    """Every present family at batch 8; the VAE also through the real input pipeline."""
    data = "real" if model == "vae" else "synthetic"
    result = run_benchmark(capsys, "--model", model, "--batch-size", str(BATCH), "--steps", "2", "--data", data, *family_args(model))

    assert set(result) == FIELDS
    assert (result["model"], result["batch_size"], result["steps"], result["data"]) == (model, BATCH, 2, data)
    assert result["versions"].keys() == {"jax", "jaxlib", "flax", "optax"}
    assert 0 < result["step_ms_median"] <= result["step_ms_p90"]
    assert result["examples_per_s"] == pytest.approx(BATCH / result["step_ms_median"] * 1e3)
    assert result["tflops_per_s"] == pytest.approx(result["flops_per_step"] / result["step_ms_median"] / 1e9)
    # Autodiff skips unneeded gradients; a rematerialised forward (the "blocked" attention of imdb) adds at most one forward.
    assert 0 < result["executed_flops_per_step"] <= result["flops_per_step"] * 4 / 3
    memory = [result[f"memory_{part}_bytes"] for part in ("argument", "output", "temp", "alias")]
    assert result["memory_predicted_bytes"] == memory[0] + memory[1] + memory[2] - memory[3] > 0
    assert result["device_bytes_limit"] is result["device_peak_bytes"] is None  # the CPU reports no memory statistics
    assert 0 < result["mfu"] and result["peak_tflops_per_s"] > 0 and result["compile_s"] > 0
    device = jax.devices()[0]
    published = device.platform != "cpu" and peaks.published_peak(device.device_kind, jnp.float32) is not None
    peak_source = "published" if published else "measured_matmul"
    assert (result["platform"], result["peak_source"], result["dtype"], result["num_devices"]) == (device.platform, peak_source, "float32", 1)
    assert result["synthetic_step_ms_median"] > 0
    assert (result["real_over_synthetic"] is not None) == (data == "real")
    assert (result["tokens_per_s"] is not None) == (step_throughput.FAMILIES[model].tokens_per_example is not None)
    assert result["matmul_bound_ms"] is None and result["mfu_ceiling"] is None  # only with --matmul-bound
    assert result["config_args"] == family_args(model)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    if head:
        assert re.fullmatch(rf"{head}(-dirty)?", result["source_revision"])
    else:  # a copy of the tree without its .git
        assert result["source_revision"] is None


def test_matmul_bound_counts_each_matmul_as_often_as_it_runs():
    """Three equal matmuls in a scan of 4, one of another shape outside: two distinct equations, run 12 and 1 times."""
    w = jax.ShapeDtypeStruct((16, 16), "float32")

    def fn(x, w):
        def body(h, _):
            return jnp.tanh(h @ w) @ w @ w, None

        h, _ = jax.lax.scan(body, x, None, length=4)
        return h @ jnp.ones((16, 3))

    counts = sorted(count for _, count in matmul_bound.distinct_matmuls(fn, jax.ShapeDtypeStruct((8, 16), "float32"), w))
    assert counts == [1, 12]
    assert matmul_bound.matmul_bound_s(fn, jax.ShapeDtypeStruct((8, 16), "float32"), w) > 0


def test_matmul_bound_of_a_real_step(capsys, data_dir):
    result = run_benchmark(capsys, "--model", "vae", "--batch-size", str(BATCH), "--steps", "2", "--matmul-bound", f"--config.data_dir={data_dir}")
    assert result["matmul_bound_ms"] > 0 and math.isfinite(result["mfu_ceiling"]) and result["mfu_ceiling"] > 0


def test_matmul_bound_on_several_devices_is_refused_before_timing(data_dir):
    out = run_module(
        "benchmarks.step_throughput", "--model", "vae", "--batch-size", str(BATCH), "--steps", "2", "--matmul-bound",
        f"--config.data_dir={data_dir}", env=emulated_cpu_env(2),
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--matmul-bound times each matmul alone on one device; run it with --config.num_devices=1, not 2" in out.stderr


def test_vae_flops_are_six_n_per_example(data_dir):
    """784-500-(20, 20) encoder and 20-500-784 decoder: N = 814,000 weights, 6 N per example."""
    from experiments import vae_mnist

    config = step_throughput.make_config(step_throughput.FAMILIES["vae"], BATCH, "float32", [f"--config.data_dir={data_dir}"])
    model, executed = step_throughput.step_flops(step_throughput.FAMILIES["vae"], *traced_step(vae_mnist, config))
    weights = 784 * 500 + 2 * 500 * 20 + 20 * 500 + 500 * 784
    assert model == 6 * weights * BATCH == 39_072_000
    assert executed == model - 2 * BATCH * 784 * 500  # autodiff computes no gradient for the input images


def test_charlm_flops_follow_the_transformer_formula(data_dir):
    """(6 N + 12 L T d) per token, N the matmul weights: kernels and the (tied) embedding, not biases."""
    from experiments import charlm_shakespeare

    family = step_throughput.FAMILIES["charlm"]
    config = step_throughput.make_config(family, BATCH, "float32", [f"--config.data_dir={data_dir}"])
    task, state, batch, rng = traced_step(charlm_shakespeare, config)
    params = state.params["model"]
    matmul_weights = sum(
        leaf.size for path, leaf in jax.tree_util.tree_leaves_with_path(params) if path[-1].key in ("kernel", "embedding")
    )
    m = config.model
    expected = flops.transformer_train_flops(BATCH * config.context, matmul_weights, m.num_layers, config.context, m.width)
    assert step_throughput.step_flops(family, task, state, batch, rng) == (expected, expected)


def test_published_peaks_match_device_kinds():
    assert peaks.published_peak("NVIDIA H100 80GB HBM3", "bfloat16") == 989.5e12
    assert peaks.published_peak("NVIDIA H100 PCIe", "float32") == 378.0e12
    assert peaks.published_peak("TPU v5 lite", "float32") == 197.0e12  # f32 matmuls run as bf16 passes on TPUs
    assert peaks.published_peak("TPU v5p", "bfloat16") == 459.0e12
    assert peaks.published_peak("cpu", "float32") is None
    assert peaks.published_peak("NVIDIA A100-SXM4-40GB", "float16") is None  # no entry: measure instead


def test_bad_arguments_are_clear_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(step_throughput.main, ["--model", "resnet", "--batch-size", "8"])
    assert exit_info.value.code == 2
    assert "unknown --model 'resnet'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.run_main(step_throughput.main, ["--model", "vae", "--batch-size", "8", "--config.no_such_key=1"])
    assert "unknown config key 'no_such_key'" in capsys.readouterr().err


def test_compare_times_variants_in_one_process_and_shows_which_compute_the_same_function(capsys, data_dir):
    compare.main(["--model", "vae", "--batch-size", str(BATCH), "--steps", "4", "--rounds", "2", f"--config.data_dir={data_dir}",
                  "--variant", "plain", "--variant", "skipping", "--config.skip_nonfinite=True",
                  "--variant", "faster_lr", "--config.optimizer.learning_rate=0.01"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["model"], result["batch_size"], result["rounds"], result["steps_per_window"]) == ("vae", BATCH, 2, 2)
    plain, skipping, faster_lr = result["variants"]
    assert [v["name"] for v in result["variants"]] == ["plain", "skipping", "faster_lr"]
    assert skipping["args"] == ["--config.skip_nonfinite=True"] and plain["args"] == []
    for v in result["variants"]:
        assert 0 < v["step_ms_min"] <= v["step_ms_p25"] <= v["step_ms_median"] <= v["step_ms_p75"]
        assert v["relative_to_first"] == pytest.approx(v["step_ms_median"] / plain["step_ms_median"])
        assert v["mfu"] > 0 and v["compile_s"] > 0 and v["flops_per_step"] == plain["flops_per_step"]
    assert plain["metrics_after_3_steps"] == skipping["metrics_after_3_steps"]  # the same function, compiled apart
    assert result["source_revision"] == step_throughput.source_revision()
    assert faster_lr["metrics_after_3_steps"]["param_norm"] != plain["metrics_after_3_steps"]["param_norm"]


@pytest.mark.parametrize("variants, message", [
    ([], "at least two variants"),
    (["--variant", "a", "--variant", "a"], "distinct names"),
    (["--variant", "--config.seed=1"], "--variant needs a name"),
])
def test_compare_refuses_unclear_variants(variants, message):
    with pytest.raises(GenjaxError, match=message):
        compare.split_variants(["--config.seed=0", *variants])


def test_sweep_over_emulated_devices_writes_csv_and_plot(tmp_path, data_dir, monkeypatch):
    """Points on 2 emulated CPU devices (each its own process, XLA_FLAGS set before JAX starts); batch 3
    cannot be split over 2 devices: that point fails, the other is still written, then the sweep fails."""
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # the points' processes inherit it: CPU devices also where a GPU is present
    with pytest.raises(GenjaxError, match=r"1 of 2 sweep points failed: batch=3 dtype=f32 devices=2"):
        sweep.main(["--model", "vae", "--batch-sizes", f"{BATCH},3", "--device-counts", "2", "--steps", "1",
                    "--out", str(tmp_path), f"--config.data_dir={data_dir}"])
    rows = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    assert len(rows) == 1 and int(rows[0]["num_devices"]) == 2
    assert rows[0]["model"] == "vae" and int(rows[0]["batch_size"]) == BATCH and rows[0]["version_jax"]
    assert rows[0]["config_args"] == f"--config.num_devices=2 --config.data_dir={data_dir}"
    assert math.isfinite(float(rows[0]["mfu"]))
    assert (tmp_path / "sweep.png").stat().st_size > 10_000


def test_sweep_over_remat_policies_records_each_policy_and_its_memory(tmp_path, monkeypatch):
    """The remat policy x batch size table: one row per point with its policy and the compiled step's memory; with
    scanned layers (explicit saved-activation buffers) full remat needs less memory than none at the same batch."""
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    sweep.main(["--model", "gpt2", "--remats", "none,full", "--batch-sizes", "4", "--steps", "1", "--out", str(tmp_path),
                "--size", "tiny", "--seq-len", "64", "--config.model.scan_layers=True"])
    rows = {row["remat"]: row for row in csv.DictReader((tmp_path / "sweep.csv").open())}
    assert sorted(rows) == ["full", "none"]
    assert all(int(row["batch_size"]) == 4 for row in rows.values())
    assert int(rows["full"]["memory_temp_bytes"]) < int(rows["none"]["memory_temp_bytes"])
    assert (tmp_path / "sweep.png").stat().st_size > 10_000


def test_loop_cost_times_the_loop_s_step_against_a_bare_one_in_the_same_process():
    result = loop_cost.measure("gpt2", 4, 2, 2, "float32", ["--config.model.size=tiny", "--config.seq_len=32"])
    assert result["loop_step_ms_median"] > 0 and result["bare_step_ms_median"] > 0
    assert result["overhead"] == pytest.approx(result["loop_step_ms_median"] / result["bare_step_ms_median"] - 1)
    assert result["source_revision"]


def test_loop_cost_refuses_a_family_without_one_network_loss():
    with pytest.raises(GenjaxError, match="no single-network loss"):
        loop_cost.measure("dcgan", 4, 1, 1, "float32", [])
