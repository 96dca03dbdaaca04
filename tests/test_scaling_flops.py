"""most_jax/scaling/flops.py: a hand count, the built model's parameters, XLA's FLOP count."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from most_jax.config import load_config
from most_jax.models.most import MoST, count_params
from most_jax.models.family import get_family
from most_jax.scaling.flops import most_budget


def _tiny():
    return load_config("most_tiny.yaml", ["model.scan_layers=false"]).model


def test_hand_count_of_the_tiny_config():
    # most_tiny: d=64, V=640, 3 layers (1 dense, 2 MoE), 4 heads, no q LoRA, kv rank 32,
    # nope 16 + rope 8, v 16; dense ffn 96; 8 experts of 24, top 2, 1 shared.
    T = 64
    q = 64 * (4 * 24)                      # q_proj
    kv_a = 64 * (32 + 8)                   # kv_a_proj
    kv_b = 32 * (4 * (16 + 16))            # kv_b_proj
    o = (4 * 16) * 64                      # o_proj
    attn_mm = q + kv_a + kv_b + o
    scores = 2 * T * 4 * 24 + 2 * T * 4 * 16  # QK^T and AV per token, full square
    dense = 3 * 64 * 96
    expert = 3 * 64 * 24
    router = 64 * 8
    layer0 = 2 * attn_mm + scores + 2 * dense
    moe_layer = 2 * attn_mm + scores + 2 * (2 * expert + 1 * expert + router)
    head = 2 * 64 * 640
    forward = layer0 + 2 * moe_layer + head
    b = most_budget(_tiny(), T)
    assert b.forward_flops_per_token == forward
    assert b.train_flops_per_token == 3 * forward
    norms = 3 * (64 + 64 + 32) + 64        # attn/ffn/kv_a norms per layer + final
    assert b.params_active == 3 * attn_mm + dense + 2 * (3 * expert + router) + 64 * 640 + norms
    assert b.embedding_params == 640 * 64
    assert b.params == b.embedding_params + 3 * attn_mm + dense + 2 * (9 * expert + router) + 64 * 640 + norms


@pytest.mark.parametrize("overrides", [[], ["model.attention.q_lora_rank=16", "model.first_k_dense_replace=0"]])
def test_params_equal_the_built_models(overrides):
    model = load_config("most_tiny.yaml", overrides).model
    assert most_budget(model, 64).params == count_params(model)


def test_forward_flops_match_xla_cost_analysis():
    """Capacity dispatch (the CPU default) computes capacity_factor x the routed tokens, and XLA
    counts elementwise work too: both within 10% of the analytic count on the unscanned tiny model
    (without modality groups: their blocked buffer adds rounding rows, a lot at 128 tokens)."""
    model_cfg = load_config("most_tiny.yaml", ["model.scan_layers=false", "model.moe.modality_groups=[]"]).model
    model = MoST(model_cfg, rngs=nnx.Rngs(0))
    graph, state = nnx.split(model)
    tokens = jnp.zeros((2, 64), jnp.int32)
    cost = jax.jit(lambda s, t: nnx.merge(graph, s)(t)[0]).lower(state, tokens).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    analytic = most_budget(model_cfg, 64).forward_flops_per_token * tokens.size
    assert cost["flops"] == pytest.approx(analytic, rel=0.10)


def test_family_train_flops_is_the_budget():
    cfg = load_config("most_tiny.yaml", ["model.scan_layers=false", "data.batch_size=4", "data.seq_len=64"])
    flops = get_family(cfg.model).train_flops
    assert flops(cfg) == 4 * 64 * 3 * most_budget(cfg.model, 64).forward_flops_per_token
    longer = load_config("most_tiny.yaml", ["model.scan_layers=false", "data.batch_size=4", "data.seq_len=128"])
    assert flops(longer) > 2 * flops(cfg)  # attention grows with T


def test_cli_json_and_bad_input():
    run = [sys.executable, "-m", "most_jax.cli", "flops", "--config", "most_tiny.yaml", "--seq-len", "64"]
    out = subprocess.run([*run, "--json"], capture_output=True, text=True, check=True).stdout
    rec = json.loads(out)
    assert rec["params_total"] == count_params(_tiny()) and rec["seq_len"] == 64 and rec["unit"] == "token"
    assert rec["params_embedding"] == 640 * 64 and rec["params_active"] == most_budget(_tiny(), 64).params_active
    assert rec["flops_per_token_forward"] == most_budget(_tiny(), 64).forward_flops_per_token
    assert rec["flops_per_token_train"] == 3 * rec["flops_per_token_forward"] == 3 * sum(rec["breakdown"].values())
    assert rec["flops_per_step_train"] == 8 * 64 * rec["flops_per_token_train"]  # data.batch_size 8
    bad = subprocess.run([*run[:-1], "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--seq-len" in bad.stderr
