"""Logits parity with Hugging Face: tiny DeepSeek-V2 / MoST checkpoints -> `most import-hf` ->
`most logits`, against transformers' DeepseekV2ForCausalLM (float32, max |diff| <= 1e-4)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cli_check import cli_error
from hf_reference import (MOST_VOCAB, cli_logits, hf_logits, install_spec_gates, original_most_modality,
                          release_config, release_tensors, tiny_model, write_checkpoint)

TOL = 1e-4
B, T = 2, 13


def yarn(factor=4.0, **extra):
    return {"rope_type": "yarn", "rope_theta": 10000.0, "factor": factor, "original_max_position_embeddings": 512,
            "beta_fast": 32, "beta_slow": 1, **extra}


# name -> (transformers config overrides, reference gate: "hf" (transformers' own) or "spec").
# transformers' router ignores norm_topk_prob; saved by transformers (no auto_map), so must the import.
VARIANTS = {
    "mha_yarn_equal_mscale": (dict(rope_parameters=yarn(mscale=0.707, mscale_all_dim=0.707)), "hf"),
    "q_lora_scaled_no_dense": (dict(q_lora_rank=7, first_k_dense_replace=0, routed_scaling_factor=2.5), "hf"),
    "group_limited_yarn_mscale_differs": (
        dict(n_routed_experts=9, num_experts_per_tok=3, topk_method="group_limited_greedy", n_group=3, topk_group=2,
             first_k_dense_replace=2, routed_scaling_factor=1.5,
             rope_parameters=yarn(factor=5.0, mscale=0.9, mscale_all_dim=0.6)), "hf"),
    "norm_topk_yarn_mscale_only": (
        dict(norm_topk_prob=True, routed_scaling_factor=1.7, rope_parameters=yarn(mscale=1.3)), "hf"),
    "tied_q_lora_group_limited_norm_topk": (
        dict(tie_word_embeddings=True, q_lora_rank=5, first_k_dense_replace=0, n_shared_experts=2,
             topk_method="group_limited_greedy", n_group=2, topk_group=1, norm_topk_prob=True,
             rope_parameters=yarn(mscale_all_dim=0.8)), "hf"),
}


def tokens_for(vocab: int, seed: int = 1) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, vocab, (B, T)).astype(np.int32)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_deepseek_v2_parity(name, tmp_path):
    overrides, gate = VARIANTS[name]
    model = tiny_model(**overrides)
    model.save_pretrained(tmp_path / "hf")
    tokens = tokens_for(model.config.vocab_size)
    ref = hf_logits(model, tokens)
    ours = cli_logits(tmp_path / "hf", tmp_path, tokens)
    assert ours.shape == ref.shape and ours.dtype == np.float32
    assert np.abs(ours - ref).max() <= TOL, np.abs(ours - ref).max()
    assert np.abs(ref).max() > 1.0  # the weights are large enough for the comparison to mean something


# DeepSeek-V2's remote code (modeling_deepseek.py, named by the release config's auto_map).
REMOTE_CODE_AUTO_MAP = {"AutoConfig": "configuration_deepseek.DeepseekV2Config",
                        "AutoModelForCausalLM": "modeling_deepseek.DeepseekV2ForCausalLM"}


@pytest.mark.parametrize("norm_topk_prob", [True, False])
def test_remote_code_reading(norm_topk_prob, tmp_path, capsys):
    """A config with DeepSeek's auto_map is read as its remote code reads norm_topk_prob (divide or
    scale), and the import says so; transformers' reading (scale only) would differ by far more."""
    model = tiny_model(seed=9, norm_topk_prob=norm_topk_prob, routed_scaling_factor=1.7)
    hf_dir = write_checkpoint(tmp_path / "hf", release_tensors(model, fused=False),
                              release_config(model, auto_map=REMOTE_CODE_AUTO_MAP))
    tokens = tokens_for(model.config.vocab_size, seed=10)
    transformers_reading = hf_logits(model, tokens)
    install_spec_gates(model, [], norm_topk_prob, {}, divide_or_scale=True)
    ref = hf_logits(model, tokens)
    ours = cli_logits(hf_dir, tmp_path, tokens)
    assert "norm_topk_reading divide_or_scale" in capsys.readouterr().out
    assert np.abs(ours - ref).max() <= TOL, np.abs(ours - ref).max()
    if norm_topk_prob:
        assert np.abs(transformers_reading - ref).max() > 0.1
    else:
        assert np.abs(transformers_reading - ref).max() <= TOL


@pytest.mark.parametrize("layout", ["release_per_expert", "fused", "sharded"])
def test_checkpoint_layouts(layout, tmp_path):
    """Per-expert tensors with the release config spelling (rope_theta + rope_scaling), fused expert
    tensors, and an index-sharded save_pretrained all import to the same logits."""
    model = tiny_model(seed=3, q_lora_rank=7, rope_parameters=yarn(mscale=0.707, mscale_all_dim=0.707))
    hf_dir = tmp_path / "hf"
    if layout == "sharded":
        model.save_pretrained(hf_dir, max_shard_size="20KB")
        assert len(list(hf_dir.glob("*.safetensors"))) > 2 and (hf_dir / "model.safetensors.index.json").is_file()
    else:
        write_checkpoint(hf_dir, release_tensors(model, fused=layout == "fused"), release_config(model))
    tokens = tokens_for(model.config.vocab_size, seed=4)
    diff = np.abs(cli_logits(hf_dir, tmp_path, tokens) - hf_logits(model, tokens)).max()
    assert diff <= TOL, diff


MOST_VARIANTS = {
    "greedy": (dict(), [0, 1, 2], [3, 4, 5]),
    "group_limited_norm_topk_q_lora": (
        dict(n_routed_experts=8, topk_method="group_limited_greedy", n_group=4, topk_group=2, norm_topk_prob=True,
             routed_scaling_factor=1.3, q_lora_rank=7, first_k_dense_replace=0,
             rope_parameters=yarn(mscale=0.707, mscale_all_dim=0.707)),
        [0, 1, 2, 3, 4, 5], [6, 7]),
}


@pytest.mark.parametrize("name", sorted(MOST_VARIANTS))
def test_most_parity(name, tmp_path):
    """model_type MoST: the reference is DeepseekV2ForCausalLM with its routers replaced by the SPEC
    MAMoE gate; modality ids come from token ids with the original MoST thresholds."""
    overrides, text, audio = MOST_VARIANTS[name]
    model = tiny_model(seed=5, vocab_size=MOST_VOCAB, **overrides)
    modality = {}
    install_spec_gates(model, [(0, text[0], len(text)), (1, audio[0], len(audio))],
                       model.config.norm_topk_prob, modality)
    # "gready" is the MoST / DeepSeek remote-code default spelling of greedy.
    method = {"greedy": "gready"}.get(model.config.topk_method, model.config.topk_method)
    config = release_config(model, "MoST", use_modality_aware_routing=True, text_expert_indices=text,
                            audio_expert_indices=audio, topk_method=method)
    hf_dir = write_checkpoint(tmp_path / "hf", release_tensors(model, fused=False), config)
    rng = np.random.RandomState(6)
    # Text, audio-unit and ungrouped ("image") ids, interleaved.
    tokens = np.stack([rng.randint(99990, 100002, T), rng.randint(100002, 100504, T),
                       rng.randint(99990, MOST_VOCAB, T)]).astype(np.int32)
    modality["ids"] = original_most_modality(tokens)
    assert set(np.unique(modality["ids"])) == {-1, 0, 1}
    ref = hf_logits(model, tokens)

    (tmp_path / "derived").mkdir()
    derived = cli_logits(hf_dir, tmp_path / "derived", tokens)
    assert np.abs(derived - ref).max() <= TOL, np.abs(derived - ref).max()
    (tmp_path / "explicit").mkdir()
    explicit = cli_logits(hf_dir, tmp_path / "explicit", tokens, modality=modality["ids"])
    assert np.abs(explicit - ref).max() <= TOL

    # The modality mask matters: routing everything as text changes the audio rows.
    (tmp_path / "all_text").mkdir()
    all_text = cli_logits(hf_dir, tmp_path / "all_text", tokens, modality=np.zeros_like(tokens))
    assert np.abs(all_text[1] - ref[1]).max() > 1e-2


def test_bfloat16_import_is_rounded_float32(tmp_path):
    model = tiny_model(seed=7)
    model.save_pretrained(tmp_path / "hf")
    tokens = tokens_for(model.config.vocab_size, seed=8)
    (tmp_path / "f32").mkdir()
    (tmp_path / "bf16").mkdir()
    f32 = cli_logits(tmp_path / "hf", tmp_path / "f32", tokens)
    bf16 = cli_logits(tmp_path / "hf", tmp_path / "bf16", tokens, dtype="bfloat16")
    assert bf16.dtype == np.float32
    # bf16 weights and compute: close to float32, but not equal (the conversion really rounded).
    assert 1e-4 < np.abs(bf16 - f32).max() < 0.1 * np.abs(f32).max()


def test_export_runs_in_transformers_or_refuses(tmp_path):
    """A transformers deepseek_v2 with norm_topk_prob true -> import -> export: transformers loads the
    export and gives the original logits. A model that divides its top-k weights (the remote code's
    reading) has no transformers equivalent: export as deepseek_v2 refuses and says why; as MoST
    it writes the factor MoST's divide-then-scale code needs."""
    from transformers import DeepseekV2ForCausalLM

    from most_jax.cli import main

    model = tiny_model(seed=11, norm_topk_prob=True, routed_scaling_factor=1.7)
    model.save_pretrained(tmp_path / "hf")
    tokens = tokens_for(model.config.vocab_size, seed=12)
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "ck")]) == 0
    assert main(["export-hf", str(tmp_path / "ck"), str(tmp_path / "out"), "--model-type", "deepseek_v2"]) == 0
    back = DeepseekV2ForCausalLM.from_pretrained(tmp_path / "out", experts_implementation="eager",
                                                 attn_implementation="eager").eval()
    diff = np.abs(hf_logits(back, tokens) - hf_logits(model, tokens)).max()
    assert diff <= TOL, diff

    remote = tiny_model(seed=13, norm_topk_prob=True, routed_scaling_factor=1.7)
    hf_dir = write_checkpoint(tmp_path / "remote", release_tensors(remote, fused=False),
                              release_config(remote, auto_map=REMOTE_CODE_AUTO_MAP))
    assert main(["import-hf", str(hf_dir), str(tmp_path / "ck2")]) == 0
    cli_error(["export-hf", str(tmp_path / "ck2"), str(tmp_path / "out2"), "--model-type", "deepseek_v2"],
              "most export-hf: error: model.moe.norm_topk_prob: .*divides .*"
              "'divide_or_scale'.*transformers' deepseek_v2 ignores")
    assert not (tmp_path / "out2").exists()
    assert main(["export-hf", str(tmp_path / "ck2"), str(tmp_path / "most"), "--model-type", "MoST"]) == 0
    written = json.loads((tmp_path / "most" / "config.json").read_text())
    assert written["norm_topk_prob"] is True and written["routed_scaling_factor"] == 1.0
