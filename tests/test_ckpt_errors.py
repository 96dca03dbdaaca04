"""Bad input to the converters: each failure names the tensor (or field) and the file, and no output
directory appears."""

from __future__ import annotations

import json

import pytest
import torch
from flax import nnx

from cli_check import cli_error
from hf_reference import release_config, release_tensors, tiny_model, write_checkpoint
from most_jax.checkpoint.params_io import save_params
from most_jax.config import load_config
from most_jax.models.most import MoST

L1 = "model.layers.1"


def _hf(tmp_path, edit_tensors=lambda t: None, edit_config=lambda c: None):
    model = tiny_model(seed=41)
    tensors, config = release_tensors(model, fused=False), release_config(model)
    edit_tensors(tensors)
    edit_config(config)
    return write_checkpoint(tmp_path / "hf", tensors, config)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 100])


CASES = {
    "missing tensor": (dict(edit_tensors=lambda t: t.pop(f"{L1}.mlp.experts.3.up_proj.weight")),
                       rf"missing tensor '{L1}.mlp.experts.3.up_proj.weight' \(not in .*hf/model.safetensors\)"),
    "unexpected tensor": (dict(edit_tensors=lambda t: t.update({f"{L1}.mlp.experts.9.up_proj.weight":
                                                                torch.zeros(9, 15)})),
                          rf"unexpected tensors.*'{L1}.mlp.experts.9.up_proj.weight' \(.*hf/model.safetensors\)"),
    "shape mismatch": (dict(edit_tensors=lambda t: t.update({f"{L1}.self_attn.o_proj.weight": torch.zeros(15, 14)})),
                       rf"hf/model.safetensors: tensor '{L1}.self_attn.o_proj.weight' has shape \[15, 14\], "
                       r"the config needs \[15, 15\]"),
    "dtype mismatch": (dict(edit_tensors=lambda t: t.update({"model.norm.weight": torch.ones(15, dtype=torch.int32)})),
                       r"hf/model.safetensors: tensor 'model.norm.weight' has dtype int32, expected a floating type"),
    "unknown model_type": (dict(edit_config=lambda c: c.update(model_type="qwen2_moe")),
                           r"hf/config.json: field 'model_type': unknown model_type 'qwen2_moe'"),
    "config says fewer experts": (dict(edit_config=lambda c: c.update(n_routed_experts=4)),
                                  rf"hf/model.safetensors: tensor '{L1}.mlp.gate.weight' has shape \[6, 15\], "
                                  r"the config needs \[4, 15\]"),
    "config says more layers": (dict(edit_config=lambda c: c.update(num_hidden_layers=4)),
                                r"missing tensor 'model.layers.3.input_layernorm.weight'"),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("command", ["import-hf", "init-most"])
def test_bad_hf_input_is_named(case, command, tmp_path):
    edits, culprit = CASES[case]
    hf_dir = _hf(tmp_path, **edits)
    argv = ([command, str(hf_dir), str(tmp_path / "out")] if command == "import-hf"
            else [command, "--from", str(hf_dir), "--out", str(tmp_path / "out")])
    cli_error(argv, f"most {command}: error: .*{culprit}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_truncated_file_is_named(tmp_path):
    model = tiny_model(seed=42)
    model.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    shard = sorted((tmp_path / "hf").glob("model-*.safetensors"))[1]
    _truncate(shard)
    cli_error(["import-hf", str(tmp_path / "hf"), str(tmp_path / "out")],
              rf"{shard.name}: truncated: tensor '.*' ends at byte \d+, the file has")
    assert not (tmp_path / "out").exists()


def test_bad_checkpoints_for_export(tmp_path):
    cli_error(["export-hf", str(tmp_path / "nowhere"), str(tmp_path / "out")],
              r"most export-hf: error: .*nowhere: no such checkpoint directory")
    ck = _hf(tmp_path)  # any directory that is not a checkpoint
    cli_error(["export-hf", str(ck), str(tmp_path / "out")],
              r"neither a checkpoint step .* nor a checkpoint manager root")
    cfg = load_config("configs/most_tiny.yaml")
    params = nnx.to_pure_dict(nnx.state(MoST(cfg.model, rngs=nnx.Rngs(0)), nnx.Param))
    save_params(tmp_path / "ck", cfg, params)
    config_dir = tmp_path / "ck" / "config"
    stored = json.loads((config_dir / "metadata").read_text())
    stored["model"]["moe"]["expert_ffn_dim"] = 30
    (config_dir / "metadata").write_text(json.dumps(stored))
    cli_error(["export-hf", str(tmp_path / "ck"), str(tmp_path / "out")],
              r"ck/params do not match the model: .*moe_layers.moe.w_gate has shape "
              r"\[2, 8, 64, 24\], the model needs \[2, 8, 64, 30\]")
    (tmp_path / "out").mkdir()
    cli_error(["export-hf", str(tmp_path / "ck"), str(tmp_path / "out")], "out: already exists")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "hf", "out"]
