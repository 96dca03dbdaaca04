"""`most bench u2pp`: the three models' shapes and parameter counts, the JSON report, bad flags."""

import json

import pytest
from flax import nnx

from cli_check import cli_error
from most_jax.bench.u2pp import U2ppBenchShape, encoder_ctc_params
from most_jax.cli import main
from most_jax.models.u2pp.model import U2pp

TINY = ["--dim", "64", "--blocks", "1", "--ffn", "32", "--experts", "4", "--top-k", "2", "--audio-seconds", "0.3",
        "--vocab", "11"]


def test_dense_wide_has_the_moe_parameters():
    shape = U2ppBenchShape(dim=64, blocks=2, ffn=48, experts=4, top_k=2, vocab=11)
    counts = {name: encoder_ctc_params(nnx.eval_shape(lambda cfg=cfg: U2pp(cfg, rngs=nnx.Rngs(0))))
              for name, cfg in shape.configs().items()}
    dense, moe, wide = counts["dense"], counts["moe"], counts["dense_wide"]
    # Two FFNs per block: one width step of the wide FFN changes its count by 2 * blocks * (2 d + 1).
    assert abs(wide - moe) <= shape.blocks * (2 * shape.dim + 1)
    per_ffn = (moe - dense) / (2 * shape.blocks)  # the MoE layer's extra parameters over one dense FFN
    assert per_ffn == (shape.experts - 1) * (2 * shape.dim * shape.ffn + shape.ffn + shape.dim) + shape.dim * 4


def test_cli_json_report(capsys):
    # --threads all: the test process's JAX is already started, and the flag must not leak into XLA_FLAGS.
    main(["bench", "u2pp", *TINY, "--warmup", "1", "--repeats", "1", "--threads", "all", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert set(result["models"]) == {"dense", "moe", "dense_wide"}
    for row in result["models"].values():
        assert set(row) >= {"params", "rtf_streaming", "rtf_full"}
        assert row["rtf_streaming"] > 0 and row["rtf_full"] > 0
    models = result["models"]
    assert models["dense"]["params"] < models["moe"]["params"]
    for mode in ("streaming", "full"):
        assert result["moe_over_dense"][mode] == pytest.approx(models["moe"][f"rtf_{mode}"]
                                                               / models["dense"][f"rtf_{mode}"])
    assert result["shape"]["frames"] == 28  # 0.3 s: 1 + (4800 - 400) // 160


@pytest.mark.parametrize("flags, culprit", [(["--top-k", "9"], "--top-k"), (["--dim", "100"], "--dim"),
                                            (["--audio-seconds", "0"], "--audio-seconds")])
def test_bad_flags_name_the_culprit(flags, culprit):
    cli_error(["bench", "u2pp", *TINY, "--threads", "all", *flags], culprit)
