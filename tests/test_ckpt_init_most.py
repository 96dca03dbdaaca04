"""`most init-most`: MoST from DeepSeek-V2 as the paper does (experts j -> j, halves as groups, gate
unchanged), the upcycling options, fresh audio rows, and a few training steps from the result."""

from __future__ import annotations

import io

import numpy as np
import pytest

from cli_check import cli_error
from hf_reference import MOST_VOCAB, tiny_model
from train_batches import SyntheticBatches
from most_jax.checkpoint.hf_import import read_hf
from most_jax.checkpoint.init_most import audio_token_ids
from most_jax.checkpoint.params_io import load_checkpoint
from most_jax.cli import main
from most_jax.config import load_config
from most_jax.train.loop import run_training


@pytest.fixture(scope="module")
def deepseek(tmp_path_factory):
    """A tiny DeepSeek-V2 (6 experts) with the original 100600-row MoST vocabulary, and its params."""
    path = tmp_path_factory.mktemp("init_most") / "hf"
    tiny_model(seed=21, vocab_size=MOST_VOCAB, hidden_size=9).save_pretrained(path)
    return path, read_hf(path)[1]


def _init(hf_dir, out, *extra):
    assert main(["init-most", "--from", str(hf_dir), "--out", str(out), *extra]) == 0
    return load_checkpoint(out)


def _groups(cfg):
    return [(g.name, g.modality, g.first_expert, g.num_experts) for g in cfg.model.moe.modality_groups]


def test_paper_mapping_is_one_to_one(deepseek, tmp_path):
    hf_dir, source = deepseek
    cfg, params = _init(hf_dir, tmp_path / "ck")
    assert _groups(cfg) == [("text", 0, 0, 3), ("audio", 1, 3, 3)]
    flat_src = dict(_leaves(source))
    for path, value in _leaves(params):
        np.testing.assert_array_equal(np.asarray(value), flat_src[path], err_msg=".".join(path))


def test_copy_text_upcycling(deepseek, tmp_path):
    hf_dir, source = deepseek
    _, params = _init(hf_dir, tmp_path / "ck", "--upcycle", "copy-text")
    moe, src = params["moe_layers"]["moe"], source["moe_layers"]["moe"]
    for leaf in ("w_gate", "w_up", "w_down"):
        np.testing.assert_array_equal(np.asarray(moe[leaf]), np.concatenate([src[leaf][:, :3]] * 2, axis=1))
    np.testing.assert_array_equal(np.asarray(moe["gate"]), np.concatenate([src["gate"][..., :3]] * 2, axis=-1))


def test_grow_upcycling_adds_audio_experts(deepseek, tmp_path):
    hf_dir, source = deepseek
    cfg, params = _init(hf_dir, tmp_path / "ck", "--upcycle", "grow", "--audio-experts", "4")
    assert cfg.model.moe.num_experts == 10 and _groups(cfg) == [("text", 0, 0, 6), ("audio", 1, 6, 4)]
    copied = [0, 1, 3, 4]  # floor(i * 6 / 4)
    moe, src = params["moe_layers"]["moe"], source["moe_layers"]["moe"]
    np.testing.assert_array_equal(np.asarray(moe["w_down"]), np.concatenate(
        [src["w_down"], src["w_down"][:, copied]], axis=1))
    np.testing.assert_array_equal(np.asarray(moe["gate"]), np.concatenate(
        [src["gate"], src["gate"][..., copied]], axis=-1))
    cli_error(["init-most", "--from", str(hf_dir), "--out", str(tmp_path / "x"), "--audio-experts", "2"],
              "--audio-experts goes with --upcycle grow")
    cli_error(["init-most", "--from", str(hf_dir), "--out", str(tmp_path / "x"), "--upcycle", "grow",
               "--audio-experts", "1"],
              "top_k=2 exceeds the 1 experts of group 'audio'")
    assert not (tmp_path / "x").exists()


def test_reinit_audio_rows(deepseek, tmp_path):
    hf_dir, source = deepseek
    cfg, params = _init(hf_dir, tmp_path / "ck", "--reinit-audio-rows", "--seed", "3")
    ids = audio_token_ids(cfg.model)
    assert ids[0] == 100002 and ids[-1] == 100505 and len(ids) == 504
    emb, head = np.asarray(params["embed"]["embedding"]), np.asarray(params["lm_head"])
    others = np.setdiff1d(np.arange(MOST_VOCAB), ids)
    np.testing.assert_array_equal(emb[others], source["embed"]["embedding"][others])
    np.testing.assert_array_equal(head[:, others], source["lm_head"][:, others])
    fresh = np.concatenate([emb[ids].ravel(), head[:, ids].ravel()])
    assert abs(fresh.std() - 0.02) < 0.003 and not np.isin(emb[ids], source["embed"]["embedding"][ids]).any()


def test_result_trains_with_init_from(tmp_path):
    """init-most of a DeepSeek-V2 shaped like configs/most_tiny.yaml runs `most train --init-from`."""
    cfg = load_config("configs/most_tiny.yaml", ["model.num_layers=2", "model.scan_layers=false", "data.batch_size=4",
                                                 "data.seq_len=24", "train.steps=3", "train.log_every=1",
                                                 "train.checkpoint_every=100"])
    m, a = cfg.model, cfg.model.attention
    tiny_model(seed=22, vocab_size=m.vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
               intermediate_size=m.dense_ffn_dim, first_k_dense_replace=m.first_k_dense_replace,
               num_attention_heads=a.num_heads, kv_lora_rank=a.kv_lora_rank, qk_nope_head_dim=a.qk_nope_head_dim,
               qk_rope_head_dim=a.qk_rope_head_dim, v_head_dim=a.v_head_dim, n_routed_experts=m.moe.num_experts,
               num_experts_per_tok=m.moe.top_k, moe_intermediate_size=m.moe.expert_ffn_dim,
               n_shared_experts=m.moe.num_shared_experts).save_pretrained(tmp_path / "hf")
    init_cfg, init_params = _init(tmp_path / "hf", tmp_path / "ck")
    assert init_cfg.model.moe.modality_groups == cfg.model.moe.modality_groups
    console = io.StringIO()
    result = run_training(cfg, tmp_path / "run", SyntheticBatches(cfg.model.vocab, 4, 24), init_from=tmp_path / "ck",
                          console=console)
    assert result.step == 3 and "parameters from" in console.getvalue()
    assert np.isfinite(result.last_record["loss"])
    _, trained = load_checkpoint(tmp_path / "run")
    moved = np.abs(np.asarray(trained["moe_layers"]["moe"]["w_up"]) - np.asarray(init_params["moe_layers"]["moe"]["w_up"]))
    assert 0 < moved.max() < 0.1  # trained from the imported weights, not from a fresh init


def _leaves(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value
