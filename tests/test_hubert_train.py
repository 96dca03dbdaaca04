"""HuBERT pretraining end to end on the CPU: MFCC k-means frame targets (iteration 1) -> `most hubert
prepare` records -> `most hubert train` through the common trainer: the masked-prediction loss falls,
and a run stopped and resumed logs exactly what an uninterrupted one does."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from most_jax.cli import main
from most_jax.data import records as rec
from most_jax.data.hubert_data import HUBERT_FILE

TINY = ["model.hidden_size=16", "model.num_hidden_layers=1", "model.num_attention_heads=2",
        "model.intermediate_size=24", "model.conv_dim=[8,8,8,8,8,8,8]", "model.num_conv_pos_embeddings=4",
        "model.num_conv_pos_embedding_groups=2", "model.num_clusters=5", "model.final_dim=8", "model.mask_prob=0.5",
        "model.mask_length=3", "model.hidden_dropout=0.0", "model.attention_dropout=0.0",
        "model.activation_dropout=0.0", "data.batch_size=8", "data.max_audio_seconds=0.5", "train.steps=30",
        "train.lr=3e-3", "train.warmup_steps=0", "train.schedule=constant", "train.log_every=1",
        "train.checkpoint_every=1000"]


def _tones(rng: np.random.Generator) -> np.ndarray:
    """'Phones': 100-200 ms tones of 5 pitches, so a masked frame's target is usually its neighbours'."""
    pieces = []
    for _ in range(int(rng.integers(5, 9))):
        t = np.arange(int(rng.integers(1600, 3200))) / 16000
        pieces.append(0.4 * np.sin(2 * np.pi * (250 * (1 + rng.integers(0, 5))) * t))
    return np.concatenate(pieces).astype(np.float32)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("hubert_train")
    rng = np.random.default_rng(0)
    with open(root / "train.jsonl", "w") as f:
        for i in range(6):
            sf.write(root / f"u{i}.wav", _tones(rng), 16000, subtype="PCM_16")
            f.write(json.dumps({"id": f"u{i}", "audio": f"u{i}.wav"}) + "\n")
        f.write(json.dumps({"id": "gone", "audio": "missing.wav"}) + "\n")
    assert main(["data", "train-units", "--manifest", str(root / "train.jsonl"), "--out", str(root / "mfcc"),
                 "--rate", "50", "--k", "5", "--no-dedup", "--epochs", "3", "--batch-size", "64"]) == 0
    assert main(["hubert", "prepare", "--manifest", str(root / "train.jsonl"), "--units", str(root / "mfcc"),
                 "--out", str(root / "records")]) == 0
    return root / "records"


def _train(records, run, *extra):
    assert main(["hubert", "train", "--config", "hubert_tiny.yaml", *(a for o in TINY for a in ("--set", o)),
                 "--set", f"data.records={records}", "--run-dir", str(run), *extra]) == 0
    return {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r}


def test_prepare_writes_pcm_and_frame_targets(records):
    meta = json.loads((records / HUBERT_FILE).read_text())
    report = json.loads((records / rec.REPORT_FILE).read_text())
    assert report["records_written"] == 6 and report["skipped"] == {"audio_missing": 1}
    assert meta["num_units"] == 5 and meta["unit_rate"] == 50.0
    # MFCC frames stacked in pairs: one target per 320 samples, as the encoder's frames
    assert all(abs(f - s / 320) <= 2 for s, f in zip(meta["samples"], meta["frames"]))


def test_pretraining_loss_falls_and_resume_is_exact(records, tmp_path):
    full = _train(records, tmp_path / "a", "--stop-after", "30")
    losses = [full[s]["loss"] for s in range(1, 31)]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    assert full[30]["masked_accuracy"] > full[1]["masked_accuracy"]
    _train(records, tmp_path / "b", "--stop-after", "3")
    resumed = _train(records, tmp_path / "b", "--resume", "--stop-after", "6")
    for step in (4, 5, 6):
        assert (resumed[step]["loss"], resumed[step]["masked_accuracy"]) == \
            (full[step]["loss"], full[step]["masked_accuracy"])


def test_records_that_do_not_fit_the_model_are_named(records, tmp_path, capsys):
    assert main(["hubert", "train", "--config", "hubert_tiny.yaml", *(a for o in TINY for a in ("--set", o)),
                 "--set", f"data.records={records}", "--set", "model.num_clusters=7",
                 "--run-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("most hubert train: error:") and "targets of 5 units, model.num_clusters is 7" in err[-1]
