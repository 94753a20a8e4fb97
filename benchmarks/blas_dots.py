"""A train step whose float32 dots run in numpy's OpenBLAS, through an XLA FFI custom call (CPU only).

`--matmul-bound` finds OpenBLAS faster than XLA:CPU at some of the steps' dot shapes, timed alone
(benchmarks/RESULTS.md). This module measures whether that carries over into the jitted step:
`with_openblas_dots(fn)` re-traces `fn`'s jaxpr (its backward pass already in it) with every
float32 `dot_general` replaced by the custom call of benchmarks/blas_matmul.cc, which it compiles
with g++ against the OpenBLAS in numpy's wheel. `benchmarks.compare` times it against the plain
step: `--variant xla --variant openblas --dots=openblas`.
"""

from __future__ import annotations

import ctypes
import functools
import pathlib
import shutil
import subprocess
import tempfile
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jex_core

from benchmarks import matmul_bound
from genjax import loop
from genjax import sharding as sharding_lib
from genjax.errors import GenjaxError

SOURCE = pathlib.Path(__file__).with_name("blas_matmul.cc")
TARGET = "genjax_openblas_matmul"


def _numpy_openblas() -> pathlib.Path:
    """The OpenBLAS shared library bundled with numpy's Linux wheel."""
    found = sorted((pathlib.Path(np.__file__).parent.parent / "numpy.libs").glob("libscipy_openblas64_*.so"))
    if not found:
        raise GenjaxError(
            "numpy's bundled OpenBLAS (numpy.libs/libscipy_openblas64_*.so) was not found; --dots=openblas needs "
            "numpy installed from its pip wheel on Linux"
        )
    return found[0]


@functools.cache
def register() -> None:
    """Compiles benchmarks/blas_matmul.cc (once per process) and registers it as an FFI target for CPU."""
    compiler = shutil.which("g++")
    if compiler is None:
        raise GenjaxError("--dots=openblas compiles a custom call with g++, which is not on PATH; install a C++ compiler")
    openblas = _numpy_openblas()
    library = pathlib.Path(tempfile.mkdtemp(prefix="genjax_blas_")) / "libblas_matmul.so"
    command = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", f"-I{jax.ffi.include_dir()}", str(SOURCE),
               "-o", str(library), str(openblas), f"-Wl,-rpath,{openblas.parent}"]
    built = subprocess.run(command, capture_output=True, text=True)
    if built.returncode != 0:
        raise GenjaxError(f"compiling {SOURCE.name} failed:\n{built.stderr[-2000:]}")
    handler = ctypes.cdll.LoadLibrary(str(library)).OpenblasMatmul
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(handler), platform="cpu")


def _as_matrices(x: jax.Array, batch: list[int], rows: list[int], cols: list[int]) -> tuple[jax.Array, int]:
    """(x laid out [batch, rows, cols], 0) or, when that costs a copy and [batch, cols, rows] does not, (x, 1)."""
    if [*batch, *cols, *rows] == list(range(x.ndim)):
        return x, 1
    return jnp.transpose(x, [*batch, *rows, *cols]), 0


def openblas_dot(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any) -> jax.Array:
    """`lax.dot_general(lhs, rhs, dimension_numbers)` for float32 operands, computed by the custom call.

    Output shape as dot_general's: [batch dims..., lhs free dims..., rhs free dims...].
    """
    (lhs_batch, lhs_free, lhs_contract), (rhs_batch, rhs_contract, rhs_free) = matmul_bound.matrix_axes(lhs.ndim, rhs.ndim, dimension_numbers)
    size = lambda x, dims: int(np.prod([x.shape[d] for d in dims]))
    a, trans_a = _as_matrices(lhs, lhs_batch, lhs_free, lhs_contract)
    b, trans_b = _as_matrices(rhs, rhs_batch, rhs_contract, rhs_free)
    m, n, k, batch = size(lhs, lhs_free), size(rhs, rhs_free), size(lhs, lhs_contract), size(lhs, lhs_batch)
    out_shape = [lhs.shape[d] for d in (*lhs_batch, *lhs_free)] + [rhs.shape[d] for d in rhs_free]
    flat = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((batch * m * n,), jnp.float32))(
        a.reshape(-1), b.reshape(-1), trans_a=np.int64(trans_a), trans_b=np.int64(trans_b),
        m=np.int64(m), n=np.int64(n), k=np.int64(k), batch=np.int64(batch),
    )
    return flat.reshape(out_shape)


def _is_float32_dot(eqn: jex_core.JaxprEqn) -> bool:
    return eqn.primitive.name == "dot_general" and all(v.aval.dtype == jnp.float32 for v in (*eqn.invars, *eqn.outvars))


def _evaluate(jaxpr: jex_core.Jaxpr, consts: list, *args: Any) -> list:
    """Evaluates `jaxpr` as jax would, but float32 dots (also inside nested jits and scans) by the custom call."""
    env: dict = {}
    read = lambda v: v.val if isinstance(v, jex_core.Literal) else env[v]
    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
        inputs = [read(v) for v in eqn.invars]
        if _is_float32_dot(eqn):
            outputs = [openblas_dot(*inputs, eqn.params["dimension_numbers"])]
        elif eqn.primitive.name in ("jit", "pjit"):
            outputs = _evaluate(eqn.params["jaxpr"].jaxpr, eqn.params["jaxpr"].consts, *inputs)
        elif eqn.primitive.name == "scan":
            outputs = _scan(eqn, inputs)
        else:
            if any(_is_float32_dot(inner) for sub in jex_core.jaxprs_in_params(eqn.params) for inner in sub.eqns):
                raise GenjaxError(f"--dots=openblas cannot reach the dots inside a '{eqn.primitive.name}'")
            with eqn.ctx.manager:
                outputs = eqn.primitive.bind(*inputs, **eqn.primitive.get_bind_params(eqn.params))
            outputs = outputs if eqn.primitive.multiple_results else [outputs]
        env.update(zip(eqn.outvars, outputs))
    return [read(v) for v in jaxpr.outvars]


def _scan(eqn: jex_core.JaxprEqn, inputs: list) -> list:
    """The outputs of scan equation `eqn` on `inputs`, its body evaluated by `_evaluate` (OpenBLAS dots)."""
    params, body = eqn.params, eqn.params["jaxpr"]
    num_consts, num_carry = params["num_consts"], params["num_carry"]
    consts, init, xs = inputs[:num_consts], inputs[num_consts:num_consts + num_carry], inputs[num_consts + num_carry:]

    def step(carry: list, x: list) -> tuple[list, list]:
        outputs = _evaluate(body.jaxpr, body.consts, *consts, *carry, *x)
        return outputs[:num_carry], outputs[num_carry:]

    carry, ys = lax.scan(step, init, xs, length=params["length"], reverse=params["reverse"], unroll=params["unroll"])
    return [*carry, *ys]


def with_openblas_dots(fn: Callable[..., Any], *example: Any) -> Callable[..., Any]:
    """`fn`, traced once at `example`'s shapes, with its float32 dots computed by OpenBLAS; for CPU only."""
    register()
    closed = jax.make_jaxpr(fn)(*example)
    out_tree = jax.tree.structure(jax.eval_shape(fn, *example))

    def run(*args: Any) -> Any:
        return jax.tree.unflatten(out_tree, _evaluate(closed.jaxpr, closed.consts, *jax.tree.leaves(args)))

    return run


def openblas_train_step(setup: Any) -> Callable:
    """The train step of a `benchmarks.step_throughput.StepSetup`, jitted as `genjax.loop.compile_steps` jits it
    (state donated, the same output shardings) but with OpenBLAS dots; one CPU device only."""
    if setup.mesh.devices.size != 1 or setup.mesh.devices.flat[0].platform != "cpu":
        raise GenjaxError(f"--dots=openblas runs on one CPU device, not {setup.mesh.devices.size} {setup.mesh.devices.flat[0].platform} devices")
    step = loop.skipping_nonfinite(setup.experiment.task.train_step) if setup.config.skip_nonfinite else setup.experiment.task.train_step
    shardings = (jax.tree.map(lambda x: x.sharding, setup.state), sharding_lib.replicated(setup.mesh))
    return jax.jit(with_openblas_dots(step, setup.state, setup.batch, setup.train_rng), out_shardings=shardings, donate_argnums=0)
