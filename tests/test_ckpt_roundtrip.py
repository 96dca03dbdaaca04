"""Hugging Face import -> export round trips (byte-exact, both model_types, every input layout), the
exported directory loaded by transformers with logits equal to `most logits`, and export of a
training checkpoint that also holds optimizer state."""

from __future__ import annotations

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
from transformers import DeepseekV2ForCausalLM

from cli_check import cli_error
from hf_reference import release_config, release_tensors, tiny_model, write_checkpoint
from most_jax.checkpoint.hf_import import HFTensors, import_hf, read_hf
from most_jax.checkpoint.hf_export import export_hf
from most_jax.checkpoint.params_io import load_checkpoint
from most_jax.cli import main
from most_jax.config import to_dict


def tensors_of(hf_dir) -> dict[str, np.ndarray]:
    files = HFTensors(hf_dir)
    try:
        return {name: files.read(name) for name in sorted(files.names())}
    finally:
        files.close()


def assert_byte_equal(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert a[name].tobytes() == b[name].tobytes(), name


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_deepseek_v2_round_trip_is_byte_exact(dtype, tmp_path):
    """Release layout in, release layout out, same bytes, sharded by --max-shard-size."""
    model = tiny_model(seed=11, q_lora_rank=7)
    torch_dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    tensors = {k: v.to(torch_dtype) for k, v in release_tensors(model, fused=False).items()}
    write_checkpoint(tmp_path / "hf", tensors, release_config(model))
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "ck"), "--dtype", dtype]) == 0
    assert main(["export-hf", str(tmp_path / "ck"), str(tmp_path / "out"), "--max-shard-size", "6KB"]) == 0
    out = tmp_path / "out"
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 2 and all(p.stat().st_size <= 6_000 + 8192 for p in shards)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert sorted(index["weight_map"]) == sorted(tensors)
    assert_byte_equal(tensors_of(tmp_path / "hf"), tensors_of(out))
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "deepseek_v2" and config["torch_dtype"] == dtype
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "hf", "out"]  # no temporary left behind


def test_fused_input_exports_release_names_and_bf16_of_float32(tmp_path):
    """Fused expert tensors import; export writes them per expert, and --dtype bfloat16 of a float32
    checkpoint is the round-to-nearest-even cast of each tensor."""
    model = tiny_model(seed=12)
    write_checkpoint(tmp_path / "hf", release_tensors(model, fused=True), release_config(model))
    import_hf(tmp_path / "hf", tmp_path / "ck")
    export_hf(tmp_path / "ck", tmp_path / "out", dtype="bfloat16")
    got = tensors_of(tmp_path / "out")
    want = {k: v.to(torch.bfloat16).view(torch.int16).numpy() for k, v in release_tensors(model, fused=False).items()}
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        assert got[name].view(np.int16).tobytes() == value.tobytes(), name


def test_most_round_trip_keeps_routing_and_vocabulary(tmp_path):
    model = tiny_model(seed=13, n_routed_experts=8, first_k_dense_replace=0)
    config = release_config(model, "MoST", use_modality_aware_routing=True, text_expert_indices=[0, 1, 2, 3, 4],
                            audio_expert_indices=[5, 6, 7])
    tensors = {k: v.to(torch.bfloat16) for k, v in release_tensors(model, fused=False).items()}
    write_checkpoint(tmp_path / "hf", tensors, config)
    cfg = import_hf(tmp_path / "hf", tmp_path / "ck", "bfloat16")
    export_hf(tmp_path / "ck", tmp_path / "out")
    exported = json.loads((tmp_path / "out" / "config.json").read_text())
    assert exported["model_type"] == "MoST" and exported["use_modality_aware_routing"] is True
    assert exported["text_expert_indices"] == [0, 1, 2, 3, 4] and exported["audio_expert_indices"] == [5, 6, 7]
    assert_byte_equal(tensors_of(tmp_path / "hf"), tensors_of(tmp_path / "out"))
    again, _ = read_hf(tmp_path / "out", "bfloat16")
    assert again.model == cfg.model
    cli_error(["export-hf", str(tmp_path / "ck"), str(tmp_path / "plain"), "--model-type", "deepseek_v2"],
              "deepseek_v2 has no modality routing")
    assert not (tmp_path / "plain").exists()


def test_export_loads_in_transformers_with_equal_logits(tmp_path):
    """A checkpoint exported as deepseek_v2 loads in DeepseekV2ForCausalLM; its logits equal `most logits`."""
    model = tiny_model(seed=14, q_lora_rank=5, routed_scaling_factor=1.5,
                       rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                        "original_max_position_embeddings": 512, "mscale": 0.707,
                                        "mscale_all_dim": 0.707})
    model.save_pretrained(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "ck")
    export_hf(tmp_path / "ck", tmp_path / "out", max_shard_size=40_000)
    reloaded = DeepseekV2ForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager",
                                                     experts_implementation="eager").float().eval()
    tokens = np.random.RandomState(3).randint(0, model.config.vocab_size, (2, 11)).astype(np.int32)
    np.savez(tmp_path / "in.npz", tokens=tokens)
    assert main(["logits", str(tmp_path / "ck"), "--input", str(tmp_path / "in.npz"),
                 "--output", str(tmp_path / "ours.npz")]) == 0
    ours = np.load(tmp_path / "ours.npz")["logits"]
    with torch.no_grad():
        theirs = reloaded(torch.as_tensor(tokens, dtype=torch.long)).logits.float().numpy()
        original = model(torch.as_tensor(tokens, dtype=torch.long)).logits.float().numpy()
    assert np.abs(ours - theirs).max() <= 1e-4
    assert np.abs(theirs - original).max() <= 1e-4 and np.abs(theirs).max() > 1.0


def test_training_checkpoint_exports(tmp_path):
    """A trainer's manager root (params + opt_state + config items) exports its latest step's params."""
    model = tiny_model(seed=15)
    model.save_pretrained(tmp_path / "hf")
    cfg, params = read_hf(tmp_path / "hf")
    root = tmp_path / "run" / "checkpoints"
    mgr = ocp.CheckpointManager(root)
    for step, scale in ((5, 1.0), (9, 0.5)):
        scaled = jax.tree.map(lambda x: np.asarray(x * scale, np.float32), params)
        mgr.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(scaled), opt_state=ocp.args.StandardSave({"mu": scaled}),
            config=ocp.args.JsonSave(to_dict(cfg))))
    mgr.wait_until_finished()
    mgr.close()
    assert main(["export-hf", str(tmp_path / "run"), str(tmp_path / "out")]) == 0
    got = tensors_of(tmp_path / "out")
    np.testing.assert_array_equal(got["model.layers.1.mlp.experts.4.up_proj.weight"],
                                  params["moe_layers"]["moe"]["w_up"][0, 4].T * np.float32(0.5))
    np.testing.assert_array_equal(got["lm_head.weight"], params["lm_head"].T * np.float32(0.5))
    _, restored = load_checkpoint(tmp_path / "run")
    np.testing.assert_array_equal(np.asarray(restored["embed"]["embedding"]),
                                  params["embed"]["embedding"] * np.float32(0.5))


def test_conversion_commands_have_help(capsys):
    for argv in (["export-hf"], ["init-most"], ["bench", "convert"], ["import-hf"]):
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        out = capsys.readouterr().out
        assert "usage: most " + " ".join(argv) in out and len(out) > 400
