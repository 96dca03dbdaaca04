"""Config loading: shipped configs parse, overrides apply, inconsistencies name their field."""

from pathlib import Path

import pytest

from most_jax.config import Config, ConfigError, load_config, to_dict, config_from_dict

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_parse_and_round_trip(path):
    cfg = load_config(path)
    assert config_from_dict(to_dict(cfg)) == cfg


def test_override_sets_nested_field():
    cfg = load_config(None, ["model.moe.top_k=4", "model.attention.q_lora_rank=96"])
    assert cfg.model.moe.top_k == 4
    assert cfg.model.attention.q_lora_rank == 96
    assert Config().model.moe.top_k == 6  # defaults untouched


@pytest.mark.parametrize("overrides, field", [
    (["model.moe.top_k=40"], "model.moe.top_k"),  # larger than a modality group of 32 in v2_lite
    (["model.moe.modality_groups=[{name: a, modality: 0, first_expert: 0, num_experts: 40},"
      "{name: b, modality: 1, first_expert: 32, num_experts: 32}]"], "model.moe.modality_groups[1]"),
    (["model.moe.modality_groups=[{name: a, modality: 0, first_expert: 0, num_experts: 16}]"],
     "model.moe.modality_groups"),
    (["model.moe.topk_method=group_limited_greedy", "model.moe.n_group=5"], "model.moe.n_group"),
    (["model.attention.qk_rope_head_dim=63"], "model.attention.qk_rope_head_dim"),
    (["model.first_k_dense_replace=30"], "model.first_k_dense_replace"),
    (["model.moe.not_a_field=1"], "model.moe.not_a_field"),
    (["model.hidden_size=abc"], "model.hidden_size"),
    (["model.vocab.num_audio_units=5000"], "model.vocab.begin_audio_id"),  # units run into the markers
    (["model.vocab.audio_unit_offset=5"], "model.vocab.audio_unit_offset"),
])
def test_inconsistent_config_names_field(overrides, field):
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        load_config(Path(__file__).parent.parent / "configs" / "most_v2_lite.yaml", overrides)


def test_most_layout_applies_to_a_small_vocabulary():
    """Ids beyond vocab_size are allowed (absent tokens): every id of a small vocabulary is then text."""
    import numpy as np

    from most_jax.vocab import modality_of_tokens

    cfg = load_config(None, ["model.vocab_size=1000"])
    assert set(np.unique(modality_of_tokens(cfg.model.vocab, np.arange(1000)))) == {0}
