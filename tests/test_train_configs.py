"""The training recipes parse, build and inherit their model through `base:`."""

import dataclasses

import pytest

from most_jax.config import ConfigError, load_config
from most_jax.models.most import count_params


def test_stage_recipes_share_the_most_v2_lite_model():
    lite = load_config("configs/most_v2_lite.yaml")
    stage1 = load_config("configs/most_stage1.yaml")
    stage2 = load_config("configs/most_stage2.yaml")
    assert dataclasses.replace(stage1.model, dtype="float32", remat="none") == lite.model
    assert stage2.model == stage1.model
    assert (stage1.data.batch_size, stage1.data.seq_len, stage1.train.steps) == (512, 2048, 500000)
    assert (stage1.data.mixture.asr, stage1.data.mixture.tts, stage1.data.mixture.text_lm) == (0.4, 0.4, 0.2)
    m = stage2.data.mixture
    assert (stage2.data.batch_size, stage2.train.steps) == (128, 10000)
    assert (m.spoken_qa_text + m.spoken_qa_speech, m.instruct, m.asr, m.tts, m.text_lm) == (0.4, 0.4, 0.1, 0.1, 0.0)
    assert (stage1.train.b1, stage1.train.b2, stage1.train.clip_norm) == (0.9, 0.95, 1.0)
    assert count_params(stage1.model) == 15_706_484_224


def test_demo_is_a_small_mamoe_model():
    cfg = load_config("configs/demo.yaml")
    moe = cfg.model.moe
    assert (moe.num_experts, moe.top_k, moe.num_shared_experts, len(moe.modality_groups)) == (8, 2, 1, 2)
    assert count_params(cfg.model) < 3_000_000


def test_base_chain_overrides_and_loops(tmp_path):
    (tmp_path / "a.yaml").write_text("model: {hidden_size: 96, num_layers: 3}\ntrain: {steps: 5}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nmodel: {num_layers: 2}\n")
    cfg = load_config(tmp_path / "b.yaml", ["train.steps=7"])
    assert (cfg.model.hidden_size, cfg.model.num_layers, cfg.train.steps) == (96, 2, 7)
    (tmp_path / "c.yaml").write_text("base: d.yaml\n")
    (tmp_path / "d.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "e.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml does not exist"):
        load_config(tmp_path / "e.yaml")


def test_train_section_errors_name_the_field():
    with pytest.raises(ConfigError, match="train.micro_batches: 3 does not divide data.batch_size=8"):
        load_config(None, ["train.micro_batches=3"])
    with pytest.raises(ConfigError, match="train.schedule"):
        load_config(None, ["train.schedule=step"])
    with pytest.raises(ConfigError, match="train.b2"):
        load_config(None, ["train.b2=1.0"])
