"""Hugging Face import pieces: config mapping (rope spellings and semantics, MoST fields, errors),
the safetensors reader, bad checkpoints, params checkpoints (own and trainer layouts), `most logits` input checks."""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
from flax import nnx
from safetensors.torch import save_file
from transformers import DeepseekV2Config
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.deepseek_v2.modeling_deepseek_v2 import yarn_apply_mscale

from cli_check import cli_error
from hf_reference import release_config, release_tensors, tiny_model, write_checkpoint
from most_jax.checkpoint.hf_config import HFConfig, hf_config_from_model, model_config_from_hf
from most_jax.checkpoint import hf_import
from most_jax.checkpoint.hf_import import HFImportError, read_hf
from most_jax.checkpoint.params_io import CheckpointError, load_checkpoint, restore_model, save_params
from most_jax.checkpoint.safetensors_file import SafetensorsError, SafetensorsFile
from most_jax.checkpoint.stored_params import StoredParams
from most_jax.cli import main
from most_jax.config import ConfigError, load_config, to_dict
from most_jax.infer.logits import LogitsInputError, batched_logits, read_token_batch
from most_jax.models.most import MoST
from most_jax.nn.rope import cos_sin_scale, inverse_frequencies, softmax_scale, yarn_mscale


# ----------------------------------------------------------------------------- config mapping

def hf_config(**fields) -> HFConfig:
    model = tiny_model()
    return HFConfig({**release_config(model), **fields}, "dir/config.json")


@pytest.mark.parametrize("rope", [
    {"factor": 4.0, "mscale": 0.707, "mscale_all_dim": 0.707},
    {"factor": 5.0, "mscale": 0.9, "mscale_all_dim": 0.6},
    {"factor": 4.0, "mscale": 1.3},  # transformers ignores mscale without mscale_all_dim
    {"factor": 4.0, "mscale_all_dim": 0.8},
    {"factor": 8.0, "attention_factor": 1.05, "mscale_all_dim": 0.5},
    {"factor": 3.0, "beta_fast": 16, "beta_slow": 2, "original_max_position_embeddings": 64},
])
def test_rope_parameters_follow_transformers(rope):
    """Frequencies, cos/sin magnitude and softmax scale of a transformers-5 `rope_parameters` config
    equal what transformers computes from it."""
    params = {"rope_type": "yarn", "rope_theta": 1000.0, "original_max_position_embeddings": 512, **rope}
    hf_cfg = DeepseekV2Config(**{**tiny_model().config.to_dict(), "rope_parameters": dict(params)})
    inv_freq, attention_factor = ROPE_INIT_FUNCTIONS["yarn"](hf_cfg)
    ours = model_config_from_hf(hf_config(rope_parameters=params, rope_scaling=None))
    np.testing.assert_allclose(inverse_frequencies(ours.rope, ours.attention.qk_rope_head_dim), inv_freq.numpy(),
                               rtol=1e-6)
    assert math.isclose(cos_sin_scale(ours.rope), attention_factor, rel_tol=1e-12)
    head = ours.attention.qk_nope_head_dim + ours.attention.qk_rope_head_dim
    assert math.isclose(softmax_scale(ours.attention, ours.rope), yarn_apply_mscale(params, head ** -0.5),
                        rel_tol=1e-12)


def test_rope_scaling_uses_remote_code_defaults():
    """The release spelling follows the DeepSeek remote code: missing keys default to
    original_max_position_embeddings 4096, mscale 1, mscale_all_dim 0; mscale alone scales cos/sin."""
    rope_scaling = {"type": "yarn", "factor": 6.0, "mscale": 1.3}
    cfg = model_config_from_hf(hf_config(rope_theta=5000.0, rope_scaling=rope_scaling))
    assert cfg.rope.theta == 5000.0 and cfg.rope.original_max_position_embeddings == 4096
    assert math.isclose(cos_sin_scale(cfg.rope), yarn_mscale(6.0, 1.3))
    assert model_config_from_hf(hf_config(rope_scaling=None, rope_theta=123.0)).rope.type == "default"


def test_most_fields_and_round_trip():
    cfg = load_config("configs/most_v2_lite.yaml").model
    exported = hf_config_from_model(cfg, "MoST")
    assert exported["text_expert_indices"] == list(range(32))
    assert exported["audio_expert_indices"] == list(range(32, 64))
    assert model_config_from_hf(HFConfig(json.loads(json.dumps(exported)), "x")) == cfg
    with pytest.raises(ConfigError, match="modality_groups.*MoST"):
        hf_config_from_model(cfg, "deepseek_v2")
    plain = model_config_from_hf(HFConfig({**exported, "model_type": "deepseek_v2"}, "x"))
    assert plain.moe.modality_groups == () and plain.vocab == cfg.vocab


@pytest.mark.parametrize("fields, culprit", [
    ({"model_type": "llama"}, "'model_type'.*unknown model_type 'llama'"),
    ({"moe_layer_freq": 2}, "'moe_layer_freq'.*2 is not supported"),
    ({"scoring_func": "sigmoid"}, "'scoring_func'"),
    ({"hidden_act": "gelu"}, "'hidden_act'"),
    ({"topk_method": "noaux_tc"}, "'topk_method'.*noaux_tc"),
    ({"kv_lora_rank": None}, "'kv_lora_rank'.*required"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_scaling.rope_type.*'dynamic'"),
    ({"model_type": "MoST", "use_modality_aware_routing": True, "text_expert_indices": [0, 2, 1],
      "audio_expert_indices": [3, 4, 5]}, "'text_expert_indices'.*contiguous"),
    ({"model_type": "MoST", "use_modality_aware_routing": True, "text_expert_indices": [0, 1],
      "audio_expert_indices": [3, 4, 5]}, "dir/config.json.*expert.*2.*no modality group"),
])
def test_config_errors_name_field_and_file(fields, culprit):
    with pytest.raises(ConfigError, match=culprit) as e:
        model_config_from_hf(hf_config(**fields))
    assert "dir/config.json" in str(e.value)


# ----------------------------------------------------------------------------- safetensors and weights

def test_safetensors_reader_matches_library(tmp_path):
    tensors = {"a": torch.randn(3, 5).to(torch.bfloat16), "b": torch.randn(7).to(torch.float16),
               "c": torch.randn(2, 3, 4), "empty": torch.zeros(0, 3)}
    save_file(tensors, str(tmp_path / "x.safetensors"))
    f = SafetensorsFile(tmp_path / "x.safetensors")
    for name, t in tensors.items():
        got = f.read(name)
        assert got.shape == tuple(t.shape)
        np.testing.assert_array_equal(got.astype(np.float32), t.float().numpy())
    assert f.read("a").dtype == ml_dtypes.bfloat16
    data = (tmp_path / "x.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-10])
    with pytest.raises(SafetensorsError, match="cut.safetensors: truncated: tensor"):
        SafetensorsFile(tmp_path / "cut.safetensors")


def test_bfloat16_weights_import_exactly(tmp_path):
    model = tiny_model(seed=2)
    tensors = {k: v.to(torch.bfloat16) for k, v in release_tensors(model, fused=False).items()}
    write_checkpoint(tmp_path / "hf", tensors, release_config(model))
    _, params = read_hf(tmp_path / "hf", "float32")
    np.testing.assert_array_equal(params["lm_head"], tensors["lm_head.weight"].float().numpy().T)
    w_down = tensors["model.layers.2.mlp.experts.4.down_proj.weight"].float().numpy()
    np.testing.assert_array_equal(params["moe_layers"]["moe"]["w_down"][1, 4], w_down.T)
    _, params16 = read_hf(tmp_path / "hf", "bfloat16")
    assert params16["moe_layers"]["moe"]["w_down"].dtype == ml_dtypes.bfloat16


@pytest.mark.parametrize("fused", [False, True])
def test_row_block_reads_match_whole_tensor_reads(tmp_path, monkeypatch, fused):
    """Tensors read and transposed (or cast) in blocks of a few rows give what whole reads give."""
    model = tiny_model(seed=3)
    tensors = {k: v.to(torch.bfloat16) for k, v in release_tensors(model, fused=fused).items()}
    write_checkpoint(tmp_path / "hf", tensors, release_config(model))
    whole = {dtype: read_hf(tmp_path / "hf", dtype)[1] for dtype in ("float32", "bfloat16")}
    monkeypatch.setattr(hf_import, "_BLOCK_BYTES", 100)  # a few rows per block, a ragged last block
    for dtype, params in whole.items():
        blocked = read_hf(tmp_path / "hf", dtype)[1]
        for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(params),
                                     jax.tree_util.tree_leaves_with_path(blocked)):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), (dtype, path)


def test_safetensors_read_into_rows(tmp_path):
    value = np.arange(5 * 3 * 2, dtype=np.float32).reshape(5, 3, 2)
    save_file({"t": torch.from_numpy(value)}, str(tmp_path / "x.safetensors"))
    f = SafetensorsFile(tmp_path / "x.safetensors")
    out = np.full((2, 3, 2), -1, np.float32)
    assert f.read_into("t", out, start=3) is out and np.array_equal(out, value[3:5])
    for bad_out, start in [(np.empty((2, 3, 2), np.float64), 0), (np.empty((2, 2, 3), np.float32), 0),
                           (np.empty((2, 3, 2), np.float32), 4), (np.empty((3, 2, 2), np.float32).transpose(0, 2, 1), 0)]:
        with pytest.raises(SafetensorsError, match="x.safetensors: cannot read rows .* of tensor 't'"):
            f.read_into("t", bad_out, start)


def test_compression_is_optional_and_either_round_trips(tmp_path):
    model = tiny_model(seed=4)
    tensors = {k: v.to(torch.bfloat16) for k, v in release_tensors(model, fused=False).items()}
    write_checkpoint(tmp_path / "hf", tensors, release_config(model))
    for flag in ([], ["--compress"]):
        ck, out = tmp_path / f"ck{len(flag)}", tmp_path / f"out{len(flag)}"
        assert main(["import-hf", str(tmp_path / "hf"), str(ck), "--dtype", "bfloat16", *flag]) == 0
        assert main(["export-hf", str(ck), str(out)]) == 0
        exported = SafetensorsFile(out / "model.safetensors")
        assert sorted(exported.tensors) == sorted(tensors)
        for name, value in tensors.items():
            assert exported.read(name).tobytes() == value.view(torch.int16).numpy().tobytes(), name
        stored = StoredParams(ck / "params")
        for path in stored.leaves:
            compressor = stored._store(path).spec().to_json()["metadata"]["compressor"]
            assert compressor == ({"id": "zstd", "level": 1} if flag else None), path


def damaged(tmp_path, edit):
    """A release-layout checkpoint whose tensor dict went through `edit`."""
    model = tiny_model(seed=1)
    tensors = release_tensors(model, fused=False)
    edit(tensors)
    return write_checkpoint(tmp_path / "hf", tensors, release_config(model))


@pytest.mark.parametrize("edit, culprit", [
    (lambda t: t.pop("model.layers.1.mlp.experts.3.up_proj.weight"),
     r"missing tensor 'model.layers.1.mlp.experts.3.up_proj.weight' \(not in .*model.safetensors\)"),
    (lambda t: t.update({"model.layers.0.mlp.bias": torch.zeros(3)}),
     r"unexpected tensors.*'model.layers.0.mlp.bias' \(.*model.safetensors\)"),
    (lambda t: t.update({"model.layers.0.self_attn.o_proj.weight": torch.zeros(14, 15)}),
     r"model.safetensors: tensor 'model.layers.0.self_attn.o_proj.weight' has shape \[14, 15\], "
     r"the config needs \[15, 15\]"),
    (lambda t: t.pop("lm_head.weight"), r"missing tensor 'lm_head.weight'"),
])
def test_weight_errors_name_tensor_and_file(tmp_path, edit, culprit):
    hf_dir = damaged(tmp_path, edit)
    with pytest.raises(HFImportError, match=culprit):
        read_hf(hf_dir)
    cli_error(["import-hf", str(hf_dir), str(tmp_path / "out")], "most import-hf: error: .*" + culprit.split(" ")[0])
    assert not (tmp_path / "out").exists()


def test_sharded_index_errors(tmp_path):
    model = tiny_model(seed=1)
    model.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    index_path = tmp_path / "hf" / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    name = "model.layers.2.self_attn.kv_b_proj.weight"
    index["weight_map"][name] = "model-99999-of-99999.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(HFImportError, match=f"index.json: tensor '{name}' is in shard model-99999.*does not exist"):
        read_hf(tmp_path / "hf")
    with pytest.raises(HFImportError, match="neither model.safetensors nor .*found: config.json"):
        read_hf(_config_only(tmp_path / "no_weights", model))


def _config_only(path, model):
    path.mkdir()
    (path / "config.json").write_text(json.dumps(release_config(model)))
    return path


# ----------------------------------------------------------------------------- params checkpoints

@pytest.fixture(scope="module")
def tiny():
    cfg = load_config("configs/most_tiny.yaml", ["model.moe.dispatch=reference"])
    model = MoST(cfg.model, rngs=nnx.Rngs(3))
    return cfg, model, nnx.to_pure_dict(nnx.state(model, nnx.Param))


def test_save_and_restore_own_format(tiny, tmp_path):
    cfg, model, params = tiny
    save_params(tmp_path / "ck", cfg, params)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no partial directory left behind
    with pytest.raises(CheckpointError, match="already exists"):
        save_params(tmp_path / "ck", cfg, params)
    loaded_cfg, restored = restore_model(tmp_path / "ck")
    assert loaded_cfg == cfg
    jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(nnx.state(restored, nnx.Param)), params)


def test_save_rejects_mismatched_tree(tiny, tmp_path):
    cfg, _, params = tiny
    bad = jax.tree.map(lambda x: x, params)
    del bad["moe_layers"]["moe"]["w_up"]
    bad["extra"] = np.zeros(3, np.float32)
    bad["final_norm"]["scale"] = np.zeros(5, np.float32)
    with pytest.raises(CheckpointError, match=r"missing parameters: moe_layers.moe.w_up; unexpected parameters: "
                                              r"extra; final_norm.scale has shape \[5\], the model needs \[64\]"):
        save_params(tmp_path / "ck", cfg, bad)
    assert not list(tmp_path.iterdir())


def test_trainer_manager_layout(tiny, tmp_path):
    """A CheckpointManager root (params + config items among others) loads its latest step; a step
    directory and a run directory holding checkpoints/ load too; a config/params mismatch is named."""
    cfg, _, params = tiny
    root = tmp_path / "run" / "checkpoints"
    mgr = ocp.CheckpointManager(root)
    for step, scale in ((10, 1.0), (20, 2.0)):
        mgr.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(jax.tree.map(lambda x: x * scale, params)),
            opt_state=ocp.args.StandardSave({"mu": np.zeros(3, np.float32)}),
            config=ocp.args.JsonSave(to_dict(cfg))))
    mgr.wait_until_finished()
    for path, scale in ((root, 2.0), (tmp_path / "run", 2.0), (root / "10", 1.0)):
        _, loaded = load_checkpoint(path)
        np.testing.assert_array_equal(np.asarray(loaded["embed"]["embedding"]),
                                      np.asarray(params["embed"]["embedding"]) * scale)
    with pytest.raises(CheckpointError, match=r"checkpoints/20/params do not match the model: .*"
                                              r"moe_layers.moe.w_gate has shape \[2, 8, 64, 24\], the model needs "
                                              r"\[2, 8, 64, 30\]"):
        load_checkpoint(root, ["model.moe.expert_ffn_dim=30"])
    with pytest.raises(CheckpointError, match="neither a checkpoint step"):
        load_checkpoint(tmp_path)


def test_sharded_checkpoint_restores_on_one_device(tiny, tmp_path):
    cfg, _, params = tiny
    mesh = jax.make_mesh((8,), ("fsdp",))
    sharded = jax.device_put(params["embed"]["embedding"], jax.sharding.NamedSharding(mesh, jax.P("fsdp", None)))
    placed = {**params, "embed": {"embedding": sharded}}
    save_params(tmp_path / "ck", cfg, placed)
    _, loaded = load_checkpoint(tmp_path / "ck")
    assert len(loaded["embed"]["embedding"].sharding.device_set) == 1
    np.testing.assert_array_equal(np.asarray(loaded["embed"]["embedding"]), np.asarray(sharded))


# ----------------------------------------------------------------------------- most logits

@pytest.fixture(scope="module")
def saved_tiny(tiny, tmp_path_factory):
    cfg, _, params = tiny
    return save_params(tmp_path_factory.mktemp("logits") / "ck", cfg, params)


def test_logits_cli_without_modality_and_batching(tiny, saved_tiny, tmp_path):
    cfg, model, _ = tiny
    rng = np.random.RandomState(1)
    tokens = rng.randint(0, cfg.model.vocab_size, (3, 10)).astype(np.int32)
    np.savez(tmp_path / "in.npz", tokens=tokens)
    assert main(["logits", str(saved_tiny), "--input", str(tmp_path / "in.npz"), "--output",
                 str(tmp_path / "out.npz"), "--batch-size", "2"]) == 0
    logits = np.load(tmp_path / "out.npz")["logits"]
    assert logits.shape == (3, 10, cfg.model.vocab_size) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, batched_logits(model, tokens), atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npz", "out.npz"]


def test_explicit_modality_overrides_token_ids(tiny):
    cfg, model, _ = tiny
    tokens = np.full((2, 6), 5, np.int32)  # text ids
    derived = batched_logits(model, tokens)
    explicit = batched_logits(model, tokens, np.array([[0] * 6, [1] * 6], np.int32))
    np.testing.assert_allclose(explicit[0], derived[0], atol=1e-6)
    assert np.abs(explicit[1] - derived[1]).max() > 1e-3


@pytest.mark.parametrize("arrays, culprit", [
    ({"tokens": np.array([[1, 640]], np.int32)}, r"tokens\[0, 1\] = 640 is outside the vocabulary 0..639"),
    ({"tokens": np.array([[1, -2]], np.int32)}, r"tokens\[0, 1\] = -2 is outside"),
    ({"tokens": np.array([[1.0, 2.0]], np.float32)}, "tokens must hold integers .*float32"),
    ({"tokens": np.array([1, 2], np.int32)}, r"tokens must be a non-empty \[B, T\] matrix, got shape \[2\]"),
    ({"tokens": np.ones((1, 3), np.int32), "modality": np.ones((1, 2), np.int32)}, "modality has shape"),
    ({"tokens": np.ones((1, 3), np.int32), "modality": np.full((1, 3), 2, np.int32)},
     r"modality\[0, 0\] = 2 is not a modality of this model"),
    ({"token": np.ones((1, 3), np.int32)}, r"unexpected arrays \['token'\]"),
])
def test_logits_input_errors(tiny, saved_tiny, tmp_path, arrays, culprit):
    cfg, _, _ = tiny
    np.savez(tmp_path / "in.npz", **arrays)
    with pytest.raises(LogitsInputError, match=culprit):
        read_token_batch(tmp_path / "in.npz", cfg.model)
    cli_error(["logits", str(saved_tiny), "--input", str(tmp_path / "in.npz"), "--output", str(tmp_path / "o.npz")],
              "most logits: error: .*in.npz: ")
    assert not (tmp_path / "o.npz").exists()


def test_commands_have_help(capsys):
    for command in ("import-hf", "logits"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "usage: most " + command in capsys.readouterr().out


def test_imported_dtype_field(tmp_path):
    model = tiny_model(seed=9)
    model.save_pretrained(tmp_path / "hf")
    cfg, params = read_hf(tmp_path / "hf", "bfloat16")
    assert cfg.model.param_dtype == cfg.model.dtype == "bfloat16"
    assert dataclasses.replace(cfg.model, dtype="float32", param_dtype="float32") == read_hf(tmp_path / "hf")[0].model
