"""The U2++ Conformer encoder against WeNet's (tests/wenet_ref), weights copied through the product
name table (most_jax/checkpoint/wenet.py), plus its own properties: masks, padding, streaming,
causality, scan/remat equivalence and training gradients."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from most_jax.checkpoint import wenet
from most_jax.checkpoint.param_tree import flatten
from most_jax.config import U2ppConfig, U2ppEncoderConfig
from most_jax.models.u2pp import masks
from most_jax.models.u2pp.encoder import ConformerEncoder
from most_jax.models.u2pp.streaming import forward_chunk, forward_chunk_by_chunk
from most_jax.models.u2pp.subsampling import VARIANTS, output_length
from wenet_ref import modules as ref_modules
from wenet_ref.encoder import ConformerEncoder as RefEncoder

DENSE = "position_wise_feed_forward"


def _cfg(*, d=36, heads=4, units=20, blocks=2, bins=23, input_layer="conv2d", kernel=8, causal=True, mlp_type=DENSE,
         bias=True, dropout=0.0, **model) -> U2ppConfig:
    enc = U2ppEncoderConfig(output_size=d, attention_heads=heads, linear_units=units, num_blocks=blocks,
                            input_layer=input_layer, cnn_module_kernel=kernel, causal=causal, mlp_type=mlp_type,
                            dropout_rate=dropout, positional_dropout_rate=dropout, attention_dropout_rate=dropout)
    enc = dataclasses.replace(enc, moe=dataclasses.replace(enc.moe, expert_bias=bias, num_experts=3, top_k=2,
                                                           dispatch="reference"))
    return U2ppConfig(input_dim=bins, encoder=enc, **model)


def _reference(cfg: U2ppConfig, seed: int = 0) -> RefEncoder:
    """WeNet's encoder for `cfg` with random weights (LayerNorms and CMVN randomised too)."""
    enc = cfg.encoder
    torch.manual_seed(seed)
    cmvn = ref_modules.GlobalCMVN(torch.randn(cfg.input_dim), 0.5 + torch.rand(cfg.input_dim))
    model = RefEncoder(cfg.input_dim, output_size=enc.output_size, attention_heads=enc.attention_heads,
                       linear_units=enc.linear_units, num_blocks=enc.num_blocks, dropout_rate=enc.dropout_rate,
                       positional_dropout_rate=enc.positional_dropout_rate,
                       attention_dropout_rate=enc.attention_dropout_rate, input_layer=enc.input_layer,
                       static_chunk_size=enc.static_chunk_size, use_dynamic_chunk=enc.use_dynamic_chunk,
                       global_cmvn=cmvn, use_dynamic_left_chunk=enc.use_dynamic_left_chunk,
                       cnn_module_kernel=enc.cnn_module_kernel, causal=enc.causal, norm_eps=enc.norm_eps,
                       mlp_type=enc.mlp_type, mlp_bias=enc.moe.expert_bias, n_expert=enc.moe.num_experts,
                       n_expert_activated=enc.moe.top_k)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith("weight") else 0.0))
    return model.eval()


def _load(model: ConformerEncoder, reference: RefEncoder) -> None:
    """Copies the reference's tensors into the model through wenet.place (every parameter set)."""
    state = nnx.state(model, nnx.Param)
    pure = jax.tree.map(np.array, nnx.to_pure_dict(state))
    seen = set()
    for key, tensor in reference.state_dict().items():
        placement = wenet.place("encoder." + key)
        if placement is None:
            continue
        node = pure
        for part in placement.path[1:-1]:
            node = node[part]
        node[placement.path[-1]][placement.index] = placement.layout.to_jax(tensor.numpy())
        seen.add(placement.path[1:])
    flat = {path for path, _ in flatten(pure)}
    assert flat == seen, f"parameters not in WeNet's state_dict: {sorted(flat - seen)}"
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)


def _pair(cfg: U2ppConfig, seed: int = 0):
    reference = _reference(cfg, seed)
    model = ConformerEncoder(cfg, rngs=nnx.Rngs(seed))
    _load(model, reference)
    return model, reference


@nnx.jit(static_argnames=("chunk_size", "num_left_chunks"))
def _encode(model, feats, lengths, chunk_size, num_left_chunks):
    return model.encode(feats, lengths, chunk_size=chunk_size, num_left_chunks=num_left_chunks)


def _feats(b, u, bins, seed=0):
    return np.random.default_rng(seed).standard_normal((b, u, bins)).astype(np.float32)


def _compare(model, reference, feats, lengths, chunks):
    errors = {}
    for chunk, left in chunks:
        with torch.no_grad():
            want, want_mask = reference(torch.from_numpy(feats), torch.from_numpy(lengths), chunk, left)
        got, valid, _ = _encode(model, jnp.asarray(feats), jnp.asarray(lengths), chunk, left)
        np.testing.assert_array_equal(np.asarray(valid), want_mask[:, 0].numpy())
        keep = want_mask[:, 0].numpy()
        errors[(chunk, left)] = float(np.abs(np.asarray(got)[keep] - want.numpy()[keep]).max())
    assert max(errors.values()) < 1e-4, errors
    return errors


CHUNKS = [(-1, -1), (1, -1), (4, -1), (16, -1), (2, 1), (4, 0)]


@pytest.mark.parametrize("variant", [
    dict(input_layer="conv2d", kernel=8, causal=True, bins=80, bias=True),
    dict(input_layer="conv2d6", kernel=3, causal=True, bins=23, bias=False),
    dict(input_layer="conv2d8", kernel=15, causal=False, bins=80, bias=True),
])
def test_dense_encoder_matches_wenet(variant):
    cfg = _cfg(**variant)
    model, reference = _pair(cfg)
    lengths = np.array([140, 97, 61], np.int32)
    _compare(model, reference, _feats(3, 140, cfg.input_dim), lengths, CHUNKS)


@pytest.mark.parametrize("bias,dispatch", [(True, "reference"), (False, "auto")])
def test_moe_encoder_matches_wenet(bias, dispatch):
    cfg = _cfg(mlp_type="moe", bias=bias, kernel=5)
    cfg = dataclasses.replace(cfg, encoder=dataclasses.replace(
        cfg.encoder, moe=dataclasses.replace(cfg.encoder.moe, dispatch=dispatch, capacity_factor=4.0)))
    model, reference = _pair(cfg, seed=4)
    lengths = np.array([70, 43], np.int32)
    _compare(model, reference, _feats(2, 70, cfg.input_dim, seed=2), lengths, [(-1, -1), (4, 1)])
    _, _, stats = _encode(model, jnp.asarray(_feats(2, 70, cfg.input_dim)), jnp.asarray(lengths), -1, -1)
    load_LFGE = np.asarray(stats.load_GE)
    assert load_LFGE.shape == (cfg.encoder.num_blocks, 2, 1, cfg.encoder.moe.num_experts)
    # every real frame after subsampling (16 + 10), and no padding, sends top_k assignments per MoE layer
    frames = sum(output_length(VARIANTS["conv2d"], int(n)) for n in lengths)
    np.testing.assert_allclose(load_LFGE.sum(axis=(2, 3)), frames * cfg.encoder.moe.top_k)


def test_odd_width_heads_and_full_utterances():
    cfg = _cfg(d=30, heads=5, units=7, blocks=3, bins=17, kernel=4)
    model, reference = _pair(cfg, seed=1)
    _compare(model, reference, _feats(2, 45, 17, seed=3), np.array([45, 45], np.int32), [(-1, -1), (3, 2)])


def test_padded_batch_equals_each_utterance_alone():
    cfg = _cfg(kernel=5)
    model = ConformerEncoder(cfg, rngs=nnx.Rngs(0))
    feats = _feats(3, 90, cfg.input_dim, seed=4)
    lengths = np.array([90, 51, 23], np.int32)
    for chunk in (-1, 4):
        out, valid, _ = _encode(model, jnp.asarray(feats), jnp.asarray(lengths), chunk, -1)
        for i, n in enumerate(lengths):
            alone, alone_valid, _ = _encode(model, jnp.asarray(feats[i:i + 1, :n]), jnp.asarray(lengths[i:i + 1]),
                                            chunk, -1)
            t = alone.shape[1]
            assert int(np.asarray(valid[i]).sum()) == t == output_length(VARIANTS["conv2d"], int(n))
            np.testing.assert_allclose(np.asarray(out[i, :t]), np.asarray(alone[0]), atol=1e-5)


@pytest.mark.parametrize("chunk,left,frames", [(1, 2, 47), (4, -1, 83), (4, 2, 83), (3, 0, 83)])
def test_streaming_equals_chunk_masked_full_forward_and_wenet(chunk, left, frames):
    """Two utterances streamed together (WeNet streams one); every cache length compiles a step,
    so unlimited left context streams few chunks."""
    cfg = _cfg(kernel=4)
    model, reference = _pair(cfg, seed=2)
    feats = _feats(2, frames, cfg.input_dim, seed=5)
    streamed, valid = forward_chunk_by_chunk(model, jnp.asarray(feats), chunk, left)
    full, _, _ = _encode(model, jnp.asarray(feats), jnp.asarray([frames, frames]), chunk, left)
    assert streamed.shape == full.shape and bool(valid.all())
    np.testing.assert_allclose(np.asarray(streamed), np.asarray(full), atol=2e-5)
    for i in range(2):
        with torch.no_grad():
            want, _ = reference.forward_chunk_by_chunk(torch.from_numpy(feats[i:i + 1]), chunk, left)
        np.testing.assert_allclose(np.asarray(streamed[i:i + 1]), want.numpy(), atol=1e-4)


def test_forward_chunk_caches_match_wenet():
    """One WeNet forward_chunk step from given caches: output and both next caches."""
    cfg = _cfg(kernel=6, blocks=3)
    model, reference = _pair(cfg, seed=3)
    enc = cfg.encoder
    rng = np.random.default_rng(0)
    cache_t, chunk = 8, 4
    att = rng.standard_normal((enc.num_blocks, enc.attention_heads, cache_t, 2 * 9)).astype(np.float32)
    cnn = rng.standard_normal((enc.num_blocks, 1, enc.output_size, enc.cnn_module_kernel - 1)).astype(np.float32)
    xs = _feats(1, (chunk - 1) * 4 + 7, cfg.input_dim, seed=6)
    with torch.no_grad():
        want = reference.forward_chunk(torch.from_numpy(xs), 12, 6, torch.from_numpy(att), torch.from_numpy(cnn))
    got = forward_chunk(model, jnp.asarray(xs), 12, 6, jnp.asarray(att[:, None]), jnp.asarray(cnn))
    np.testing.assert_allclose(np.asarray(got[0]), want[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(np.asarray(got[1][:, 0]), want[1].numpy(), atol=1e-4)
    np.testing.assert_allclose(np.asarray(got[2]), want[2].numpy(), atol=1e-4)
    assert got[1].shape == (enc.num_blocks, 1, enc.attention_heads, 6, 18)
    with pytest.raises(ValueError, match="att_cache"):
        forward_chunk(model, jnp.asarray(xs), 0, -1, jnp.asarray(att), jnp.asarray(cnn))
    with pytest.raises(ValueError, match="chunk_size"):
        forward_chunk_by_chunk(model, jnp.asarray(xs), 0)


def test_chunk_mask_limits_what_each_frame_sees():
    """Causality: with chunk 3 (no left limit), outputs of chunk c do not move when input frames
    beyond that chunk's receptive field change; earlier frames do move them."""
    cfg = _cfg(kernel=4)
    model = ConformerEncoder(cfg, rngs=nnx.Rngs(0))
    feats = _feats(1, 80, cfg.input_dim, seed=7)
    base, _, _ = _encode(model, jnp.asarray(feats), jnp.asarray([80]), 3, -1)
    # Output frames 0..5 (chunks 0-1) read input frames up to 4 * 5 + 6 = 26.
    later = feats.copy()
    later[:, 27:] += 5.0
    moved, _, _ = _encode(model, jnp.asarray(later), jnp.asarray([80]), 3, -1)
    np.testing.assert_allclose(np.asarray(moved[:, :6]), np.asarray(base[:, :6]), atol=1e-6)
    assert float(jnp.abs(moved[:, 6:] - base[:, 6:]).max()) > 1e-3
    earlier = feats.copy()
    earlier[:, :4] += 5.0
    moved, _, _ = _encode(model, jnp.asarray(earlier), jnp.asarray([80]), 3, -1)
    assert float(jnp.abs(moved[:, 6:] - base[:, 6:]).max()) > 1e-3


def test_full_context_equals_one_chunk_over_everything():
    cfg = _cfg()
    model = ConformerEncoder(cfg, rngs=nnx.Rngs(0))
    feats = jnp.asarray(_feats(2, 60, cfg.input_dim))
    lengths = jnp.asarray([60, 41])
    full, _, _ = _encode(model, feats, lengths, -1, -1)
    whole, _, _ = _encode(model, feats, lengths, 1000, -1)
    limited, _, _ = _encode(model, feats, lengths, 4, 1)
    np.testing.assert_allclose(np.asarray(whole), np.asarray(full), atol=1e-6)
    assert float(jnp.abs(limited - full).max()) > 1e-3


def test_masks_match_wenet():
    for size, chunk, left in [(10, 3, -1), (10, 3, 0), (11, 4, 1), (7, 1, 2), (5, 8, -1)]:
        np.testing.assert_array_equal(np.asarray(masks.subsequent_chunk_mask(size, chunk, left)),
                                      ref_modules.subsequent_chunk_mask(size, chunk, left).numpy())
    lengths = np.array([5, 2, 0])
    np.testing.assert_array_equal(np.asarray(masks.make_pad_mask(jnp.asarray(lengths), 6)),
                                  ref_modules.make_pad_mask(torch.from_numpy(lengths), 6).numpy())
    pad = jnp.ones((1, 1, 9), bool)
    with pytest.raises(ValueError, match="chunk_size 0"):
        masks.add_optional_chunk_mask(pad, use_dynamic_chunk=True, use_dynamic_left_chunk=False,
                                      decoding_chunk_size=0, static_chunk_size=0, num_decoding_left_chunks=-1)
    static = masks.add_optional_chunk_mask(pad, use_dynamic_chunk=False, use_dynamic_left_chunk=False,
                                           decoding_chunk_size=0, static_chunk_size=2, num_decoding_left_chunks=1)
    np.testing.assert_array_equal(np.asarray(static[0]), ref_modules.subsequent_chunk_mask(9, 2, 1).numpy())


@pytest.mark.parametrize("dynamic_left", [False, True])
def test_dynamic_chunk_draws_follow_wenet_distribution(dynamic_left):
    """Every draw is WeNet's: full context (drawn > T // 2) or chunk % max + 1 within 1..max,
    and with dynamic left chunks a left count in [0, (T - 1) // chunk)."""
    size, max_chunk = 60, 25
    draw = jax.jit(jax.vmap(lambda k: masks.sample_dynamic_chunk(k, size, use_dynamic_left_chunk=dynamic_left,
                                                                 max_chunk_size=max_chunk)))
    chunks, lefts = (np.asarray(a) for a in draw(jax.random.split(jax.random.key(0), 4000)))
    full = chunks == size
    assert 0.45 < full.mean() < 0.55  # randint(1, 60) > 30 for 29 of 59 values
    assert set(chunks[~full]) <= set(range(1, max_chunk + 1)) and len(set(chunks[~full])) == max_chunk
    if dynamic_left:
        assert (lefts[full] == -1).all()
        assert ((lefts[~full] >= 0) & (lefts[~full] < np.maximum((size - 1) // chunks[~full], 1))).all()
        assert lefts[~full].max() > 0
    else:
        assert (lefts == -1).all()
    mask = masks.add_optional_chunk_mask(jnp.ones((1, 1, size), bool), use_dynamic_chunk=True,
                                         use_dynamic_left_chunk=dynamic_left, decoding_chunk_size=0,
                                         static_chunk_size=0, num_decoding_left_chunks=-1, max_chunk_size=max_chunk,
                                         rng=jax.random.key(3))
    chunk, left = (int(a) for a in masks.sample_dynamic_chunk(jax.random.key(3), size,
                                                                use_dynamic_left_chunk=dynamic_left,
                                                                max_chunk_size=max_chunk))
    np.testing.assert_array_equal(np.asarray(mask[0]), ref_modules.subsequent_chunk_mask(size, chunk, left).numpy())


def test_output_lengths_follow_wenet():
    for name, variant in VARIANTS.items():
        for u in (7, 15, 16, 17, 40, 101):
            length = {"conv2d": ((u - 1) // 2 - 1) // 2, "conv2d6": ((u - 1) // 2 - 2) // 3,
                      "conv2d8": (((u - 1) // 2 - 1) // 2 - 1) // 2}[name]
            assert output_length(variant, u) == max(length, 0), (name, u)
    cfg = _cfg(input_layer="conv2d8", bins=13)
    with pytest.raises(ValueError, match="too few"):
        ConformerEncoder(cfg, rngs=nnx.Rngs(0))
    model = ConformerEncoder(_cfg(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="no output frame"):
        model.encode(jnp.zeros((1, 6, 23)), jnp.asarray([6]), chunk_size=-1)
    with pytest.raises(ValueError, match="feats"):
        model.encode(jnp.zeros((1, 20, 22)), jnp.asarray([20]), chunk_size=-1)
    with pytest.raises(ValueError, match="odd"):
        ConformerEncoder(_cfg(kernel=8, causal=False), rngs=nnx.Rngs(0))


def _probe_loss(out_BTD, valid_BT):
    """A fixed random projection of the real frames (a sum of squares of a LayerNorm output is
    nearly constant and would give the layers no gradient)."""
    probe_BTD = jax.random.normal(jax.random.key(99), out_BTD.shape)
    return jnp.sum(jnp.where(valid_BT[..., None], out_BTD * probe_BTD, 0.0))


def test_scan_and_remat_do_not_change_outputs_or_gradients():
    """Without dropout (its per-layer keys under scan are tested in test_nn_wenet_layers): random
    keys make XLA:CPU compiles several times slower."""
    feats = jnp.asarray(_feats(2, 40, 23, seed=8))
    lengths = jnp.asarray([40, 29])
    results = []
    for scan, remat in ((True, "none"), (False, "none"), (True, "full"), (False, "dots")):
        cfg = _cfg(blocks=3, scan_layers=scan, remat=remat)
        model = ConformerEncoder(cfg, rngs=nnx.Rngs(0))

        def loss(m):
            out, valid, _ = m.encode(feats, lengths, chunk_size=0, chunk_rng=jax.random.key(2))
            return _probe_loss(out, valid)

        value, grads = nnx.jit(nnx.value_and_grad(loss))(model)
        results.append((value, nnx.to_pure_dict(nnx.state(grads, nnx.Param))))
    for value, grads in results[1:]:
        np.testing.assert_allclose(float(value), float(results[0][0]), rtol=1e-5)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(results[0][1])):
            # float32 sums reassociate differently across the two loops: compare to each leaf's scale
            scale = float(np.abs(np.asarray(b)).max())
            assert float(np.abs(np.asarray(a) - np.asarray(b)).max()) <= 1e-4 * scale + 1e-6


def test_dropout_training_gradients_are_finite_and_cmvn_is_frozen():
    cfg = _cfg(dropout=0.1)
    model = ConformerEncoder(cfg, rngs=nnx.Rngs(0))
    feats = jnp.asarray(_feats(2, 40, 23, seed=9))
    lengths = jnp.asarray([40, 17])
    evals = [model.encode(feats, lengths, chunk_size=-1)[0] for _ in range(2)]
    np.testing.assert_array_equal(np.asarray(evals[0]), np.asarray(evals[1]))
    train = model.encode(feats, lengths, chunk_size=-1, dropout_rng=jax.random.key(0))[0]
    assert float(jnp.abs(train - evals[0]).max()) > 1e-3

    def loss(m):
        out, valid, _ = m.encode(feats, lengths, chunk_size=0, dropout_rng=jax.random.key(4),
                                 chunk_rng=jax.random.key(5))
        return _probe_loss(out, valid)

    grads = nnx.to_pure_dict(nnx.state(nnx.jit(nnx.grad(loss))(model), nnx.Param))
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
        name = "/".join(str(p.key) for p in path)
        assert np.isfinite(np.asarray(g)).all(), name
        if name.startswith("global_cmvn"):
            assert not np.asarray(g).any(), name
        else:
            assert np.abs(np.asarray(g)).sum() > 0, name


def test_full_size_encoder_builds_by_shape_with_logical_names_on_every_parameter():
    """The default (AISHELL U2++ MoE) encoder by shape alone; every parameter carries one logical
    name per axis, from parallel.py's table, with the stacked blocks leading with `layers`."""
    from most_jax.sharding import RULES

    cfg = U2ppConfig()
    model = nnx.eval_shape(lambda: ConformerEncoder(cfg, rngs=nnx.Rngs(0)))
    shapes = dict(flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param))))
    specs = dict(flatten(nnx.to_pure_dict(nnx.get_partition_spec(nnx.state(model, nnx.Param)))))
    enc = cfg.encoder
    assert shapes[("encoders", "feed_forward", "w_1")].shape == (enc.num_blocks, enc.moe.num_experts, 256, 2048)
    assert shapes[("embed", "conv", "2", "kernel")].shape == (3, 3, 256, 256)
    assert shapes[("embed", "out", "kernel")].shape == (256 * 19, 256)
    assert shapes[("encoders", "conv_module", "depthwise_conv", "kernel")].shape == (enc.num_blocks, 8, 256)
    for path, spec in specs.items():
        spec = tuple(spec)
        assert len(spec) == len(shapes[path].shape), path
        assert all(name is None or name in RULES for name in spec), (path, spec)
        assert (spec[0] == "layers") == (path[0] == "encoders"), (path, spec)
    total = sum(int(np.prod(s.shape)) for s in shapes.values())
    assert total == sum(int(np.prod(s)) for k, s in wenet.wenet_shapes(cfg).items()
                        if k.startswith("encoder.") and not k.endswith(".pe"))


def test_bfloat16_compute_tracks_float32():
    feats, lengths = jnp.asarray(_feats(2, 40, 23, seed=10)), jnp.asarray([40, 33])
    f32 = ConformerEncoder(_cfg(), rngs=nnx.Rngs(0))
    bf16 = ConformerEncoder(_cfg(dtype="bfloat16"), rngs=nnx.Rngs(0))
    want, valid, _ = _encode(f32, feats, lengths, 4, -1)
    got, _, _ = _encode(bf16, feats, lengths, 4, -1)
    assert got.dtype == jnp.bfloat16
    err = np.abs(np.asarray(got, np.float32) - np.asarray(want))[np.asarray(valid)]
    assert err.max() < 0.1 and err.mean() < 0.02, (err.max(), err.mean())
