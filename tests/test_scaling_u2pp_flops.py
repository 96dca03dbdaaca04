"""most_jax/scaling/u2pp_flops.py: a hand count, the built model's parameters, XLA's FLOP count."""

import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from most_jax.config import load_config
from most_jax.models.u2pp.model import U2pp
from most_jax.scaling.u2pp_flops import u2pp_budget

HAND = ["model.vocab_size=10", "model.input_dim=20", "model.encoder.output_size=8", "model.encoder.attention_heads=2",
        "model.encoder.linear_units=16", "model.encoder.num_blocks=1", "model.encoder.cnn_module_kernel=3",
        "model.decoder.attention_heads=2", "model.decoder.linear_units=16", "model.decoder.num_blocks=1",
        "model.decoder.r_num_blocks=1"]
SMALL = ["model.scan_layers=false", "model.vocab_size=60", "model.input_dim=20", "model.encoder.output_size=64",
         "model.encoder.linear_units=128", "model.encoder.num_blocks=2", "model.decoder.linear_units=128",
         "model.decoder.num_blocks=2", "model.decoder.r_num_blocks=1"]


def _built_params(cfg) -> int:
    model = nnx.eval_shape(lambda: U2pp(cfg, rngs=nnx.Rngs(0)))
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_hand_count_of_a_tiny_dense_config():
    # 15 frames x 20 bins; conv2d x4: 3x3 stride 2 twice -> 7 x 9 then 3 x 4 (time x freq), d = 8.
    cfg = load_config("u2pp_dense_demo.yaml", HAND).model
    conv = 2 * 7 * 9 * 9 * 1 * 8 + 2 * 3 * 4 * 9 * 8 * 8 + 2 * 3 * (8 * 4) * 8  # two convs + Linear(32 -> 8)
    t = 3
    attention = 4 * 2 * t * 64 + 2 * t * 64 + 3 * 2 * t * t * 8  # q k v out, linear_pos, 3 score matmuls
    conv_module = 2 * t * 8 * 16 + 2 * t * 3 * 8 + 2 * t * 8 * 8  # pointwise 8->16, depthwise k=3, pointwise
    ffns = 2 * 2 * t * 2 * 8 * 16  # macaron and final FFN, 8 -> 16 -> 8
    ctc = 2 * t * 8 * 10
    p = 5  # sos + 4 targets
    decoder = (4 * 2 * p * 64 + 2 * 2 * p * p * 8  # self-attention
               + 2 * 2 * p * 64 + 2 * 2 * t * 64 + 2 * 2 * p * t * 8  # cross: q, out on p; k, v on the 3 frames
               + 2 * p * 2 * 8 * 16 + 2 * p * 8 * 10)  # FFN, output layer
    b = u2pp_budget(cfg, 15, 4)
    assert b.forward_flops_per_token * 15 == pytest.approx(conv + attention + conv_module + ffns + ctc + 2 * decoder)
    encoder_params = (2 * 20 + (9 * 8 + 8) + (9 * 8 * 8 + 8) + (32 * 8 + 8)  # cmvn, convs, Linear
                      + 4 * (64 + 8) + 64 + 2 * 8  # attention: q k v out, linear_pos, pos_bias_u/v
                      + (8 * 16 + 16) + (3 * 8 + 8) + 2 * 8 + (8 * 8 + 8)  # conv module
                      + 2 * (8 * 16 + 16 + 16 * 8 + 8) + 6 * 2 * 8)  # FFNs, 5 norms + after_norm
    decoder_params = 8 * (64 + 8) + (8 * 16 + 16 + 16 * 8 + 8) + 4 * 2 * 8 + (8 * 10 + 10)
    assert b.params_active == encoder_params + (8 * 10 + 10) + 2 * decoder_params
    assert b.embedding_params == 2 * 10 * 8
    assert b.params == b.params_active + b.embedding_params == _built_params(cfg)
    r2l_off = u2pp_budget(dataclasses.replace(cfg, reverse_weight=0.0), 15, 4)  # the R2L decoder idles
    assert r2l_off.params == b.params and r2l_off.params_active == b.params_active - decoder_params
    assert r2l_off.forward_flops_per_token * 15 == pytest.approx(b.forward_flops_per_token * 15 - decoder)


@pytest.mark.parametrize("config", ["u2pp_moe_demo.yaml", "u2pp_dense_demo.yaml"])
def test_params_equal_the_built_models(config):
    cfg = load_config(config).model
    b = u2pp_budget(cfg, 800, 64)
    assert b.params == _built_params(cfg)
    moe = cfg.encoder.moe
    if cfg.encoder.mlp_type == "moe":  # per FFN, top_k of num_experts experts are active
        experts = next(p for p in b.parts if p.name == "encoder_routed_experts")
        assert experts.params_active * moe.num_experts == experts.params * moe.top_k


def _forward(model, batch):
    enc_BTD, mask_BT, _ = model.encode(batch["feats"], batch["feats_lengths"])
    left_BTV, right_BTV, _ = model.decoder(enc_BTD, mask_BT, batch["ys_in"], batch["ys_lengths"], batch["ys_in"])
    return model.ctc(enc_BTD).sum() + left_BTV.sum() + right_BTV.sum()


@pytest.mark.parametrize("config", ["u2pp_dense_demo.yaml", "u2pp_moe_demo.yaml"])
def test_forward_flops_match_xla_cost_analysis(config):
    """The unscanned model's forward (encoder, CTC head, both decoders) against XLA's count, which
    includes elementwise work (7% at d=32, 1.6% at d=128; 3% here). The MoE runs the reference
    dispatch, every expert on every token: the budget with top_k = num_experts is its count."""
    cfg = load_config(config, SMALL + ["model.encoder.moe.dispatch=reference",
                                       "model.decoder.moe.dispatch=reference"]).model
    graph, state = nnx.split(U2pp(cfg, rngs=nnx.Rngs(0)))
    b, u, n = 2, 96, 10
    batch = {"feats": jnp.zeros((b, u, 20)), "feats_lengths": jnp.full((b,), u, jnp.int32),
             "ys_in": jnp.ones((b, n + 1), jnp.int32), "ys_lengths": jnp.full((b,), n + 1, jnp.int32)}
    cost = jax.jit(lambda s, x: _forward(nnx.merge(graph, s), x)).lower(state, batch).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    every = lambda s: dataclasses.replace(s, moe=dataclasses.replace(s.moe, top_k=s.moe.num_experts))  # noqa: E731
    counted = dataclasses.replace(cfg, encoder=every(cfg.encoder), decoder=every(cfg.decoder))
    analytic = u2pp_budget(counted, u, n).forward_flops_per_token * u * b
    assert cost["flops"] == pytest.approx(analytic, rel=0.05)
    assert cost["flops"] > analytic  # XLA adds the elementwise work on top, never less


def test_cli_json_and_bad_input():
    run = [sys.executable, "-m", "most_jax.cli", "flops", "--config", "u2pp_moe_demo.yaml"]
    rec = json.loads(subprocess.run([*run, "--json", "--frames", "400", "--seq-len", "20"], capture_output=True,
                                    text=True, check=True).stdout)
    cfg = load_config("u2pp_moe_demo.yaml").model
    b = u2pp_budget(cfg, 400, 20)
    assert rec["unit"] == "input frame (10 ms)" and rec["frames"] == 400 and rec["encoder_frames"] == 99
    assert rec["params_total"] == _built_params(cfg) and rec["params_active"] == b.params_active
    assert rec["flops_per_token_forward"] == b.forward_flops_per_token == sum(rec["breakdown"].values())
    assert rec["flops_per_token_train"] == 3 * rec["flops_per_token_forward"]
    assert rec["flops_per_step_train"] == 16 * 400 * rec["flops_per_token_train"]  # data.batch_size 16
    bad = subprocess.run([*run, "--frames", "5"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--frames" in bad.stderr and "subsampling" in bad.stderr
