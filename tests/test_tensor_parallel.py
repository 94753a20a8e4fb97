"""Tensor parallelism on the (data, fsdp, tensor) mesh: a tiny GPT-2 (8 heads) trains to the same losses on every
layout, its parameters divide over the devices as the rules say, a checkpoint restores across layouts, and bad
layouts stop with one line.

The 8-device checks run this file as a script in a subprocess with 8 emulated CPU devices (the pytest process has
one); it writes a JSON report the tests assert on.
"""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from conftest import emulated_cpu_env

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 20
LAYOUTS = {  # name -> (num_devices, mesh axes)
    "one_device": (1, {}),
    "data8": (0, {"data": 8}),
    "fsdp8": (0, {"data": 1, "fsdp": 8}),
    "d2f2t2": (0, {"data": 2, "fsdp": 2, "tensor": 2}),
    "tensor8": (0, {"data": 1, "tensor": 8}),
}
RTOL = 1e-5  # same math, reductions in another order across devices


def tiny_config(num_devices: int, mesh: dict, steps: int = STEPS, **model):
    """The tiny GPT-2 (2 layers, width 64, 8 heads of 8, MLP 256, vocab 1024, 128 tokens) on `mesh`, float32."""
    from benchmarks import sized_transformers

    config = sized_transformers.get_config()
    config.update(num_devices=num_devices, num_train_steps=steps, batch_size=16, eval_batch_size=16, checkpoint_every=3, log_every=1)
    config.mesh.update(mesh)
    config.model.update({"num_heads": 8, **model})
    return config


def layout_run(name: str) -> dict:
    """STEPS jitted train steps (the loop's layout and compiled step); losses, each leaf's spec and bytes per device."""
    import jax

    from benchmarks import sized_transformers
    from genjax import loop, sharding
    from genjax.data.loader import to_global

    num_devices, axes = LAYOUTS[name]
    config = tiny_config(num_devices, axes)
    experiment = sized_transformers.build(config)
    mesh = sharding.make_mesh(num_devices, axes)
    data = sharding.batch_sharding(mesh)
    batch = to_global(experiment.train_data.batch_at(0), data)
    _, shardings = loop.state_layout(experiment.task, mesh, jax.random.key(0), batch)
    state = loop.init_state(experiment.task, shardings, jax.random.key(0), batch)
    train_step, _ = loop.compile_steps(experiment.task, mesh, shardings)
    losses = []
    for index in range(STEPS):
        state, metrics = train_step(state, to_global(experiment.train_data.batch_at(index), data), jax.random.key(1))
        losses.append(float(metrics["loss"]))
    params = jax.tree_util.tree_leaves_with_path(state.params["model"])
    return {
        "mesh": dict(mesh.shape),
        "losses": losses,
        "specs": {jax.tree_util.keystr(p): str(v.sharding.spec) for p, v in params},
        "bytes": {jax.tree_util.keystr(p): int(v.nbytes) for p, v in params},
        "device_bytes": {jax.tree_util.keystr(p): int(v.addressable_shards[0].data.nbytes) for p, v in params},
    }


def bad_input_errors() -> dict[str, str]:
    """The one-line error of each bad layout, raised before any step."""
    from benchmarks import sized_transformers
    from genjax import loop
    from genjax.errors import GenjaxError

    cases = {
        "mesh_product": tiny_config(0, {"data": 3, "tensor": 2}),
        "two_rests": tiny_config(0, {"data": -1, "fsdp": -1}),
        "heads": tiny_config(0, {"data": 1, "tensor": 8}, num_heads=4),
        "mlp": tiny_config(0, {"data": 1, "tensor": 8}),  # with an MLP of 100
        "batch": tiny_config(0, {"data": 2, "fsdp": 2, "tensor": 2}),
    }
    cases["batch"].batch_size = 10
    errors = {}
    for name, config in cases.items():
        try:
            experiment = sized_transformers.build(config)
            if name == "mlp":
                experiment.task.model = experiment.task.model.clone(mlp_dim=100)
            loop.train_and_evaluate(config, pathlib.Path(sys.argv[1]) / f"bad_{name}", experiment)
            errors[name] = "no error"
        except GenjaxError as error:
            errors[name] = str(error)
    return errors


def restore_runs(workdir: pathlib.Path) -> dict:
    """Losses of an uninterrupted 6-step run on data=8, and of 3 steps on data=2 x fsdp=2 x tensor=2 continued to 6
    on tensor=8 and on one device (each continuation in its own copy of the step-3 checkpoint)."""
    import shutil

    from benchmarks import sized_transformers
    from genjax import loop
    from genjax.metrics_log import read_metrics

    def train(name: str, layout: str, steps: int) -> dict[int, float]:
        config = tiny_config(*LAYOUTS[layout], steps=steps)
        loop.train_and_evaluate(config, workdir / name, sized_transformers.build(config))
        return {row["step"]: row["loss"] for row in read_metrics(workdir / name) if row.get("split") == "train"}

    runs = {"reference": train("reference", "data8", 6), "first": train("first", "d2f2t2", 3)}
    for layout in ("tensor8", "one_device"):
        shutil.copytree(workdir / "first", workdir / layout)
        runs[layout] = train(layout, layout, 6)
    return runs


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("tensor_parallel")
    result = subprocess.run([sys.executable, __file__, str(out)], cwd=REPO, env={**emulated_cpu_env(8), "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"},
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((out / "report.json").read_text())


@pytest.mark.parametrize("layout", [name for name in LAYOUTS if name != "one_device"])
def test_every_layout_trains_to_the_same_losses(report, layout):
    reference = report["layouts"]["one_device"]["losses"]
    losses = report["layouts"][layout]["losses"]
    print(layout, "max relative loss difference", np.max(np.abs(np.subtract(losses, reference)) / np.abs(reference)))
    np.testing.assert_allclose(losses, reference, rtol=RTOL)
    assert reference[-1] < reference[0] - 0.5


def test_parameter_bytes_divide_as_the_layout_says(report):
    for name, run in report["layouts"].items():
        mesh = run["mesh"]
        for leaf, spec in run["specs"].items():
            split = math.prod(mesh[axis] for axis in mesh if f"'{axis}'" in spec)
            assert run["device_bytes"][leaf] * split == run["bytes"][leaf], (name, leaf, spec)
    tp = report["layouts"]["tensor8"]["specs"]  # Megatron: heads and MLP hidden over tensor, nothing else split
    assert tp["['block0']['attention']['qkv']['kernel']"] == "P(None, 'tensor')"
    assert tp["['block0']['attention']['out']['kernel']"] == "P('tensor',)"
    assert tp["['block1']['mlp']['up']['kernel']"] == "P(None, 'tensor')"
    assert tp["['block1']['mlp']['down']['kernel']"] == "P('tensor',)"
    assert tp["['embed']['embedding']"] == "P()"
    mixed = report["layouts"]["d2f2t2"]["specs"]
    assert mixed["['block0']['mlp']['up']['kernel']"] == "P('fsdp', 'tensor')"
    assert mixed["['block0']['mlp']['down']['kernel']"] == "P('tensor', 'fsdp')"
    total = sum(report["layouts"]["fsdp8"]["bytes"].values())
    per_device = sum(report["layouts"]["fsdp8"]["device_bytes"].values())
    assert per_device < total / 8 * 1.05  # FSDP: every sizeable leaf split 8 ways (norm scales and biases are small)


def test_checkpoints_restore_across_layouts(report):
    runs = {name: {int(step): loss for step, loss in losses.items()} for name, losses in report["restore"].items()}
    assert sorted(runs["first"]) == [1, 2, 3]
    for layout in ("tensor8", "one_device"):  # each continues a copy of `first`'s workdir, its log of steps 1-3 included
        assert sorted(runs[layout]) == [1, 2, 3, 4, 5, 6], layout
        print(layout, "continued losses", [runs[layout][s] for s in (4, 5, 6)], "uninterrupted", [runs["reference"][s] for s in (4, 5, 6)])
        np.testing.assert_allclose([runs[layout][s] for s in (4, 5, 6)], [runs["reference"][s] for s in (4, 5, 6)], rtol=RTOL)


@pytest.mark.parametrize(
    "case, message",
    [
        ("mesh_product", "mesh data=3 x fsdp=1 x tensor=2 does not fit the 8 devices"),
        ("two_rests", r"mesh axes \['data', 'fsdp'\] are all -1"),
        ("heads", "has 4 'heads' .*which mesh.tensor=8 does not divide"),
        ("mlp", "has 100 'mlp' .*which mesh.tensor=8 does not divide"),
        ("batch", "batch_size=10 is not divisible by data x fsdp = 4"),
    ],
)
def test_bad_layouts_stop_with_one_line(report, case, message):
    error = report["bad_input"][case]
    assert "\n" not in error
    assert __import__("re").search(message, error), error


if __name__ == "__main__":
    import jax

    target = pathlib.Path(sys.argv[1])
    assert len(jax.devices()) == 8
    result = {"layouts": {name: layout_run(name) for name in LAYOUTS}, "bad_input": bad_input_errors(), "restore": restore_runs(target)}
    print(json.dumps(result["bad_input"], indent=1))
    (target / "report.json").write_text(json.dumps(result))
