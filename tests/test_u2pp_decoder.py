"""U2++ attention decoder and loss against the PyTorch transcription of WeNet (tests/wenet_ref)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from most_jax.config import U2ppConfig, U2ppDecoderConfig, U2ppEncoderConfig
from most_jax.models.u2pp import loss as loss_lib
from most_jax.models.u2pp.decoder import BiTransformerDecoder, sinusoid_positions
from wenet_ref.decoder import BiTransformerDecoder as RefBiDecoder
from wenet_ref.modules import PositionalEncoding


def tiny_cfg(d=36, heads=4, units=20, blocks=2, r_blocks=1, vocab=11, mlp_type="position_wise_feed_forward",
             bias=True, experts=3, top_k=2) -> U2ppConfig:
    base = U2ppDecoderConfig()
    moe = dataclasses.replace(base.moe, num_experts=experts, top_k=top_k, expert_ffn_dim=units, expert_bias=bias,
                              dispatch="reference")
    dec = dataclasses.replace(base, attention_heads=heads, linear_units=units, num_blocks=blocks,
                              r_num_blocks=r_blocks, mlp_type=mlp_type, moe=moe)
    enc = dataclasses.replace(U2ppEncoderConfig(), output_size=d, attention_heads=heads, linear_units=units)
    cfg = U2ppConfig(vocab_size=vocab, encoder=enc, decoder=dec)
    cfg.validate()
    return cfg


def ref_decoder(cfg: U2ppConfig, seed: int) -> RefBiDecoder:
    torch.manual_seed(seed)
    dec = cfg.decoder
    ref = RefBiDecoder(cfg.vocab_size, cfg.encoder.output_size, dec.attention_heads, dec.linear_units, dec.num_blocks,
                       dec.r_num_blocks, mlp_type=dec.mlp_type, mlp_bias=dec.moe.expert_bias,
                       n_expert=dec.moe.num_experts, n_expert_activated=dec.moe.top_k)
    with torch.no_grad():  # torch's default init leaves biases and norms too regular to catch mix-ups
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return ref.eval()


def _t(x: torch.Tensor) -> np.ndarray:
    return x.detach().numpy()


def decoder_params(sd: dict, prefix: str, layers: int, moe: bool, bias: bool) -> dict:
    """WeNet state_dict (one TransformerDecoder under `prefix`) -> our nested param dict."""

    def stack(name, transpose=False):
        arrays = [_t(sd[f"{prefix}.decoders.{i}.{name}"]) for i in range(layers)]
        return np.stack([a.T if transpose else a for a in arrays])

    def linear(name, with_bias=True):
        out = {"kernel": stack(f"{name}.weight", transpose=True)}
        if with_bias:
            out["bias"] = stack(f"{name}.bias")
        return out

    layer = {}
    for att in ("self_attn", "src_attn"):
        layer[att] = {n: linear(f"{att}.{n}") for n in ("linear_q", "linear_k", "linear_v", "linear_out")}
    for norm in ("norm1", "norm2", "norm3"):
        layer[norm] = {"scale": stack(f"{norm}.weight"), "bias": stack(f"{norm}.bias")}
    if moe:
        head = f"{prefix}.decoders.0.feed_forward.experts."
        experts = sorted({int(k[len(head):].split(".")[0]) for k in sd if k.startswith(head)})

        def per_expert(name, transpose):
            return np.stack([stack(f"feed_forward.experts.{e}.{name}", transpose) for e in experts], axis=1)

        ff = {"gate": stack("feed_forward.gate.weight", transpose=True),
              "w_1": per_expert("w_1.weight", True), "w_2": per_expert("w_2.weight", True)}
        if bias:
            ff["b_1"], ff["b_2"] = per_expert("w_1.bias", False), per_expert("w_2.bias", False)
    else:
        ff = {"w_1": linear("feed_forward.w_1", bias), "w_2": linear("feed_forward.w_2", bias)}
    layer["feed_forward"] = ff
    return {"embed": _t(sd[f"{prefix}.embed.0.weight"]), "decoders": layer,
            "after_norm": {"scale": _t(sd[f"{prefix}.after_norm.weight"]), "bias": _t(sd[f"{prefix}.after_norm.bias"])},
            "output_layer": {"kernel": _t(sd[f"{prefix}.output_layer.weight"]).T,
                             "bias": _t(sd[f"{prefix}.output_layer.bias"])}}


def load_into(model: nnx.Module, params: dict) -> None:
    """Replaces every parameter of `model` by `params` (same nested names and shapes, or fails)."""
    state = nnx.state(model, nnx.Param)
    expected = nnx.to_pure_dict(state)

    def check(path, want, got):
        assert got.shape == want.shape, (path, want.shape, got.shape)
        return jnp.asarray(got, want.dtype)

    merged = jax.tree.map_with_path(check, expected, params)
    nnx.replace_by_pure_dict(state, merged)
    nnx.update(model, state)


def bi_decoder_params(ref: RefBiDecoder, cfg: U2ppConfig) -> dict:
    sd = ref.state_dict()
    moe, bias = cfg.decoder.mlp_type == "moe", cfg.decoder.moe.expert_bias
    out = {"left_decoder": decoder_params(sd, "left_decoder", cfg.decoder.num_blocks, moe, bias)}
    if cfg.decoder.r_num_blocks:
        out["right_decoder"] = decoder_params(sd, "right_decoder", cfg.decoder.r_num_blocks, moe, bias)
    return out


def paired_decoders(cfg: U2ppConfig, seed: int = 0):
    ref = ref_decoder(cfg, seed)
    ours = BiTransformerDecoder(cfg, rngs=nnx.Rngs(seed))
    load_into(ours, bi_decoder_params(ref, cfg))
    return ref, ours


def _batch(cfg: U2ppConfig, seed: int, b=3, s=7, lmax=5):
    rng = np.random.default_rng(seed)
    memory = rng.normal(size=(b, s, cfg.encoder.output_size)).astype(np.float32)
    mem_lens = np.array([s, s - 2, 3][:b])
    ys_lens = np.array([lmax, 2, 0][:b])
    ys = rng.integers(1, cfg.vocab_size - 1, size=(b, lmax))
    return memory, mem_lens, ys, ys_lens


def test_positions_match_wenet_table():
    pe = PositionalEncoding(36, 0.0).pe[0, :50].numpy()
    np.testing.assert_allclose(np.asarray(sinusoid_positions(jnp.arange(50), 36)), pe, atol=1e-6)


VARIANTS = [
    dict(),
    dict(bias=False),
    dict(d=20, heads=5, units=13, blocks=3, r_blocks=2, vocab=17),
    dict(mlp_type="moe"),
    dict(mlp_type="moe", bias=False, experts=4, top_k=1),
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) or "base")
def test_teacher_forced_logits_match_wenet(variant):
    cfg = tiny_cfg(**variant)
    ref, ours = paired_decoders(cfg)
    memory, mem_lens, ys, ys_lens = _batch(cfg, 1)
    sos = eos = cfg.vocab_size - 1
    ys_in, _, _ = loss_lib.add_sos_eos(jnp.asarray(ys), jnp.asarray(ys_lens), sos, eos)
    r_ys_in, _, _ = loss_lib.add_sos_eos(loss_lib.reverse_targets(jnp.asarray(ys), jnp.asarray(ys_lens)),
                                         jnp.asarray(ys_lens), sos, eos)
    mem_mask = np.arange(memory.shape[1])[None, :] < mem_lens[:, None]
    with torch.no_grad():
        l_ref, r_ref, _ = ref(torch.tensor(memory), torch.tensor(mem_mask)[:, None, :],
                              torch.tensor(np.asarray(ys_in)), torch.tensor(ys_lens + 1),
                              torch.tensor(np.asarray(r_ys_in)), 0.3)
    l_ours, r_ours, _ = ours(jnp.asarray(memory), jnp.asarray(mem_mask), ys_in, jnp.asarray(ys_lens + 1), r_ys_in)
    np.testing.assert_allclose(np.asarray(l_ours), l_ref.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(r_ours), r_ref.numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mlp_type", ["position_wise_feed_forward", "moe"])
def test_cached_step_equals_full_forward(mlp_type):
    cfg = tiny_cfg(mlp_type=mlp_type)
    _, ours = paired_decoders(cfg)
    memory, mem_lens, ys, _ = _batch(cfg, 2)
    mem_mask = jnp.asarray(np.arange(memory.shape[1])[None, :] < mem_lens[:, None])
    b, t = ys.shape
    tokens = jnp.asarray(np.concatenate([np.full((b, 1), cfg.vocab_size - 1), ys], axis=1))
    full, _, _ = ours(jnp.asarray(memory), mem_mask, tokens, jnp.full((b,), t + 1))
    full_logp = jax.nn.log_softmax(full, axis=-1)
    left = ours.left_decoder
    cache = left.init_cache(jnp.asarray(memory), t + 3)
    step = jax.jit(lambda c, tok, pos: left.step(c, tok, pos, mem_mask))
    for i in range(t + 1):
        logp, cache = step(cache, tokens[:, i], i)
        np.testing.assert_allclose(np.asarray(logp), np.asarray(full_logp[:, i]), atol=1e-5, rtol=1e-5)


def test_dropout_is_explicit_and_gradients_are_finite():
    cfg = tiny_cfg()
    cfg = dataclasses.replace(cfg, decoder=dataclasses.replace(cfg.decoder, dropout_rate=0.3,
                                                               positional_dropout_rate=0.2,
                                                               self_attention_dropout_rate=0.1))
    ours = BiTransformerDecoder(cfg, rngs=nnx.Rngs(0))
    memory, mem_lens, ys, ys_lens = _batch(cfg, 3)
    mem_mask = jnp.asarray(np.arange(memory.shape[1])[None, :] < mem_lens[:, None])
    ys_in, _, _ = loss_lib.add_sos_eos(jnp.asarray(ys), jnp.asarray(ys_lens), 10, 10)
    args = (jnp.asarray(memory), mem_mask, ys_in, jnp.asarray(ys_lens + 1))
    eval_a, _, _ = ours(*args)
    eval_b, _, _ = ours(*args)
    np.testing.assert_array_equal(np.asarray(eval_a), np.asarray(eval_b))
    train_a, _, _ = ours(*args, dropout_rng=jax.random.key(1))
    train_b, _, _ = ours(*args, dropout_rng=jax.random.key(2))
    assert not np.allclose(np.asarray(train_a), np.asarray(eval_a))
    assert not np.allclose(np.asarray(train_a), np.asarray(train_b))

    def f(model):
        logits, _, _ = model(*args, dropout_rng=jax.random.key(3))
        return jnp.mean(logits ** 2)

    grads = nnx.grad(f)(ours)
    leaves = jax.tree.leaves(nnx.to_pure_dict(grads))
    assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
    assert any(np.abs(np.asarray(g)).max() > 0 for g in leaves)
