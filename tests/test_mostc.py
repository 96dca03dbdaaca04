"""MoST-C: continuous HuBERT frames as speech input. `most data prepare --continuous-hubert` stores
transformers' last-layer HuBERT states of each utterance; the pipeline splices them between the
waveform markers; training and exact resume through `most train`; cached generation from a
continuous prompt equals greedy decoding by full forward passes; `most generate asr` hears audio
through the HuBERT; Hugging Face export/import of the projection and the MoST-C config fields."""

from __future__ import annotations

import dataclasses
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf
import yaml
from flax import nnx

from cli_check import cli_error
from data_corpus import make_tokenizer, sentences, tiny_model_config
from hubert_reference import hf_hidden_states, save_tiny, waveforms
from most_jax.checkpoint.hubert_hf import import_hubert
from most_jax.checkpoint.params_io import load_checkpoint
from most_jax.cli import main
from most_jax.config import ConfigError, load_config
from most_jax.data import records as rec
from most_jax.data.pipeline import PreparedData, build_dataset
from most_jax.infer.generate import Sampling, generate, text_token_mask
from most_jax.models.most import MoST
from most_jax.train.loop import CHECKPOINT_DIR, run_training
from most_jax.vocab import AUDIO

NUM_UTTERANCES = 12
HUBERT_DIM = 20  # hubert_reference.TINY


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(transformers HuBERT, its import, manifest, waves, texts, tokenizer, MFCC units) of a small corpus."""
    root = tmp_path_factory.mktemp("mostc")
    hf = save_tiny(root / "hf", "base", seed=4)
    import_hubert(root / "hf", root / "hubert")
    lengths = [3200 + 640 * (i % 5) for i in range(NUM_UTTERANCES)]
    wave, _ = waveforms(lengths, seed=6)
    waves = [0.3 * wave[i, :n] for i, n in enumerate(lengths)]
    texts = sentences(NUM_UTTERANCES, seed=9)
    with open(root / "train.jsonl", "w") as f:
        for i, (w, t) in enumerate(zip(waves, texts)):
            sf.write(root / f"u{i}.wav", w, 16000, subtype="FLOAT")
            f.write(json.dumps({"id": f"u{i}", "audio": f"u{i}.wav", "text": t}) + "\n")
    (root / "text.txt").write_text("\n".join(sentences(8, seed=10)) + "\n")
    tok = make_tokenizer(root / "tok")
    assert main(["data", "train-units", "--manifest", str(root / "train.jsonl"), "--out", str(root / "units"),
                 "--rate", "50", "--k", "8", "--epochs", "2"]) == 0
    return dict(root=root, hf=hf, hubert=root / "hubert", waves=waves, texts=texts, tok=tok)


@pytest.fixture(scope="module")
def prepared(corpus):
    root = corpus["root"]
    assert main(["data", "prepare", "--manifest", str(root / "train.jsonl"), "--text", str(root / "text.txt"),
                 "--out", str(root / "prepared"), "--tokenizer", str(corpus["tok"]), "--units", str(root / "units"),
                 "--continuous-hubert", str(corpus["hubert"]), "--workers", "1"]) == 0
    return root / "prepared"


def test_prepare_stores_transformers_last_layer_states(corpus, prepared):
    spec = json.loads((prepared / rec.CONTINUOUS_FILE).read_text())
    assert spec["kind"] == "hubert" and spec["dim"] == HUBERT_DIM and spec["frame_rate"] == 50.0
    assert spec["config"] == {"checkpoint": str(corpus["hubert"].resolve()), "layer": 2}  # the last layer
    pairs = {r.id: r for r in PreparedData(prepared).records("pair")}
    assert len(pairs) == NUM_UTTERANCES
    for i, wave in enumerate(corpus["waves"]):
        _, last = hf_hidden_states(corpus["hf"], wave)
        stored = pairs[f"u{i}"].arrays["features"]
        assert stored.dtype == np.float16 and stored.shape == last.shape
        np.testing.assert_allclose(stored.astype(np.float32), last, rtol=2e-3, atol=2e-3)  # float16 storage
        assert len(pairs[f"u{i}"].arrays["units"]) > 0  # the units stay, for TTS and unit LM


def _config(prepared, tmp_path, **data):
    cfg = tiny_model_config(prepared)
    cfg["model"]["continuous_input_dim"] = HUBERT_DIM
    cfg["data"] = {"records": str(prepared), "seq_len": 96, "batch_size": 4, "speech_input": "features",
                   "mixture": {"asr": 0.6, "tts": 0.2, "text_lm": 0.2}, **data}
    cfg["train"] = {"steps": 40, "warmup_steps": 2, "lr": 3e-3, "log_every": 1, "checkpoint_every": 4}
    path = tmp_path / "mostc.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_config(path), path


def test_batches_splice_the_frames_between_the_waveform_markers(prepared, tmp_path):
    cfg, _ = _config(prepared, tmp_path)
    data = PreparedData(prepared)
    by_length = {}
    for r in data.records("pair"):
        by_length.setdefault(len(r.arrays["features"]), []).append(r.arrays["features"].astype(np.float32))
    vocab = data.layout.config
    seen_asr = seen_other = 0
    stream = iter(build_dataset(cfg.data, data, process_index=0, process_count=1))
    for _ in range(6):
        batch = next(stream)
        assert batch["features"].shape == (4, 96, HUBERT_DIM) and batch["features"].dtype == np.float32
        for row in range(4):
            for seg in set(batch["segment_ids"][row].tolist()) - {0}:
                at = batch["segment_ids"][row] == seg
                frames = batch["continuous"][row][at] == 1
                tokens = batch["tokens"][row][at]
                if not frames.any():
                    seen_other += 1
                    assert not batch["features"][row][at].any()
                    continue
                seen_asr += 1
                start, stop = np.flatnonzero(frames)[[0, -1]]
                assert frames[start:stop + 1].all()  # one contiguous span
                assert tokens[start - 1] == vocab.begin_wave_id and tokens[stop + 1] == vocab.end_wave_id
                assert (tokens[frames] == vocab.pad_id).all()
                assert (batch["modality"][row][at][frames] == AUDIO).all()
                assert (batch["loss_mask"][row][at][frames] == 0).all()  # the prompt is never a target
                span = batch["features"][row][at][frames]
                assert any(np.array_equal(span, f) for f in by_length[len(span)])
    assert seen_asr and seen_other


def test_training_resumes_exactly_and_the_projection_is_saved(prepared, tmp_path):
    cfg, _ = _config(prepared, tmp_path)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_training(cfg, straight, iter(build_dataset(cfg.data)), stop_after=12, console=io.StringIO())
    run_training(cfg, resumed, iter(build_dataset(cfg.data)), stop_after=8, console=io.StringIO())
    run_training(cfg, resumed, iter(build_dataset(cfg.data)), resume=True, stop_after=12, console=io.StringIO())

    def losses(run_dir):
        return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}

    a, b = losses(straight), losses(resumed)
    assert sorted(a) == sorted(b) == list(range(1, 13))
    assert all(np.isfinite(v) for v in a.values())
    assert [a[s] for s in sorted(a)] == [b[s] for s in sorted(b)]
    saved_cfg, params = load_checkpoint(straight / CHECKPOINT_DIR)
    assert saved_cfg.model.continuous_input_dim == HUBERT_DIM and saved_cfg.data.speech_input == "features"
    assert params["speech_proj"]["kernel"].shape == (HUBERT_DIM, cfg.model.hidden_size)
    assert params["speech_proj"]["bias"].shape == (cfg.model.hidden_size,)
    assert np.abs(np.asarray(params["speech_proj"]["bias"])).max() > 0  # trained (it starts at zero)


def test_cached_generation_from_frames_equals_greedy_full_forward():
    cfg = load_config("configs/most_tiny.yaml").model
    cfg = dataclasses.replace(cfg, moe=dataclasses.replace(cfg.moe, dispatch="reference"), continuous_input_dim=12)
    model = MoST(cfg, rngs=nnx.Rngs(0))
    rng = np.random.RandomState(0)
    prompts, frames = [], []
    for n, (lo, hi) in ((11, (2, 7)), (7, (1, 4))):
        prompts.append(rng.randint(0, 500, n).tolist())
        continuous = np.zeros(n, np.int32)
        continuous[lo:hi] = 1
        features = np.zeros((n, 12), np.float32)
        features[lo:hi] = rng.randn(hi - lo, 12)
        frames.append((features, continuous))
    allowed = text_token_mask(cfg.vocab, cfg.vocab_size)
    allowed[cfg.vocab.eos_id] = False  # never stops: every row decodes to max_new_tokens
    out = generate(model, prompts, allowed=allowed, stop_ids=[cfg.vocab.eos_id], frames=frames,
                   sampling=Sampling(max_new_tokens=6))
    forward = nnx.jit(lambda m, t, f, c: m(t, features_BTF=f, continuous_BT=c)[0])
    for prompt, (features, continuous), got in zip(prompts, frames, out):
        tokens, expected = list(prompt), []
        for _ in range(6):
            n = len(tokens)
            f = np.zeros((1, n, 12), np.float32)
            f[0, :len(features)] = features
            c = np.zeros((1, n), np.int32)
            c[0, :len(continuous)] = continuous
            logits = np.asarray(forward(model, jnp.asarray([tokens]), jnp.asarray(f), jnp.asarray(c)))[0, -1]
            expected.append(int(np.where(allowed, logits, -np.inf).argmax()))
            tokens.append(expected[-1])
        assert got == expected and len(got) > 2
    # the frames are heard: other features give other logits
    features, continuous = frames[0]
    heard = [np.asarray(forward(model, jnp.asarray([prompts[0]]), jnp.asarray(f[None]), jnp.asarray(continuous[None])))
             for f in (features, -features)]
    assert not np.allclose(heard[0], heard[1])


def test_generate_asr_hears_audio_through_the_hubert(corpus, prepared, tmp_path):
    cfg, _ = _config(prepared, tmp_path)
    run_training(cfg, tmp_path / "run", iter(build_dataset(cfg.data)), stop_after=2, console=io.StringIO())
    wavs = [str(corpus["root"] / f"u{i}.wav") for i in range(3)]
    out = io.StringIO()
    from contextlib import redirect_stdout

    with redirect_stdout(out):
        assert main(["generate", "asr", str(tmp_path / "run"), *wavs, "--max-new-tokens", "5",
                     "--batch-size", "2"]) == 0
    lines = out.getvalue().splitlines()
    assert [line.split("\t")[0] for line in lines] == wavs


def test_hf_export_and_import_keep_the_projection_and_the_mostc_fields(prepared, tmp_path):
    cfg, _ = _config(prepared, tmp_path)
    run_training(cfg, tmp_path / "run", iter(build_dataset(cfg.data)), stop_after=2, console=io.StringIO())
    assert main(["export-hf", str(tmp_path / "run"), str(tmp_path / "hf"), "--model-type", "MoST"]) == 0
    hf = json.loads((tmp_path / "hf" / "config.json").read_text())
    vocab = cfg.model.vocab
    assert hf["use_continuous_audio"] is True and hf["hubert_hidden_size"] == HUBERT_DIM
    assert (hf["begin_audio_wave_token_id"], hf["end_audio_wave_token_id"]) == (vocab.begin_wave_id, vocab.end_wave_id)
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    cfg_back, params_back = load_checkpoint(tmp_path / "back")
    _, params = load_checkpoint(tmp_path / "run" / CHECKPOINT_DIR)
    assert cfg_back.model.continuous_input_dim == HUBERT_DIM
    for leaf in ("kernel", "bias"):
        np.testing.assert_array_equal(np.asarray(params_back["speech_proj"][leaf]),
                                      np.asarray(params["speech_proj"][leaf]))
    # a deepseek_v2 export cannot say "continuous input"
    assert "MoST" in cli_error(["export-hf", str(tmp_path / "run"), str(tmp_path / "ds"),
                                "--model-type", "deepseek_v2"])


def test_original_mostc_config_reads_hubert_width_and_wave_ids():
    from most_jax.checkpoint.hf_config import HFConfig, model_config_from_hf

    base = {"model_type": "MoST", "vocab_size": 102400, "hidden_size": 64, "num_hidden_layers": 2,
            "intermediate_size": 96, "num_attention_heads": 4, "kv_lora_rank": 32, "qk_nope_head_dim": 16,
            "qk_rope_head_dim": 8, "v_head_dim": 16, "rope_scaling": None}
    cfg = model_config_from_hf(HFConfig({**base, "use_continuous_audio": True, "hubert_hidden_size": 768,
                                         "begin_audio_wave_token_id": 100504, "end_audio_wave_token_id": 100505},
                                        "config_mostc.json"))
    assert cfg.continuous_input_dim == 768
    assert (cfg.vocab.begin_wave_id, cfg.vocab.end_wave_id) == (100504, 100505)
    assert model_config_from_hf(HFConfig(base, "config.json")).continuous_input_dim == 0
    with pytest.raises(ConfigError, match="hubert_hidden_size"):
        model_config_from_hf(HFConfig({**base, "use_continuous_audio": True}, "config_mostc.json"))
    with pytest.raises(ConfigError, match="model_type MoST"):
        model_config_from_hf(HFConfig({**base, "model_type": "deepseek_v2", "use_continuous_audio": True,
                                       "hubert_hidden_size": 768}, "config.json"))


def test_inconsistent_settings_are_named(corpus, prepared, tmp_path):
    cfg, path = _config(prepared, tmp_path)
    with pytest.raises(ConfigError, match="data.speech_input"):
        load_config(path, ["model.continuous_input_dim=0"])
    with pytest.raises(ConfigError, match="data.speech_input"):
        load_config(path, ["data.speech_input=frames"])
    bad = load_config(path, ["model.continuous_input_dim=21"])
    from most_jax.models.most_family import FAMILY

    with pytest.raises(ConfigError, match="continuous_input_dim=21.*20 dims"):
        FAMILY.batches(bad)
    assert "--continuous-hubert" in cli_error(["data", "prepare", "--manifest", "m.jsonl", "--out", "o",
                                               "--tokenizer", str(corpus["tok"]), "--continuous-layer", "1"])
    model = MoST(load_config("configs/most_tiny.yaml").model, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="continuous_input_dim is 0"):
        model(jnp.zeros((1, 4), jnp.int32), features_BTF=jnp.zeros((1, 4, 3)), continuous_BT=jnp.ones((1, 4)))
    jax.clear_caches()
