"""FSDP: logical-axis rules decide each state leaf's sharding; FSDP and data parallelism train identically.

The 4-device checks run this file as a script in a subprocess with 4 emulated CPU
devices (the pytest process has one); it prints a JSON report the tests assert on.
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from conftest import emulated_cpu_env
from genjax import sharding
from genjax.errors import GenjaxError
from genjax.task import EvalSums, Task

REPO = pathlib.Path(__file__).resolve().parents[1]
MESH_2x4 = AbstractMesh((2, 4), ("data", "fsdp"))
MESH_DP = AbstractMesh((8, 1), ("data", "fsdp"))
COLLECTIVE = r" (all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter)(?:-start)?\("


@pytest.mark.parametrize(
    "shape, names, expected",
    [
        ((784, 256), ("embed", "mlp"), P("fsdp")),  # embed has the highest priority
        ((256, 30), ("mlp", "embed"), P("fsdp")),  # embed 30 does not divide by 4: mlp is split instead
        ((30, 10), ("embed", "vocab"), P()),  # nothing divides: replicated
        ((128, 4, 32), ("embed", "heads", "kv"), P("fsdp")),
        ((4, 32, 128), ("heads", "kv", "embed"), P(None, None, "fsdp")),
        ((65, 128), ("vocab", "embed"), P(None, "fsdp")),
        ((8, 64), ("heads", "kv"), P("fsdp")),  # 'kv' has no rule
        ((784, 500), None, P("fsdp")),  # unnamed: the largest divisible dimension
        ((500, 20), None, P("fsdp")),
        ((500,), None, P()),  # unnamed and small: replicated
        ((), None, P()),
    ],
)
def test_rules_choose_the_split_dimension(shape, names, expected):
    assert sharding.leaf_spec(shape, names, MESH_2x4) == expected
    assert sharding.leaf_spec(shape, names, MESH_DP) == P()  # data parallelism replicates everything


def test_mesh_settings_are_checked():
    with pytest.raises(GenjaxError, match="unknown mesh axis 'zero3'"):
        sharding.make_mesh(0, {"zero3": 2})
    devices = len(jax.devices())
    with pytest.raises(GenjaxError, match=f"mesh data=-1 x fsdp={devices + 1} x tensor=1 does not fit the {devices} devices"):
        sharding.make_mesh(0, {"fsdp": devices + 1})
    with pytest.raises(GenjaxError, match="batch_size=6 is not divisible by data x fsdp = 8"):
        sharding.check_batch_size(6, MESH_2x4)


class AnnotatedClassifier(nn.Module):
    """A hand-annotated MLP over MNIST digits: [B, 28, 28, 1] -> logits [B, 10]."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        def dense(features, names, name):
            return nn.Dense(
                features,
                kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), names),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[1:]),
                dtype=self.dtype,
                name=name,
            )

        h = nn.relu(dense(256, ("embed", "mlp"), "hidden")(x.reshape(x.shape[0], -1) / 255.0))
        h = nn.relu(dense(30, ("mlp", "embed"), "narrow")(h))
        return dense(10, ("embed", "vocab"), "logits")(h).astype(jnp.float32)


# What the rules say for every parameter of AnnotatedClassifier on a (1, 4) FSDP mesh.
EXPECTED_CLASSIFIER_SPECS = {
    "['hidden']['kernel']": P("fsdp"),
    "['hidden']['bias']": P("fsdp"),
    "['narrow']['kernel']": P("fsdp"),
    "['narrow']['bias']": P(),
    "['logits']['kernel']": P(),
    "['logits']['bias']": P(),
}

# What the rules say for some parameters of the char LM (width 128, 4 heads of 32, MLP 512, vocab 67).
EXPECTED_TRANSFORMER_SPECS = {
    "['embed']['embedding']": P(None, "fsdp"),  # ('vocab', 'embed'): vocab 67 is not divisible, embed is
    "['block0']['attention']['qkv']['kernel']": P("fsdp"),  # ('embed', 'heads', 'kv')
    "['block0']['attention']['out']['kernel']": P(None, None, "fsdp"),  # ('heads', 'kv', 'embed')
    "['block0']['mlp']['up']['kernel']": P("fsdp"),  # ('embed', 'mlp')
    "['block1']['mlp']['down']['kernel']": P(None, "fsdp"),  # ('mlp', 'embed')
    "['final_norm']['scale']": P("fsdp"),  # ('embed',)
}


class ClassifierTask(Task):
    """Cross-entropy training of AnnotatedClassifier with the shared optimizer pipeline."""

    def __init__(self):
        from genjax.optim import make_optimizer, optimizer_config

        self.model = AnnotatedClassifier()
        self.optimizer = make_optimizer(optimizer_config(name="adamw", learning_rate=1e-3, weight_decay=1e-4, ema_decay=0.9), 10)

    def init_state(self, rng, batch):
        from genjax.state import create_train_state

        params = self.model.init(rng, batch["image"][:1])["params"]  # boxed: the loop reads and removes the names
        return create_train_state({"model": params}, {"model": self.optimizer})

    def loss(self, params, batch, rng):
        logits = self.model.apply({"params": params}, batch["image"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean(), {}

    def train_step(self, state, batch, rng):
        from genjax.state import single_network_step

        return single_network_step(self.loss, self.optimizer, state, batch, rng)

    def eval_step(self, state, batch, rng):
        return EvalSums({}, jnp.asarray(batch["image"].shape[0], jnp.float32))


LAYOUTS = {"data": {"data": -1}, "fsdp": {"data": 1, "fsdp": -1}}  # mesh axes of the two layouts compared here


def run_steps(task, loader, parallelism: str, steps: int) -> dict:
    """`steps` jitted train steps of `task` (the loop's own layout and compiled step) on all devices."""
    from genjax import loop
    from genjax.data.loader import to_global

    mesh = sharding.make_mesh(0, LAYOUTS[parallelism])
    data = sharding.batch_sharding(mesh)
    batch = to_global(loader.batch_at(0), data)
    _, shardings = loop.state_layout(task, mesh, jax.random.key(0), batch)
    state = loop.init_state(task, shardings, jax.random.key(0), batch)
    train_step, _ = loop.compile_steps(task, mesh, shardings)
    losses = []
    for index in range(steps):
        state, metrics = train_step(state, to_global(loader.batch_at(index), data), jax.random.key(1))
        losses.append(float(metrics["loss"]))
    leaves = jax.tree_util.tree_leaves_with_path(state)
    return {
        "losses": losses,
        "params": {jax.tree_util.keystr(p): np.asarray(jax.device_get(v)).tolist()
                   for p, v in jax.tree_util.tree_leaves_with_path(state.params["model"])},
        "specs": {jax.tree_util.keystr(p): str(v.sharding.spec) for p, v in leaves},
        "shapes": {jax.tree_util.keystr(p): list(v.shape) for p, v in leaves},
        "shard_shapes": {jax.tree_util.keystr(p): list(v.addressable_shards[0].data.shape) for p, v in leaves},
    }


def four_device_report(workdir: pathlib.Path) -> dict:
    """Runs on 4 devices: data parallel vs FSDP for three families, the FSDP switch through the loop, accumulation."""
    from experiments import charlm_shakespeare, vae_mnist
    from genjax import loop
    from genjax.data import sources
    from genjax.data.loader import ShuffledArrayLoader, to_global
    from scaling_runs import train_losses, vae_config

    assert len(jax.devices()) == 4
    mnist = sources.image_arrays("mnist", "train")
    digits = ShuffledArrayLoader({"image": mnist["image"], "label": mnist["label"]}, 64, seed=0)
    vae = vae_mnist.build(vae_config(3))
    charlm_config = charlm_shakespeare.get_config()
    charlm_config.update(num_train_steps=3)
    charlm_config.model.num_layers = 2
    charlm_config.optimizer.warmup_steps = 0  # full learning rate from the first step: the loss visibly drops
    charlm = charlm_shakespeare.build(charlm_config)
    report = {
        family: {parallelism: run_steps(task, loader, parallelism, 3) for parallelism in ("data", "fsdp")}
        for family, task, loader in [("classifier", ClassifierTask(), digits), ("vae", vae.task, vae.train_data),
                                     ("charlm", charlm.task, charlm.train_data)]
    }

    # The config switch through the whole loop: train, evaluate, report and checkpoint a sharded state.
    config = vae_config(3)
    config.mesh.update(LAYOUTS["fsdp"])
    report["loop_fsdp"] = {"final": loop.train_and_evaluate(config, workdir / "fsdp", vae_mnist.build(config)),
                           "losses": train_losses(workdir / "fsdp"),
                           "checkpoints": sorted(p.name for p in (workdir / "fsdp" / "checkpoints").iterdir())}

    # Gradient accumulation under data parallelism: each device keeps its rows of every micro-batch.
    config = vae_config(3, grad_accum_steps=4)
    experiment = vae_mnist.build(config)
    mesh = sharding.make_mesh()
    batch = to_global(experiment.train_data.batch_at(0), sharding.batch_sharding(mesh))
    _, shardings = loop.state_layout(experiment.task, mesh, jax.random.key(0), batch)
    state = loop.init_state(experiment.task, shardings, jax.random.key(0), batch)
    train_step, _ = loop.compile_steps(experiment.task, mesh, shardings)
    hlo = train_step.lower(state, batch, jax.random.key(1)).compile().as_text()
    report["accumulation_collectives"] = sorted(set(re.findall(COLLECTIVE, hlo)))
    return report


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("fsdp")
    result = subprocess.run([sys.executable, __file__, str(out)], cwd=REPO, env={**emulated_cpu_env(4), "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"},
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((out / "report.json").read_text())


def test_each_parameter_is_sharded_as_the_rules_say(report):
    specs = report["classifier"]["fsdp"]["specs"]
    for name, expected in EXPECTED_CLASSIFIER_SPECS.items():
        for tree in (".params['model']", ".ema_params['model']", ".opt_state['model'][0].mu", ".opt_state['model'][0].nu"):
            assert specs[tree + name] == str(expected), tree + name
    assert report["classifier"]["fsdp"]["shard_shapes"][".params['model']['hidden']['kernel']"] == [196, 256]
    for family in ("classifier", "vae", "charlm"):
        assert all(spec == str(P()) for spec in report[family]["data"]["specs"].values()), family


def test_transformer_parameters_follow_their_logical_names(report):
    specs = report["charlm"]["fsdp"]["specs"]
    for name, expected in EXPECTED_TRANSFORMER_SPECS.items():
        assert specs[".params['model']" + name] == str(expected), name
        moments = [key for key in specs if key.endswith(name) and (".mu" in key or ".nu" in key)]
        assert len(moments) == 2 and all(specs[key] == str(expected) for key in moments), name


def test_unnamed_vae_parameters_use_the_size_rule(report):
    fsdp = report["vae"]["fsdp"]
    mesh = AbstractMesh((1, 4), ("data", "fsdp"))
    for name, spec in fsdp["specs"].items():
        assert spec == str(sharding.leaf_spec(fsdp["shapes"][name], None, mesh)), name
    assert fsdp["specs"][".params['model']['encoder']['hidden']['kernel']"] == str(P("fsdp"))  # [784, 500]
    assert fsdp["specs"][".params['model']['encoder']['hidden']['bias']"] == str(P())  # 500 < FSDP_MIN_SIZE


@pytest.mark.parametrize("family", ["classifier", "vae", "charlm"])
def test_fsdp_trains_like_data_parallelism(report, family):
    dp, fsdp = report[family]["data"], report[family]["fsdp"]
    np.testing.assert_allclose(fsdp["losses"], dp["losses"], rtol=1e-5)
    assert dp["losses"][-1] < dp["losses"][0]
    # Adam divides by sqrt(v): where a gradient is ~0, reduction-order rounding moves that coordinate's
    # update by a few % of the learning rate (1e-3 to 2e-3), hence the absolute tolerance.
    for name in dp["params"]:
        np.testing.assert_allclose(fsdp["params"][name], dp["params"][name], rtol=1e-4, atol=1e-4, err_msg=name)


def test_fsdp_switch_runs_the_whole_loop(report):
    run = report["loop_fsdp"]
    assert sorted(run["losses"]) == ["1", "2", "3"] and all(np.isfinite(list(run["losses"].values())))
    assert np.isfinite(run["final"]["neg_elbo"]) and run["checkpoints"] == ["3"]


def test_accumulated_micro_batches_stay_split_over_devices(report):
    """Only gradient all-reduces: no micro-batch is gathered onto one device (k=4, 4 devices)."""
    assert report["accumulation_collectives"] == ["all-reduce"]


if __name__ == "__main__":
    target = pathlib.Path(sys.argv[1])
    (target / "report.json").write_text(json.dumps(four_device_report(target)))
