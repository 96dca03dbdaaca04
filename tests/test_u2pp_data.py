"""U2++ data: `most data prepare --family u2pp`, WeNet's train-time processing, the bucketing
pipeline (shapes, sharding, exact resume) and `most train` on it end to end."""

import dataclasses
import io
import json

import jax
import kaldi_native_fbank as knf
import numpy as np
import pytest
import soundfile as sf
import yaml
from cli_check import cli_error
from data_corpus import make_tokenizer, sentences

from most_jax.checkpoint.params_io import load_checkpoint
from most_jax.cli import main as most
from most_jax.config import SpeechDataConfig, load_config
from most_jax.data import records as rec
from most_jax.data.pipeline import PipelineError
from most_jax.data.prepare import CMVN_FILE, U2PP_FILE
from most_jax.data.speech_pipeline import SpeechData, build_speech_dataset, plan_epoch, spec_aug, spec_sub
from most_jax.data.tokenizers import load_tokenizer
from most_jax.models.family import get_family
from most_jax.speech.features import FbankOptions, FrameOptions, fbank
from most_jax.train.loop import CHECKPOINT_DIR, run_training

NUM_GOOD = 14
BUCKETS = [90, 160]


def _wave(rng, seconds):
    """A voiced-like signal: a few harmonics with a wandering pitch, amplitude-modulated, plus noise."""
    t = np.arange(int(seconds * 16000)) / 16000
    f0 = 120 + 40 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t)
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    wave = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (0.2 * wave + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("u2data")
    tok = make_tokenizer(root / "tok")
    rng = np.random.default_rng(0)
    (root / "wav").mkdir()
    lines = []
    texts = sentences(NUM_GOOD, seed=5)
    for i, text in enumerate(texts):
        sf.write(root / "wav" / f"u{i}.wav", _wave(rng, rng.uniform(0.4, 1.5)), 16000, subtype="PCM_16")
        lines.append({"id": f"u{i}", "audio": f"wav/u{i}.wav", "text": text})
    lines += [{"id": "gone", "audio": "wav/nowhere.wav", "text": texts[0]},
              {"id": "blank", "audio": "wav/u0.wav", "text": "  "},
              {"id": "qa", "prompt": {"audio": "wav/u0.wav"}, "response": {"text": texts[1]}}]
    manifest = root / "train.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = root / "prepared"
    assert most(["data", "prepare", "--family", "u2pp", "--manifest", str(manifest), "--tokenizer", str(tok),
                 "--out", str(out), "--num-shards", "2", "--workers", "1"]) == 0
    return root, out, tok, lines[:NUM_GOOD]


def _records(out):
    data = SpeechData(out)
    return data, [rec.decode_record(data.source[i]) for i in range(len(data.source))]


def test_prepare_writes_pcm_wenet_ids_and_a_lengths_index(prepared):
    root, out, tok, good = prepared
    report = json.loads((out / rec.REPORT_FILE).read_text())
    assert report["records_by_kind"] == {"utterance": NUM_GOOD}
    assert report["skipped"] == {"audio_missing": 1, "missing_transcript": 1, "not_an_utterance": 1}
    data, records = _records(out)
    tokenizer = load_tokenizer(tok)
    assert data.vocab_size == tokenizer.text_size + 2
    by_id = {line["id"]: line for line in good}
    assert sorted(r.id for r in records) == sorted(by_id)
    for i, r in enumerate(records):
        pcm, _ = sf.read(root / by_id[r.id]["audio"], dtype="int16")
        np.testing.assert_array_equal(r.arrays["pcm"], pcm)
        np.testing.assert_array_equal(r.arrays["target"], np.asarray(tokenizer.encode(by_id[r.id]["text"])) + 1)
        assert (data.samples[i], data.target_lengths[i]) == (len(pcm), len(r.arrays["target"]))


def _knf_fbank(pcm, dither=0.0):
    opts = knf.FbankOptions()
    opts.frame_opts.dither = dither
    opts.frame_opts.samp_freq = 16000
    opts.mel_opts.num_bins = 80
    online = knf.OnlineFbank(opts)
    online.accept_waveform(16000, (pcm.astype(np.float32) / 32768.0 * 32768.0).tolist())
    online.input_finished()
    return np.stack([online.get_frame(i) for i in range(online.num_frames_ready)])


def test_global_cmvn_is_wenets_over_kaldi_fbank_of_every_record(prepared):
    _, out, _, _ = prepared
    data, records = _records(out)
    feats = np.concatenate([_knf_fbank(r.arrays["pcm"]) for r in records]).astype(np.float64)
    mean, istd = data.cmvn()
    np.testing.assert_allclose(mean, feats.mean(axis=0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(istd, 1 / feats.std(axis=0), rtol=1e-3)
    stats = json.loads((out / CMVN_FILE).read_text())
    assert stats["frame_num"] == len(feats)


def test_dither_has_kaldis_statistics():
    """On digital silence only the dither is left: its fbank must match kaldi-native-fbank's
    (different noise, same distribution), and no dither means the log floor."""
    silence = np.zeros(16000 * 20, np.int16)  # 2,000 frames: per-bin means to about 0.03
    ours = fbank(silence.astype(np.float32), FbankOptions(FrameOptions(dither=1.0)), np.random.default_rng(0))
    theirs = _knf_fbank(silence, dither=1.0)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours.mean(axis=0), theirs.mean(axis=0), atol=0.12)
    np.testing.assert_allclose(ours.mean(), theirs.mean(), atol=0.02)
    np.testing.assert_allclose(ours.std(axis=0), theirs.std(axis=0), rtol=0.1)
    assert np.all(fbank(silence.astype(np.float32)) == np.log(np.finfo(np.float32).eps).astype(np.float32))
    with pytest.raises(ValueError, match="dither"):
        fbank(silence.astype(np.float32), FbankOptions(FrameOptions(dither=0.1)))


def _intervals(mask):
    """Runs of True in a 1-D bool array as (start, end)."""
    edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def test_spec_aug_masks_within_wenets_limits():
    cfg = SpeechDataConfig()
    x = np.random.default_rng(1).uniform(1, 2, size=(300, 80)).astype(np.float32)
    widest_t = widest_f = 0
    for seed in range(200):
        y = spec_aug(x, np.random.default_rng(seed), cfg)
        rows, cols = (y == 0).all(axis=1), (y == 0).all(axis=0)
        np.testing.assert_array_equal(y[~rows][:, ~cols], x[~rows][:, ~cols])  # nothing else changes
        assert ((y == 0) == (rows[:, None] | cols[None, :])).all()
        t_runs, f_runs = _intervals(rows), _intervals(cols)
        assert 1 <= len(t_runs) <= cfg.num_t_mask and 1 <= len(f_runs) <= cfg.num_f_mask
        widest_t = max(widest_t, *(e - s for s, e in t_runs))
        widest_f = max(widest_f, *(e - s for s, e in f_runs))
    # two overlapping masks can merge into one run of up to twice the width
    assert cfg.max_t <= widest_t <= 2 * cfg.max_t and cfg.max_f <= widest_f <= 2 * cfg.max_f


def test_spec_sub_copies_earlier_frames_only():
    cfg = SpeechDataConfig(spec_sub=True)
    x = np.random.default_rng(2).standard_normal((120, 80)).astype(np.float32)
    changed_any = False
    for seed in range(100):
        y = spec_sub(x, np.random.default_rng(seed), cfg)
        for t in range(len(x)):
            if not np.array_equal(y[t], x[t]):
                changed_any = True
                assert any(np.array_equal(y[t], x[s]) for s in range(t)), f"frame {t} is not an earlier original frame"
        changed = [t for t in range(len(x)) if not np.array_equal(y[t], x[t])]
        assert len(changed) <= cfg.num_t_sub * cfg.spec_sub_max_t
    assert changed_any


def _cfg(root, out, **speech):
    d = {"records": str(out), "seq_len": 24, "batch_size": 2,
         "speech": {"bucket_frames": BUCKETS, "dither": 0.0, "spec_aug": False, **speech}}
    def moe(activation):
        return {"num_experts": 3, "top_k": 2, "expert_ffn_dim": 24, "num_shared_experts": 0, "router": "topk_softmax",
                "expert": "ffn", "activation": activation, "expert_bias": True, "aux_loss_alpha": 0.0}

    model = {"family": "u2pp", "vocab_size": SpeechData(out).vocab_size,
             "encoder": {"output_size": 16, "attention_heads": 2, "linear_units": 24, "num_blocks": 1,
                         "cnn_module_kernel": 3, "moe": moe("silu")},
             "decoder": {"attention_heads": 2, "linear_units": 24, "num_blocks": 1, "r_num_blocks": 1,
                         "moe": moe("relu")}}
    train = {"steps": 40, "warmup_steps": 2, "lr": 1e-3, "log_every": 1, "checkpoint_every": 2}
    path = root / f"u2pp_{len(list(root.glob('u2pp_*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump({"model": model, "data": d, "train": train}))
    return load_config(path), path


def test_batches_are_bucketed_padded_fbank_of_the_records(prepared):
    root, out, _, _ = prepared
    cfg, _ = _cfg(root, out)
    data, records = _records(out)
    it = iter(build_speech_dataset(cfg, process_index=0, process_count=1))
    seen = set()
    for _ in range(8):
        batch = next(it)
        frames = batch["feats"].shape[1]
        assert frames in BUCKETS and batch["feats"].shape == (2, frames, 80)
        smaller = max([b for b in BUCKETS if b < frames], default=0)
        for j in range(2):
            n, m = batch["feats_lengths"][j], batch["target_lengths"][j]
            assert smaller < n <= frames  # the first bucket that holds it
            match = [r for r in records if np.array_equal(r.arrays["target"], batch["target"][j, :m])]
            assert len(match) == 1
            seen.add(match[0].id)
            np.testing.assert_allclose(batch["feats"][j, :n], _knf_fbank(match[0].arrays["pcm"]), rtol=1e-4, atol=1e-3)
            assert not batch["feats"][j, n:].any() and not batch["target"][j, m:].any()
    assert len(seen) > 6


def test_epoch_plan_uses_each_utterance_once_and_reshuffles(prepared):
    root, out, _, _ = prepared
    cfg, _ = _cfg(root, out, speed_perturb=True)
    data = SpeechData(out)
    plans = [plan_epoch(data.samples, data.target_lengths, cfg.data, e) for e in range(3)]
    for plan in plans:
        flat = plan.rows.ravel()
        assert len(set(flat.tolist())) == len(flat)
        assert set(np.unique(plan.speeds)) <= {0.9, 1.0, 1.1}
    assert not all(np.array_equal(plans[0].rows, p.rows) for p in plans[1:])


def test_processes_share_every_batch_row_for_row(prepared):
    """Two processes read disjoint rows of the same global batch (same bucket); together, with
    every augmentation on, they give exactly the one-process batch."""
    root, out, _, _ = prepared
    cfg, _ = _cfg(root, out, speed_perturb=True, dither=0.1, spec_aug=True, spec_sub=True)
    whole = iter(build_speech_dataset(cfg, process_index=0, process_count=1))
    parts = [iter(build_speech_dataset(cfg, process_index=p, process_count=2)) for p in range(2)]
    for _ in range(4):
        full, halves = next(whole), [next(p) for p in parts]
        for key in full:
            np.testing.assert_array_equal(full[key][0::2], halves[0][key])
            np.testing.assert_array_equal(full[key][1::2], halves[1][key])


def test_iterator_resumes_exactly_with_augmentation(prepared):
    root, out, _, _ = prepared
    cfg, _ = _cfg(root, out, speed_perturb=True, dither=0.1, spec_aug=True, spec_sub=True)
    it = iter(build_speech_dataset(cfg, process_index=0, process_count=1))
    for _ in range(9):  # past the first epoch (14 utterances, 2 per batch)
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(4)]
    again = iter(build_speech_dataset(cfg, process_index=0, process_count=1))
    again.set_state(json.loads(json.dumps(state)))
    for want in expected:
        got = next(again)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_train_u2pp_on_prepared_records_resumes_exactly(prepared, compile_cache):
    """Training through the family's pipeline (what `most train` calls) end to end: CMVN from the
    records, one compiled step per bucket met, and a run stopped after step 2 and resumed equals
    the straight run."""
    root, out, _, _ = prepared
    cfg, _ = _cfg(root, out, speed_perturb=True, dither=0.1, spec_aug=True, spec_sub=True)
    console = io.StringIO()
    run_training(cfg, root / "straight", get_family(cfg.model).batches(cfg), stop_after=5, console=console)
    straight = _losses(root / "straight")
    assert sorted(straight) == list(range(1, 6)) and all(np.isfinite(v) for v in straight.values())
    split = root / "split"
    run_training(cfg, split, iter(build_speech_dataset(cfg)), stop_after=2, console=console)
    run_training(cfg, split, iter(build_speech_dataset(cfg)), resume=True, stop_after=5, console=console)
    assert _losses(split) == straight
    shapes = {line.split(" for ")[1] for line in console.getvalue().splitlines() if "compiled the train step" in line}
    assert len(shapes) == 2, shapes  # both buckets met
    _, params = load_checkpoint(split / CHECKPOINT_DIR)
    mean, istd = SpeechData(out).cmvn()
    np.testing.assert_array_equal(params["encoder"]["global_cmvn"]["mean"], mean)  # loaded, and frozen
    np.testing.assert_array_equal(params["encoder"]["global_cmvn"]["istd"], istd)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(load_checkpoint(root / "straight" / CHECKPOINT_DIR)[1])):
        np.testing.assert_array_equal(a, b)


def _losses(run_dir):
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


def test_prepare_u2pp_refuses_text_only_inputs(prepared, tmp_path):
    root, _, tok, _ = prepared
    (tmp_path / "t.txt").write_text("hello\n")
    cli_error(["data", "prepare", "--family", "u2pp", "--text", str(tmp_path / "t.txt"), "--tokenizer", str(tok),
               "--out", str(tmp_path / "o")],
              "--family u2pp takes speech only")


def test_pipeline_refuses_mismatched_vocab_and_missing_index(prepared, tmp_path):
    root, out, _, _ = prepared
    cfg, _ = _cfg(root, out)
    wrong = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=cfg.model.vocab_size + 1))
    with pytest.raises(PipelineError, match="vocab_size"):
        build_speech_dataset(wrong, process_index=0, process_count=1)
    with pytest.raises(PipelineError, match=U2PP_FILE):
        SpeechData(tmp_path)
