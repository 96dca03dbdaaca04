"""U2++ attention decoder and loss against the PyTorch transcription of WeNet (tests/wenet_ref)."""

from __future__ import annotations

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from most_jax.checkpoint import wenet
from most_jax.config import U2ppConfig, U2ppDecoderConfig, U2ppEncoderConfig
from most_jax.models.u2pp import loss as loss_lib
from most_jax.models.u2pp.decoder import BiTransformerDecoder
from wenet_ref import asr_model as ref_asr
from wenet_ref.decoder import BiTransformerDecoder as RefBiDecoder


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


def load_wenet_state(model: nnx.Module, state: dict, prefix: str) -> None:
    """Sets every parameter of `model` from WeNet tensors `prefix + key` placed by the product's
    name table (most_jax/checkpoint/wenet.py); each parameter must be filled completely."""
    params = nnx.state(model, nnx.Param)
    variables = {tuple(str(k) for k in path): var for path, var in nnx.to_flat_state(params)}
    flat = {path: np.zeros(var.shape, np.float32) for path, var in variables.items()}
    filled = {path: np.zeros(var.shape, bool) for path, var in variables.items()}
    depth = len(prefix.strip(".").split(".")) if prefix else 0
    for key, value in state.items():
        pl = wenet.place(prefix + key)
        if pl is None:
            continue
        path = pl.path[depth:]
        flat[path][pl.index] = pl.layout.to_jax(value.detach().numpy())
        filled[path][pl.index] = True
    assert all(f.all() for f in filled.values()), [p for p, f in filled.items() if not f.all()]
    for path, var in variables.items():
        var[...] = jnp.asarray(flat[path], var[...].dtype)
    nnx.update(model, params)


def paired_decoders(cfg: U2ppConfig, seed: int = 0):
    ref = ref_decoder(cfg, seed)
    ours = BiTransformerDecoder(cfg, rngs=nnx.Rngs(seed))
    load_wenet_state(ours, ref.state_dict(), "decoder.")
    return ref, ours


def _batch(cfg: U2ppConfig, seed: int, b=3, s=7, lmax=5):
    rng = np.random.default_rng(seed)
    memory = rng.normal(size=(b, s, cfg.encoder.output_size)).astype(np.float32)
    mem_lens = np.array([s, s - 2, 3][:b])
    ys_lens = np.array([lmax, 2, 0][:b])
    ys = rng.integers(1, cfg.vocab_size - 1, size=(b, lmax))
    return memory, mem_lens, ys, ys_lens


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
    # Padded positions are compared too for dense FFNs; an MoE layer routes no padding (its output
    # there is zero, WeNet's is computed), which no real position ever reads.
    real = np.arange(ys_in.shape[1])[None, :] <= ys_lens[:, None]
    if cfg.decoder.mlp_type != "moe":
        real[:] = True
    np.testing.assert_allclose(np.asarray(l_ours)[real], l_ref.numpy()[real], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(r_ours)[real], r_ref.numpy()[real], atol=1e-4, rtol=1e-4)


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
    forward = nnx.jit(lambda model, rng: model(*args, dropout_rng=rng)[0])
    eval_a = forward(ours, None)
    np.testing.assert_array_equal(np.asarray(eval_a), np.asarray(forward(ours, None)))
    train_a = forward(ours, jax.random.key(1))
    train_b = forward(ours, jax.random.key(2))
    assert not np.allclose(np.asarray(train_a), np.asarray(eval_a))
    assert not np.allclose(np.asarray(train_a), np.asarray(train_b))

    def f(model):
        logits, _, _ = model(*args, dropout_rng=jax.random.key(3))
        return jnp.mean(logits ** 2)

    grads = nnx.jit(nnx.grad(f))(ours)
    leaves = jax.tree.leaves(nnx.to_pure_dict(grads))
    assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
    assert any(np.abs(np.asarray(g)).max() > 0 for g in leaves)


@pytest.mark.parametrize("reverse_weight,lsm,normalize", [(0.3, 0.1, False), (0.0, 0.0, True), (0.5, 0.2, True)])
def test_attention_loss_matches_wenet(reverse_weight, lsm, normalize):
    cfg = tiny_cfg()
    ref, ours = paired_decoders(cfg, seed=4)
    memory, mem_lens, ys, ys_lens = _batch(cfg, 5)
    ys_lens = np.array([5, 2, 1])
    mem_mask = np.arange(memory.shape[1])[None, :] < mem_lens[:, None]
    sos = eos = cfg.vocab_size - 1
    stub = types.SimpleNamespace(decoder=ref, sos=sos, eos=eos, ignore_id=-1, reverse_weight=reverse_weight,
                                 vocab_size=cfg.vocab_size,
                                 criterion_att=ref_asr.LabelSmoothingLoss(cfg.vocab_size, -1, lsm, normalize))
    ys_pad = np.where(np.arange(ys.shape[1])[None, :] < ys_lens[:, None], ys, -1)
    with torch.no_grad():
        want_loss, want_acc = ref_asr.ASRModel._calc_att_loss(stub, torch.tensor(memory),
                                                              torch.tensor(mem_mask)[:, None, :],
                                                              torch.tensor(ys_pad), torch.tensor(ys_lens))
    loss, acc, _ = loss_lib.attention_loss(ours, jnp.asarray(memory), jnp.asarray(mem_mask), jnp.asarray(ys),
                                           jnp.asarray(ys_lens), sos=sos, eos=eos, reverse_weight=reverse_weight,
                                           lsm_weight=lsm, length_normalized=normalize)
    assert float(loss) == pytest.approx(float(want_loss), abs=1e-4, rel=1e-5)
    assert float(acc) == pytest.approx(float(want_acc), abs=1e-6)


def test_ctc_loss_matches_wenet():
    rng = np.random.default_rng(6)
    b, t, d, v = 3, 8, 12, 7
    ctc = ref_asr.CTC(v, d)
    hs = rng.normal(size=(b, t, d)).astype(np.float32)
    hlens = np.array([8, 5, 2])
    ys = rng.integers(1, v - 1, size=(b, 4))
    ys[0, 1] = ys[0, 0]  # a repeat needs a blank between
    ys_lens = np.array([4, 3, 4])  # the last cannot fit 2 frames: zero_infinity
    with torch.no_grad():
        want, _ = ctc(torch.tensor(hs), torch.tensor(hlens), torch.tensor(ys), torch.tensor(ys_lens))
        logits = ctc.ctc_lo(torch.tensor(hs)).numpy()
    got = loss_lib.ctc_loss(jnp.asarray(logits), jnp.asarray(hlens), jnp.asarray(ys), jnp.asarray(ys_lens))
    assert float(got) == pytest.approx(float(want), abs=1e-4, rel=1e-5)


@pytest.mark.parametrize("normalize", [False, True])
def test_micro_batch_losses_add_up_to_the_batch_loss(normalize):
    cfg = tiny_cfg()
    _, ours = paired_decoders(cfg, seed=7)
    memory, mem_lens, ys, ys_lens = _batch(cfg, 8)
    mem_mask = np.arange(memory.shape[1])[None, :] < mem_lens[:, None]
    kw = dict(sos=10, eos=10, reverse_weight=0.3, lsm_weight=0.1, length_normalized=normalize)
    whole, _, _ = loss_lib.attention_loss(ours, jnp.asarray(memory), jnp.asarray(mem_mask), jnp.asarray(ys),
                                          jnp.asarray(ys_lens), **kw)
    denom = (ys_lens + 1).sum() if normalize else len(ys_lens)
    parts = [loss_lib.attention_loss(ours, jnp.asarray(memory[sl]), jnp.asarray(mem_mask[sl]), jnp.asarray(ys[sl]),
                                     jnp.asarray(ys_lens[sl]), denom=denom, **kw)[0]
             for sl in (slice(0, 1), slice(1, 3))]
    assert float(sum(parts)) == pytest.approx(float(whole), rel=1e-5)


def test_unrolled_and_rematerialised_stacks_equal_the_scanned_one():
    cfg = tiny_cfg()
    _, ours = paired_decoders(cfg, seed=8)
    memory, mem_lens, ys, ys_lens = _batch(cfg, 9)
    mem_mask = jnp.asarray(np.arange(memory.shape[1])[None, :] < mem_lens[:, None])
    ys_in, _, _ = loss_lib.add_sos_eos(jnp.asarray(ys), jnp.asarray(ys_lens), 10, 10)
    args = (jnp.asarray(memory), mem_mask, ys_in, jnp.asarray(ys_lens + 1), ys_in)
    forward = nnx.jit(lambda model, *a: model(*a)[:2])
    step = nnx.jit(lambda dec, cache: dec.step(cache, ys_in[:, 0], 0, mem_mask)[0])
    want, want_r = forward(ours, *args)
    for scan, remat in ((False, "none"), (True, "full"), (False, "dots")):
        for dec in (ours.left_decoder, ours.right_decoder):
            dec.scan, dec.remat = scan, remat
        got, got_r = forward(ours, *args)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
        np.testing.assert_allclose(np.asarray(got_r), np.asarray(want_r), atol=1e-6)
        logp = step(ours.left_decoder, ours.left_decoder.init_cache(jnp.asarray(memory), 3))
        np.testing.assert_allclose(np.asarray(logp), np.asarray(jax.nn.log_softmax(want[:, 0])), atol=1e-5)
