"""`most bench moe`: the dense baseline has the MoE's active parameters; JSON report; bad flags."""

import json

import jax
import pytest
from flax import nnx

from cli_check import cli_error
from most_jax.bench.moe import MoEBenchShape
from most_jax.cli import main
from most_jax.nn.mlp import SwiGLU
from most_jax.nn.moe import MoE


def _param_count(module):
    return sum(leaf.size for leaf in jax.tree_util.tree_leaves(nnx.state(module, nnx.Param)))


def test_dense_baseline_has_the_active_parameters_of_the_moe():
    shape = MoEBenchShape(tokens=8, seq_len=4, dim=11, experts=5, ffn=7, top_k=2, shared=1)
    cfg = shape.model_config("capacity")
    moe = MoE(cfg.hidden_size, cfg.moe, init_std=cfg.init_std, param_dtype="float32", dtype="float32", rngs=nnx.Rngs(0))
    dense = SwiGLU(shape.dim, shape.dense_ffn, rngs=nnx.Rngs(0), std=0.02, param_dtype="float32", dtype="float32")
    per_expert = 3 * shape.dim * shape.ffn
    active = shape.top_k * per_expert + _param_count(moe.shared)
    assert _param_count(dense) == active == (shape.top_k + shape.shared) * per_expert


def test_cli_json_report(capsys):
    main(["bench", "moe", "--tokens", "64", "--seq-len", "32", "--dim", "16", "--experts", "4", "--ffn", "8",
          "--top-k", "2", "--shared", "1", "--repeats", "1", "--paths", "capacity,reference", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert set(result["paths"]) == {"capacity", "reference"}
    best = max(result["paths"].values())
    assert result["ratio"] == pytest.approx(best / result["dense_tokens_per_s"])
    assert result["dense_ffn"] == 3 * 8
    assert result["dropped_fraction"]["reference"] == 0.0


@pytest.mark.parametrize("args, culprit", [(["--tokens", "100", "--seq-len", "32"], "--seq-len"),
                                           (["--paths", "capacity,alltoall"], "--paths"),
                                           (["--top-k", "9", "--experts", "4"], "top_k")])
def test_cli_rejects_bad_flags(args, culprit):
    cli_error(["bench", "moe", "--dim", "8", "--ffn", "4", *args], culprit)
