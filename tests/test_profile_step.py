"""The step profiler: a real jax.profiler trace of the library's step, summed per compiled op and kind of work."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import pytest

from benchmarks import profile_step


def test_compiled_ops_get_the_kind_of_work_their_body_does():
    def fn(x, w, image, kernel):
        conv = jax.lax.conv_general_dilated(image, kernel, (1, 1), "SAME")
        return jnp.tanh(x @ w).T.sum(0), conv, x.T + 1.0

    args = (jnp.ones((64, 32)), jnp.ones((32, 48)), jnp.ones((2, 3, 16, 16)), jnp.ones((4, 3, 3, 3)))
    ops = profile_step.parse_hlo(jax.jit(fn).lower(*args).compile().as_text())
    kinds = {op.kind for op in ops.values()}
    assert {"matmul", "convolution"} <= kinds
    matmuls = [op for op in ops.values() if op.kind == "matmul"]
    assert any("dot_general" in op.source for op in matmuls)  # the JAX operation behind the op, from its metadata


def test_busy_time_is_the_union_of_overlapping_intervals():
    assert profile_step.busy_seconds([(0.0, 2.0), (1.0, 3.0), (5.0, 6.0), (5.5, 5.7)]) == pytest.approx(4.0)
    assert profile_step.busy_seconds([]) == 0.0


def test_profile_of_the_vae_step_accounts_for_its_ops(tmp_path, data_dir, capsys):
    profile_step.main(["--model", "vae", "--batch-size", "8", "--steps", "3", "--out", str(tmp_path), "--top", "10",
                       f"--config.data_dir={data_dir}"])
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert "time per kind" in out[-2]

    hlo = (tmp_path / "step.hlo.txt").read_text()
    assert list((tmp_path / "trace").rglob("*.trace.json.gz"))
    assert (result["model"], result["batch_size"], result["steps"]) == ("vae", 8, 3)
    assert result["ops_per_step"] >= 10 and result["ops_per_step"] == int(result["ops_per_step"])  # every step launches the same ops
    assert 0 < result["busy_ms"] <= result["op_ms"] + 1e-9 and result["busy_ms"] <= result["wall_ms"] + 1e-9
    assert result["idle_ms"] == pytest.approx(result["wall_ms"] - result["busy_ms"], abs=1e-6)
    assert sum(result["kind_ms"].values()) == pytest.approx(result["op_ms"])
    assert result["kind_ms"]["matmul"] > 0  # the VAE's dense layers
    assert len(result["top_ops"]) == 10
    assert [op["ms"] for op in result["top_ops"]] == sorted((op["ms"] for op in result["top_ops"]), reverse=True)
    for op in result["top_ops"]:
        assert f"{op['op']} = " in hlo and op["kind"] in profile_step.KINDS
