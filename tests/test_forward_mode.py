"""Every model differentiates in forward mode (`jax.jvp`) with its default fields, and its forward-mode derivative
agrees with its reverse-mode one: <J v, w> = <v, J^T w> for random directions v (parameters) and w (output).

The hand-written backward passes (genjax's LayerNorm, rotary's: CPU kernels, reverse mode only) are off by default
(`flax.linen.LayerNorm`, autodiff's rotary) and chosen only by an experiment's `model.backward` ("auto": on CPU alone)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genjax.errors import GenjaxError
from genjax.models.bert import BertClassifier, BertMaskedLM
from genjax.models.classifier import CNN, MLP
from genjax.models.ddpm import UNet
from genjax.models.gan import Discriminator, Generator
from genjax.models.gpt2 import GPT2
from genjax.models.layer_norm import uses_hand_backward
from genjax.models.sizes import size
from genjax.models.transformer import DecoderLM, EncoderClassifier
from genjax.models.vae import VAE

TOKENS = jnp.array([[5, 9, 3, 7, 2, 0, 0, 0], [4, 4, 8, 1, 6, 2, 9, 3]], jnp.int32)  # 0 pads the first row
IMAGES = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1))
SMALL_TRANSFORMER = dict(vocab_size=16, num_layers=2, num_heads=2, width=16, mlp_dim=32, max_len=8)

# name -> (module with its default fields, positional inputs, keyword inputs)
MODELS = {
    "mlp": (MLP(), (IMAGES,), {}),
    "cnn": (CNN(), (IMAGES,), {}),
    "vae": (VAE(), (IMAGES, jax.random.key(2)), {}),
    "vae_conv": (VAE(kind="conv"), (IMAGES, jax.random.key(2)), {}),
    "gan_generator": (Generator(), (jax.random.normal(jax.random.key(3), (2, 64)),), {"train": False}),
    "gan_discriminator": (Discriminator(), (IMAGES * 2 - 1,), {}),
    "ddpm_unet": (UNet(), (IMAGES, jnp.array([3, 700])), {}),
    "decoder_lm": (DecoderLM(**SMALL_TRANSFORMER), (TOKENS,), {}),  # rotary positions
    "encoder_classifier": (EncoderClassifier(**SMALL_TRANSFORMER), (TOKENS,), {}),
    "gpt2": (GPT2(**size("gpt2-tiny")), (TOKENS,), {}),
    "bert_classifier": (BertClassifier(**size("bert-test")), (TOKENS,), {}),
    "bert_masked_lm": (BertMaskedLM(**size("bert-test")), (TOKENS,), {}),
}


def first_output(out):
    """The first float array of a model's output (the VAE returns a tuple)."""
    return next(leaf for leaf in jax.tree.leaves(out) if jnp.issubdtype(leaf.dtype, jnp.floating))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_jvp_runs_through_every_model_and_agrees_with_its_vjp(name):
    module, args, kwargs = MODELS[name]
    variables = jax.jit(lambda key: module.init(key, *args, **kwargs))(jax.random.key(0))
    params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}

    def forward(params):
        return first_output(module.apply({"params": params, **rest}, *args, **kwargs))

    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(4), len(leaves))
    direction = jax.tree.unflatten(treedef, [jax.random.normal(k, p.shape, p.dtype) for k, p in zip(keys, leaves)])
    out, tangent = jax.jit(lambda p, d: jax.jvp(forward, (p,), (d,)))(params, direction)
    cotangent = jax.random.normal(jax.random.key(5), out.shape, out.dtype)
    (pullback,) = jax.jit(lambda p, c: jax.vjp(forward, p)[1](c))(params, cotangent)

    forward_mode = float(jnp.vdot(tangent, cotangent))
    reverse_mode = float(sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(direction), jax.tree.leaves(pullback))))
    assert np.isfinite(forward_mode) and abs(forward_mode) > 1e-3, f"{name}: a zero derivative tests nothing"
    np.testing.assert_allclose(forward_mode, reverse_mode, rtol=2e-3)


def test_hand_written_backward_passes_are_cpu_kernels_chosen_on_cpu_only_and_give_flax_s_gradients():
    assert uses_hand_backward("hand") and not uses_hand_backward("autodiff")
    assert uses_hand_backward("auto") == (jax.default_backend() == "cpu")
    with pytest.raises(GenjaxError, match="unknown backward 'manual'"):
        uses_hand_backward("manual")

    stock = DecoderLM(**SMALL_TRANSFORMER)
    params = jax.jit(stock.init)(jax.random.key(0), TOKENS)["params"]

    def loss(module):
        return lambda params: jnp.mean(jnp.tanh(module.apply({"params": params}, TOKENS)))

    hand = stock.clone(hand_backward=True)
    logits = [jax.jit(module.apply)({"params": params}, TOKENS) for module in (hand, stock)]
    np.testing.assert_allclose(*logits, atol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        jax.jit(jax.grad(loss(hand)))(params), jax.jit(jax.grad(loss(stock)))(params),
    )
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(loss(hand), (params,), (params,))
