"""configs/scaling/: ladders expanded from a compact spec (most_jax/scaling/ladder.py)."""

import math
import re

import pytest

from most_jax.config import ConfigError, load_config
from most_jax.scaling.accounting import config_budget
from most_jax.scaling.ladder import expand

LADDER = "configs/scaling/most_ladder.yaml"


def test_shipped_ladder_spans_1m_to_1b_with_matched_variants():
    spec, runs = expand(LADDER)
    by_size = {}
    for run in runs:
        by_size.setdefault(run.size, {})[run.variant] = run
    assert len(runs) == 3 * len(by_size) and all(set(v) == {"dense", "moe", "mamoe"} for v in by_size.values())
    active = []
    for size, variants in by_size.items():
        counts = {v: config_budget(r.config)[0] for v, r in variants.items()}  # what `most flops` prints
        dense = counts["dense"].params_active
        # MoE and MAMoE: the same active parameters as the dense model but the router's (< 1%)
        for v in ("moe", "mamoe"):
            assert counts[v].params_active == pytest.approx(dense, rel=0.01), (size, v)
            assert counts[v].params > 1.5 * counts["dense"].params  # many more parameters in total
        assert variants["mamoe"].config.model.moe.modality_groups
        assert not variants["moe"].config.model.moe.modality_groups
        cfg = variants["dense"].config
        step_tokens = cfg.data.batch_size * cfg.data.seq_len
        assert cfg.train.steps == math.ceil(spec.tokens_per_param * dense / step_tokens)
        assert {r.tokens for r in variants.values()} == {cfg.train.steps * step_tokens}
        active.append(dense)
    assert active == sorted(active) and 0.8e6 < active[0] < 2e6 and 0.7e9 < active[-1] < 1.3e9


def _spec(tmp_path, text):
    path = tmp_path / "ladder.yaml"
    path.write_text(text)
    return path


def test_overrides_and_the_multiple_reach_every_run(tmp_path):
    path = _spec(tmp_path, "config: most_tiny.yaml\ntokens_per_param: 2\nvariants: [dense, moe]\n"
                 "experts: {num_experts: 4, top_k: 2, num_shared_experts: 1}\n"
                 "sizes:\n  - {name: a, hidden_size: 32, num_layers: 2, num_heads: 2}\n")
    _, runs = expand(path, ["data.seq_len=32", "data.batch_size=2"])
    assert [r.name for r in runs] == ["a-dense", "a-moe"]
    dense = config_budget(runs[0].config)[0].params_active
    assert runs[0].config.train.steps == math.ceil(2 * dense / 64)
    assert runs[1].config.model.moe.expert_ffn_dim == 32 and runs[1].config.model.first_k_dense_replace == 1
    assert load_config("most_tiny.yaml").model.hidden_size == 64  # the base file is unchanged


@pytest.mark.parametrize("text, culprit", [
    ("sizes: []\n", "sizes"),
    ("sizes:\n  - {name: a, hidden_size: 30, num_layers: 2, num_heads: 2}\n", "sizes[0].num_heads"),
    ("tokens_per_param: 0\nsizes:\n  - {name: a, hidden_size: 32, num_layers: 2, num_heads: 2}\n", "tokens_per_param"),
    ("variants: [sparse]\nsizes:\n  - {name: a, hidden_size: 32, num_layers: 2, num_heads: 2}\n", "variants"),
    ("experts: {top_k: 3}\nsizes:\n  - {name: a, hidden_size: 32, num_layers: 2, num_heads: 2}\n", "experts"),
    ("sizes:\n  - {name: a, hidden_size: 32, num_layers: 2, num_heads: 2, width: 3}\n", "sizes[0].width"),
])
def test_bad_specs_name_the_field(tmp_path, text, culprit):
    path = _spec(tmp_path, "config: most_tiny.yaml\n" + text)
    with pytest.raises(ConfigError, match=r"ladder .*ladder.yaml: .*" + re.escape(culprit)):
        expand(path)
