"""The loop's own cost: genjax's per-step work against a bare jitted step of the same model, timed in one process.

Command:  python -m benchmarks.loop_cost --model gpt2 --size 124m --seq-len 1024 --batch-size 8 [--dtype bf16] \
              [--steps 20] [--rounds 10] [--config.KEY=VALUE ...]
"bare": what a minimal training script runs, jitted with the same shardings and donation: `value_and_grad` of
the task's loss of network "model", the optimizer's update and `optax.apply_updates`. "loop": what
`genjax.loop` runs per step: the family's train step (`loop.compile_steps`: the key folded with the step, the
health scalars grad/update/param norm and learning rate, the metrics) and the on-device metric window
(`loop.accumulate_metrics`: sums, the non-finite flags and the first bad step). `rounds` rounds each time a
window of `steps` of both, the order alternating, so machine load hits both alike.
Prints one JSON line: median ms per step of each, `overhead` = loop / bare - 1, the commit (`source_revision`).
Families with one network "model" and a `loss(params, batch, rng) -> (loss, metrics)` (the transformers,
classifiers, VAE, DDPM) can be timed; the target of issue "Scale on accelerators" is <= 5 % on GPT-2 124M.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np
import optax

from benchmarks.step_throughput import DTYPES, check_sizes, family_of, make_config, parse_sized, set_up, source_revision, step_parser
from genjax import cli, loop
from genjax import sharding as sharding_lib
from genjax.errors import GenjaxError


def bare_step(task: Any, params_sharding: Any, opt_sharding: Any, data_sharding: Any, replicated: Any) -> Callable:
    """(params, opt_state, batch, rng) -> (params, opt_state, loss): the minimal jitted step of network "model"."""
    def step(params, opt_state, batch, rng):
        (loss, _), grads = jax.value_and_grad(task.loss, has_aux=True)(params, batch, rng)
        updates, opt_state = task.optimizer.tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    shardings = (params_sharding, opt_sharding, data_sharding, replicated)
    return jax.jit(step, in_shardings=shardings, out_shardings=(params_sharding, opt_sharding, replicated), donate_argnums=(0, 1))


def measure(model: str, batch_size: int, steps: int, rounds: int, dtype: str, config_args: Sequence[str]) -> dict[str, Any]:
    """The JSON figures of one comparison: `rounds` windows of `steps` steps of each, alternating (module docstring)."""
    family = family_of(model)
    check_sizes(steps, batch_size)
    config = make_config(family, batch_size, dtype, config_args)
    setup = set_up(family, config)
    task, mesh, batch, rng = setup.experiment.task, setup.mesh, setup.batch, setup.train_rng
    if set(setup.state.params) != {"model"} or not hasattr(task, "loss") or not hasattr(task, "optimizer"):
        raise GenjaxError(f"{model}'s {type(task).__name__} has no single-network loss and optimizer; time a transformer, classifier, VAE or DDPM")
    shardings = jax.tree.map(lambda leaf: leaf.sharding, setup.state)
    bare = bare_step(task, shardings.params["model"], shardings.opt_state["model"], sharding_lib.batch_sharding(mesh),
                     sharding_lib.replicated(mesh))
    params, opt_state = jax.tree.map(lambda x: x.copy(), (setup.state.params["model"], setup.state.opt_state["model"]))
    state, train_step = setup.state, setup.compiled
    metrics_shape = jax.eval_shape(task.train_step, setup.abstract_state, batch, rng)[1]
    totals = loop.empty_totals(metrics_shape)

    def loop_window(state, totals):
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = train_step(state, batch, rng)
            totals = loop.accumulate_metrics(totals, metrics, state.step)
        jax.block_until_ready((state, totals))
        return state, totals, (time.perf_counter() - start) / steps

    def bare_window(params, opt_state):
        start = time.perf_counter()
        for _ in range(steps):
            params, opt_state, loss = bare(params, opt_state, batch, rng)
        jax.block_until_ready((params, opt_state, loss))
        return params, opt_state, (time.perf_counter() - start) / steps

    state, totals, _ = loop_window(state, totals)  # compile and warm up both
    params, opt_state, _ = bare_window(params, opt_state)
    loop_s, bare_s = [], []
    for round_index in range(rounds):
        for which in (("loop", "bare") if round_index % 2 == 0 else ("bare", "loop")):
            if which == "loop":
                state, totals, seconds = loop_window(state, totals)
                loop_s.append(seconds)
            else:
                params, opt_state, seconds = bare_window(params, opt_state)
                bare_s.append(seconds)
    loop_ms, bare_ms = float(np.median(loop_s) * 1e3), float(np.median(bare_s) * 1e3)
    return {
        "model": model, "batch_size": batch_size, "dtype": dtype, "steps_per_window": steps, "rounds": rounds,
        "loop_step_ms_median": loop_ms, "bare_step_ms_median": bare_ms, "overhead": loop_ms / bare_ms - 1,
        "loop_step_ms_p25_p75": [float(np.percentile(loop_s, q) * 1e3) for q in (25, 75)],
        "bare_step_ms_p25_p75": [float(np.percentile(bare_s, q) * 1e3) for q in (25, 75)],
        "config_args": list(config_args), "device_kind": mesh.devices.flat[0].device_kind, "num_devices": mesh.devices.size,
        "jax": jax.__version__, "source_revision": source_revision(),
    }


def main(argv: Sequence[str]) -> None:
    parser = step_parser(__doc__, 20, "steps per timed window")
    parser.add_argument("--rounds", type=int, default=10, help="windows timed of each step, alternating")
    flags, config_args = parse_sized(parser, argv)
    result = measure(flags.model, flags.batch_size, flags.steps, flags.rounds, DTYPES[flags.dtype], config_args)
    print(f"loop {result['loop_step_ms_median']:.2f} ms, bare {result['bare_step_ms_median']:.2f} ms per step: "
          f"overhead {100 * result['overhead']:.1f} %", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    cli.run_main(main, sys.argv[1:])
