"""Analytic FLOP counts: per-layer formulas, and their sum over the matmuls and convolutions of a function.

Conventions (those of model-FLOPs utilisation, MFU):
  * a multiply-add is 2 FLOPs; only matmuls and convolutions are counted (elementwise work,
    softmax, normalisation and the optimizer update are overhead: they lower the MFU, as in the
    usual definition, rather than raise the count);
  * a training step costs `TRAIN_FLOPS_PER_FORWARD` = 3 forwards: the forward pass, plus the
    gradients with respect to the inputs and to the weights, each as costly as the forward.
    For a stack of dense layers with N weights this is the familiar 6 * N FLOPs per example
    (per token for sequence models), and for a transformer 6 * N + 12 * layers * context * d_model
    per token, the second term being the attention scores and the attention-weighted values.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import jax
from jax.extend import core as jex_core

from genjax.errors import GenjaxError

TRAIN_FLOPS_PER_FORWARD = 3


def dense_flops(rows: int, d_in: int, d_out: int) -> int:
    """Forward FLOPs of a dense layer [rows, d_in] @ [d_in, d_out] (the bias add is not counted)."""
    return 2 * rows * d_in * d_out


def conv_flops(batch: int, out_spatial: tuple[int, ...], kernel_spatial: tuple[int, ...], c_in: int, c_out: int, groups: int = 1) -> int:
    """Forward FLOPs of a convolution: 2 * batch * prod(out_spatial) * prod(kernel_spatial) * c_in / groups * c_out.

    Each output value is a dot product over the kernel window and the `c_in / groups`
    input channels of its group. Taps that fall on padding are counted (as XLA computes them).
    """
    if c_in % groups:
        raise GenjaxError(f"c_in={c_in} is not divisible by groups={groups}")
    return 2 * batch * math.prod(out_spatial) * math.prod(kernel_spatial) * (c_in // groups) * c_out


def conv_transpose_flops(batch: int, in_spatial: tuple[int, ...], kernel_spatial: tuple[int, ...], c_in: int, c_out: int) -> int:
    """Forward FLOPs of a transposed convolution: every input value is scattered over a kernel window.

    2 * batch * prod(in_spatial) * prod(kernel_spatial) * c_in * c_out, whatever the stride
    (the zeros a strided transposed convolution inserts between inputs are not work).
    """
    return 2 * batch * math.prod(in_spatial) * math.prod(kernel_spatial) * c_in * c_out


def attention_flops(batch: int, q_len: int, kv_len: int, d_model: int) -> int:
    """Forward FLOPs of the attention scores Q K^T and the weighted values A V, over all heads.

    2 * 2 * batch * q_len * kv_len * d_model (heads * head_dim = d_model). A causal mask is
    applied to the full score matrix, so the masked half is counted (as PaLM's MFU does).
    """
    return 4 * batch * q_len * kv_len * d_model


def transformer_train_flops(tokens: int, matmul_params: int, layers: int, context: int, d_model: int) -> int:
    """Training FLOPs of a decoder over `tokens` tokens: (6 * N + 12 * layers * context * d_model) per token.

    `matmul_params` is N: the weights used in matmuls (projections, MLPs, the output layer, so
    the embedding table when the output layer is tied to it), not biases or norm scales.
    """
    return tokens * (6 * matmul_params + 12 * layers * context * d_model)


def _dot_general_flops(eqn: jex_core.JaxprEqn) -> int:
    """2 * batch * contracted * lhs-free * rhs-free sizes, read from the operand shapes."""
    lhs, rhs = (v.aval.shape for v in eqn.invars)
    (lhs_contract, _), (lhs_batch, _) = eqn.params["dimension_numbers"]
    contracted = math.prod(lhs[d] for d in lhs_contract)
    batch = math.prod(lhs[d] for d in lhs_batch)
    lhs_free = math.prod(lhs) // (contracted * batch)
    rhs_free = math.prod(rhs) // (contracted * batch)
    return 2 * batch * contracted * lhs_free * rhs_free


def _conv_flops(eqn: jex_core.JaxprEqn) -> int:
    """2 * output size * kernel window * input channels per group, read from the operand shapes.

    Also right for the convolutions autodiff emits for gradients. An input dilated by
    `lhs_dilation` (transposed convolutions, input gradients of strided ones) is mostly zeros:
    only 1 / prod(lhs_dilation) of the taps meet data, so only those are counted.
    """
    rhs_shape = eqn.invars[1].aval.shape
    out_shape = eqn.outvars[0].aval.shape
    dims = eqn.params["dimension_numbers"]
    rhs_in_features = rhs_shape[dims.rhs_spec[1]]
    window = math.prod(rhs_shape[d] for d in dims.rhs_spec[2:])
    taps = math.prod(out_shape) * window * rhs_in_features
    return 2 * taps // math.prod(eqn.params["lhs_dilation"])


def matmul_equations(jaxpr: jex_core.Jaxpr, times: int = 1) -> Iterator[tuple[jex_core.JaxprEqn, int]]:
    """(equation, how many times it runs) for every matmul and convolution in `jaxpr`, looking inside
    calls, scans (times their length) and conds (the branch with the most FLOPs).

    Raises for a while loop, whose trip count is unknown before it runs.
    """
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in ("dot_general", "conv_general_dilated"):
            yield eqn, times
        elif name == "while":
            raise GenjaxError("cannot count the FLOPs of a while loop (unknown trip count); use lax.scan or a Python loop")
        elif name == "cond":
            branch = max(eqn.params["branches"], key=lambda branch: jaxpr_flops(branch.jaxpr))
            yield from matmul_equations(branch.jaxpr, times)
        else:
            for sub in jex_core.jaxprs_in_params(eqn.params):
                yield from matmul_equations(sub, times * (eqn.params["length"] if name == "scan" else 1))


def equation_flops(eqn: jex_core.JaxprEqn) -> int:
    """FLOPs of one matmul (`dot_general`) or convolution (`conv_general_dilated`) equation."""
    return _dot_general_flops(eqn) if eqn.primitive.name == "dot_general" else _conv_flops(eqn)


def jaxpr_flops(jaxpr: jex_core.Jaxpr) -> int:
    """Sum of matmul and convolution FLOPs in `jaxpr` (see `matmul_equations`)."""
    return sum(equation_flops(eqn) * times for eqn, times in matmul_equations(jaxpr))


def count_flops(fn: Callable[..., Any], *args: Any) -> int:
    """Matmul and convolution FLOPs of one call `fn(*args)` (args may be arrays or `jax.ShapeDtypeStruct`s)."""
    return jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def train_flops(forward: Callable[..., Any], *args: Any) -> int:
    """Model FLOPs of one training step whose forward pass is `forward(*args)`: 3 * its count."""
    return TRAIN_FLOPS_PER_FORWARD * count_flops(forward, *args)
