"""Attention family building blocks: masks, kernels, rotary positions, KV-cached generation, logical axis names."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genjax.models import attention
from genjax.models.attention import dot_product_attention, rotary
from genjax.models.transformer import DecoderLM, EncoderClassifier
from genjax.sampling import generate, sample_token

VOCAB = 50


def small_lm(**overrides) -> DecoderLM:
    fields = dict(vocab_size=VOCAB, num_layers=2, num_heads=4, width=32, mlp_dim=64, max_len=24, num_kv_heads=2)
    return DecoderLM(**{**fields, **overrides})


def unboxed_params(model, tokens):
    return nn.unbox(model.init(jax.random.key(0), tokens)["params"])


def random_tokens(shape, seed=0, low=1):
    return jax.random.randint(jax.random.key(seed), shape, low, VOCAB)


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_a_later_token_cannot_change_an_earlier_output(positions):
    model = small_lm(positions=positions)
    tokens = random_tokens((2, 24))
    params = unboxed_params(model, tokens)
    changed = tokens.at[:, 15].set((tokens[:, 15] + 7) % VOCAB)
    before, after = model.apply({"params": params}, tokens), model.apply({"params": params}, changed)
    np.testing.assert_array_equal(before[:, :15], after[:, :15])
    assert float(jnp.abs(before[:, 15:] - after[:, 15:]).max()) > 1e-3  # and it does change the later ones


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_padding_changes_nothing(pooling):
    model = EncoderClassifier(vocab_size=VOCAB, num_layers=2, num_heads=4, width=32, mlp_dim=64, max_len=40, pooling=pooling)
    words = random_tokens((3, 12))
    padded = jnp.concatenate([words, jnp.zeros((3, 28), jnp.int32)], axis=1)
    params = unboxed_params(model, padded)
    np.testing.assert_allclose(model.apply({"params": params}, words), model.apply({"params": params}, padded), atol=1e-5)
    # A shorter review padded to the same length gives the same output as on its own.
    short = padded.at[0, 6:].set(0)
    np.testing.assert_allclose(model.apply({"params": params}, short)[0], model.apply({"params": params}, words[:1, :6])[0], atol=1e-5)


def test_xla_and_fused_kernels_agree():
    keys = jax.random.split(jax.random.key(1), 4)
    q = jax.random.normal(keys[0], (2, 16, 4, 8))
    mask = jax.random.bernoulli(keys[3], 0.8, (2, 1, 16)).at[:, :, 0].set(True)  # key padding, first key always real
    for kv_heads in (4, 2, 1):  # multi-head, grouped-query, multi-query
        k, v = (jax.random.normal(key, (2, 16, kv_heads, 8)) for key in keys[1:3])
        for causal in (True, False):
            out_xla, weights = dot_product_attention(q, k, v, causal=causal, mask=mask, kernel="xla")
            out_fused, _ = dot_product_attention(q, k, v, causal=causal, mask=mask, kernel="fused")
            np.testing.assert_allclose(out_xla, out_fused, atol=1e-5)
            np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
            assert float(jnp.where(mask[:, None], 0.0, weights).max()) == 0.0  # masked keys get no weight


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_blocked_kernel_gives_the_xla_values_and_gradients(monkeypatch, kv_heads):
    monkeypatch.setattr(attention, "BLOCK_SCORES", 2 * 4 * 16 * 16)  # two rows per block: a batch of 6 makes 3 blocks
    keys = jax.random.split(jax.random.key(2), 5)
    q = jax.random.normal(keys[0], (6, 16, 4, 8))
    k, v = (jax.random.normal(key, (6, 16, kv_heads, 8)) for key in keys[1:3])
    mask = jax.random.bernoulli(keys[3], 0.7, (6, 1, 16)).at[:, :, 0].set(True)
    weights = jax.random.normal(keys[4], q.shape)  # a loss that tells rows apart
    for causal in (True, False):
        def loss(q, k, v, kernel):
            return jnp.sum(weights * dot_product_attention(q, k, v, causal=causal, mask=mask, kernel=kernel)[0])

        xla = jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v, "xla")
        blocked = jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v, "blocked")
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), xla, blocked)


def test_whole_models_agree_across_kernels():
    model = small_lm()
    tokens = random_tokens((2, 24))
    params = unboxed_params(model, tokens)
    fused = model.clone(attention_kernel="fused")
    np.testing.assert_allclose(model.apply({"params": params}, tokens), fused.apply({"params": params}, tokens), atol=1e-4)


def test_rotary_scores_depend_only_on_relative_position():
    q, k = jax.random.normal(jax.random.key(0), (2, 1, 1, 1, 16))
    score = lambda i, j: float(jnp.sum(rotary(q, jnp.full((1, 1), i)) * rotary(k, jnp.full((1, 1), j))))
    assert score(3, 1) == pytest.approx(score(10, 8), rel=1e-4)
    assert score(3, 1) != pytest.approx(score(3, 2), rel=1e-3)


def test_rotary_matches_the_rotation_formula_and_its_autodiff_gradient():
    """The tables and the hand-written backward pass give the plain formula's values and gradients."""
    x = jax.random.normal(jax.random.key(0), (2, 5, 3, 8))
    weights = jax.random.normal(jax.random.key(1), x.shape)
    positions = jax.random.randint(jax.random.key(2), (2, 5), 0, 100)

    def reference(x):
        angles = positions[..., None] * 10_000.0 ** (-jnp.arange(4) / 4)
        cos, sin = jnp.cos(angles)[:, :, None], jnp.sin(angles)[:, :, None]
        return jnp.concatenate([x[..., :4] * cos - x[..., 4:] * sin, x[..., 4:] * cos + x[..., :4] * sin], axis=-1)

    np.testing.assert_allclose(rotary(x, positions), reference(x), atol=1e-5)
    grad = jax.grad(lambda x: jnp.sum(weights * rotary(x, positions)))(x)
    np.testing.assert_allclose(grad, jax.grad(lambda x: jnp.sum(weights * reference(x)))(x), atol=1e-5)

    def hvp(rotate):  # second derivatives (grad of grad) through the hand-written backward pass
        loss = lambda x: jnp.sum(weights * jnp.tanh(rotate(x)))
        return jax.grad(lambda x: jnp.vdot(jax.grad(loss)(x), weights))(x)

    np.testing.assert_allclose(hvp(lambda x: rotary(x, positions)), hvp(reference), atol=1e-5)


@pytest.mark.parametrize("positions,temperature,top_k", [("rotary", 1.0, 10), ("learned", 0.0, 0)])
def test_kv_cached_generation_equals_full_recomputation(positions, temperature, top_k):
    model = small_lm(positions=positions)
    prompt = np.asarray(random_tokens((3, 5), seed=2))
    params = unboxed_params(model, jnp.asarray(prompt))
    params = jax.tree.map(lambda p: p * 3.0 if p.ndim > 1 else p, params)  # sharper logits: a real test of sampling
    rng = jax.random.key(7)
    cached = generate(model, params, prompt, rng, num_new=19, temperature=temperature, top_k=top_k)
    # No cache: the whole sequence again for every token (zero-filled to one length; causal, so the tail is unseen).
    full_logits = jax.jit(lambda tokens: model.apply({"params": params}, tokens))
    sequence = np.zeros((3, 24), np.int32)
    sequence[:, :5] = prompt
    for i in range(19):
        logits = full_logits(sequence)[:, 4 + i]
        sequence[:, 5 + i] = np.asarray(sample_token(jax.random.fold_in(rng, i), logits, temperature, top_k))
    np.testing.assert_array_equal(cached, sequence[:, 5:])
    assert len(np.unique(cached)) > 3


def test_rotary_generation_runs_past_the_context():
    model = small_lm()
    prompt = np.asarray(random_tokens((1, 30)))  # longer than max_len: the last 24 tokens are kept
    tokens = generate(model, unboxed_params(model, jnp.asarray(prompt[:, :24])), prompt, jax.random.key(0), num_new=50)
    assert tokens.shape == (1, 50) and tokens.min() >= 0 and tokens.max() < VOCAB


def test_parameters_carry_logical_axis_names():
    model = small_lm()
    boxed = model.init(jax.random.key(0), random_tokens((1, 8)))["params"]
    specs = nn.get_partition_spec(boxed)
    assert tuple(specs["embed"]["embedding"]) == ("vocab", "embed")
    assert tuple(specs["block0"]["attention"]["qkv"]["kernel"]) == ("embed", "heads", "kv")
    assert tuple(specs["block0"]["attention"]["out"]["kernel"]) == ("heads", "kv", "embed")
    assert tuple(specs["block1"]["mlp"]["up"]["kernel"]) == ("embed", "mlp")
    assert all(isinstance(leaf, nn.Partitioned) for leaf in jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned)))


def test_bfloat16_computation_keeps_float32_parameters():
    model = small_lm(dtype=jnp.bfloat16)
    tokens = random_tokens((2, 24))
    params = unboxed_params(model, tokens)
    assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    logits = model.apply({"params": params}, tokens)
    assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_bfloat16_embedding_gathers_float32_rows(positions):
    """The lookup gathers float32 rows and casts them (values equal to a gather from a bf16 table),
    so the gradient's scatter-add into the table runs in float32, not bf16."""
    model = small_lm(dtype=jnp.bfloat16, positions=positions)
    tokens = random_tokens((2, 24))
    params = unboxed_params(model, tokens)
    embedded = model.apply({"params": params}, tokens, jnp.broadcast_to(jnp.arange(24), tokens.shape), method="embed_tokens")
    expected = jnp.take(params["embed"]["embedding"].astype(jnp.bfloat16), tokens, axis=0)
    if positions == "learned":
        expected = expected + params["position_embed"]["embedding"].astype(jnp.bfloat16)[None]
    assert embedded.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(embedded, np.float32), np.asarray(expected, np.float32))

    def loss(params):
        return jnp.sum(model.apply({"params": params}, tokens) ** 2)

    jaxpr = jax.make_jaxpr(jax.grad(loss))(params).jaxpr
    scatters = [eqn for eqn in _all_equations(jaxpr) if eqn.primitive.name == "scatter-add"]
    assert len(scatters) == (2 if positions == "learned" else 1)
    assert {str(eqn.outvars[0].aval.dtype) for eqn in scatters} == {"float32"}


def _all_equations(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from _all_equations(sub)


@pytest.mark.parametrize("model", ["BertClassifier", "BertMaskedLM", "GPT2"])
def test_bert_and_gpt2_parameters_carry_logical_names_in_uniform_blocks(model):
    """Every parameter is boxed with logical names (no mesh axes), and the blocks are alike, ready to be stacked on
    a 'layers' axis and scanned."""
    from genjax.models import bert, gpt2
    from genjax.models.sizes import size

    module = {"BertClassifier": bert.BertClassifier, "BertMaskedLM": bert.BertMaskedLM, "GPT2": gpt2.GPT2}[model]
    boxed = jax.eval_shape(module(**size("gpt2-tiny" if model == "GPT2" else "bert-test")).init, jax.random.key(0), random_tokens((1, 8)))
    boxed = boxed["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert all(isinstance(leaf, nn.Partitioned) for leaf in leaves)
    names = {name for leaf in leaves for name in leaf.names if name is not None}
    assert names <= {"vocab", "embed", "mlp", "heads", "kv"}
    specs = nn.get_partition_spec(boxed)
    assert tuple(specs["embed"]["embedding"]) == ("vocab", "embed")
    assert tuple(specs["block1"]["mlp"]["up"]["kernel"]) == ("embed", "mlp")
    assert jax.tree.map(jnp.shape, nn.unbox(boxed["block0"])) == jax.tree.map(jnp.shape, nn.unbox(boxed["block1"]))
