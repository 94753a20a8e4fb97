"""Mixed precision: the computation dtype a config's `dtype` names; parameters and optimizer state stay float32.

Modules take `dtype` for their matmuls/convolutions and keep `param_dtype` float32;
losses are computed in float32 from float32 logits. bfloat16 has float32's exponent
range, so its gradients underflow or overflow no more than float32's: no loss scaling
is needed (float16 would need it, and is not offered).
"""

from __future__ import annotations

import jax.numpy as jnp

from genjax.errors import GenjaxError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str) -> jnp.dtype:
    """The jnp dtype for `config.dtype` ('float32' or 'bfloat16')."""
    if name not in DTYPES:
        raise GenjaxError(f"unknown dtype '{name}'; choose one of {tuple(DTYPES)}, e.g. --config.dtype=bfloat16")
    return DTYPES[name]
