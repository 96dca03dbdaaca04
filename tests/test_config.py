"""Config loading: shipped configs parse, overrides apply, inconsistencies name their field."""

from pathlib import Path

import pytest

from most_jax.config import (Config, ConfigError, config_from_dict, load_config, load_demo_config, resolve_config_path,
                             shipped_configs_dir, to_dict)

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


def test_demo_settings_are_read_apart_from_the_run_config():
    demo_yaml = Path(__file__).parent.parent / "configs" / "demo.yaml"
    cfg, demo = load_demo_config(demo_yaml, ["demo.units_k=99", "train.steps=7"])
    assert demo.units_k == 99 and cfg.train.steps == 7
    assert "demo" not in to_dict(cfg)  # a checkpoint stores to_dict(cfg): no corpus settings
    # the same file as a run config (`most train --config demo.yaml`) trains the same model
    assert load_config(demo_yaml, ["train.steps=7"]) == cfg
    with pytest.raises(ConfigError, match="demo.*`most demo` settings"):
        load_config(demo_yaml, ["demo.units_k=99"])
    with pytest.raises(ConfigError, match="demo.not_a_field"):
        load_demo_config(demo_yaml, ["demo.not_a_field=1"])


def test_checkpoint_written_with_a_demo_section_still_loads(tmp_path):
    """Checkpoints from before DemoConfig left Config store a `demo` section in their config."""
    import orbax.checkpoint as ocp

    from most_jax.checkpoint.params_io import CONFIG_ITEM, PARAMS_ITEM
    from most_jax.checkpoint.params_io import load_config as load_checkpoint_config

    cfg = load_config("most_tiny.yaml")
    step = tmp_path / "4"
    (step / PARAMS_ITEM).mkdir(parents=True)
    old = to_dict(cfg) | {"demo": {"utterances": 8400, "units_k": 256, "voices": ["en-us"]}}
    ocp.Checkpointer(ocp.JsonCheckpointHandler()).save(step / CONFIG_ITEM, args=ocp.args.JsonSave(old))
    assert load_checkpoint_config(step) == cfg


def test_config_resolves_a_path_first_then_a_shipped_config_by_name(tmp_path, monkeypatch):
    shipped = shipped_configs_dir()
    assert {p.name for p in shipped.glob("*.yaml")} == {p.name for p in CONFIGS}
    monkeypatch.chdir(tmp_path)  # no configs/ here
    for spelling in ("most_tiny.yaml", "most_tiny", "configs/most_tiny.yaml"):
        assert resolve_config_path(spelling) == shipped / "most_tiny.yaml", spelling
    (tmp_path / "most_tiny.yaml").write_text("model: {num_layers: 3}\n")
    assert resolve_config_path("most_tiny.yaml") == Path("most_tiny.yaml")  # an existing path wins
    assert load_config("most_tiny.yaml").model.num_layers == 3
    with pytest.raises(ConfigError, match=r"no_such\.yaml does not exist .*shipped: demo\.yaml, .*most_stage1\.yaml"):
        load_config("no_such.yaml")
    with pytest.raises(ConfigError, match="elsewhere/most_tiny.yaml does not exist"):
        load_config("elsewhere/most_tiny.yaml")  # a path in another directory is never a shipped name


def test_most_config_prints_a_config_that_loads_back(tmp_path, capsys):
    import yaml

    from most_jax.cli import main

    assert main(["config", "--config", "most_tiny.yaml", "--set", "train.steps=3"]) == 0
    printed = capsys.readouterr().out
    assert config_from_dict(yaml.safe_load(printed)) == load_config("most_tiny.yaml", ["train.steps=3"])
    assert main(["config", "--demo", "--set", "demo.units_k=77"]) == 0  # default: the shipped demo.yaml
    (tmp_path / "printed.yaml").write_text(capsys.readouterr().out)
    assert load_demo_config(tmp_path / "printed.yaml") == load_demo_config("demo.yaml", ["demo.units_k=77"])
    assert main(["config", "--demo", "--config", "u2pp_demo.yaml", "--set", "demo.beam=3"]) == 0  # U2++ demo section
    (tmp_path / "u2.yaml").write_text(capsys.readouterr().out)
    from most_jax.config import U2ppDemoConfig
    assert (load_demo_config(tmp_path / "u2.yaml", demo_class=U2ppDemoConfig)
            == load_demo_config("u2pp_demo.yaml", ["demo.beam=3"], U2ppDemoConfig))
    assert main(["config", "--config", "no_such.yaml"]) == 2
    assert "shipped: demo.yaml" in capsys.readouterr().err


def test_model_section_is_chosen_by_its_family_key():
    from most_jax.config import ModelConfig, U2ppConfig

    most = load_config("configs/most_tiny.yaml")
    assert isinstance(most.model, ModelConfig) and to_dict(most)["model"]["family"] == "most"
    # A config stored before families existed has no family key: it is MoST.
    stored = to_dict(most)
    del stored["model"]["family"]
    assert config_from_dict(stored) == most
    u2pp = load_config(None, ["model.family=u2pp", "model.encoder.num_blocks=2", "model.decoder.r_num_blocks=1"])
    assert isinstance(u2pp.model, U2ppConfig) and u2pp.model.encoder.num_blocks == 2
    assert config_from_dict(to_dict(u2pp)) == u2pp
    with pytest.raises(ConfigError, match=r"^model.family: unknown model family 'gan'; known: most, u2pp"):
        load_config(None, ["model.family=gan"])
    # Fields of one family's section are unknown to the other's.
    with pytest.raises(ConfigError, match=r"model.hidden_size: unknown field\(s\) of U2ppConfig"):
        load_config(None, ["model.family=u2pp", "model.hidden_size=64"])
    with pytest.raises(ConfigError, match=r"model.family: a MoST section has family 'most'"):
        Config(model=ModelConfig(family="u2pp")).validate()
