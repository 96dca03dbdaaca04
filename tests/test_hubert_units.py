"""HuBERT speech units: `most data train-units --features hubert` on a tiny imported transformers
HubertModel gives the nearest-centroid ids of transformers' own layer features; padding buckets
bound the compiles; the MoST preset and bad layers are refused by name."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from cli_check import cli_error
from hubert_reference import hf_hidden_states, save_tiny, waveforms
from most_jax.checkpoint.hubert_hf import import_hubert
from most_jax.cli import main
from most_jax.models.hubert.units import bucket_samples
from most_jax.speech.units import UnitExtractor

LENGTHS = [6100, 4480, 3333, 5000, 2710]
LAYER = 1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(transformers model, imported checkpoint, manifest, waveforms) of a tiny base-like HuBERT."""
    root = tmp_path_factory.mktemp("hubert_units")
    hf = save_tiny(root / "hf", "base", seed=3)
    import_hubert(root / "hf", root / "ck")
    wave, lengths = waveforms(LENGTHS, seed=5)
    waves = [0.3 * wave[b, :n] for b, n in enumerate(lengths)]
    with open(root / "train.jsonl", "w") as f:
        for i, w in enumerate(waves):
            sf.write(root / f"u{i}.wav", w, 16000, subtype="FLOAT")
            f.write(json.dumps({"id": f"u{i}", "audio": f"u{i}.wav"}) + "\n")
    return hf, root / "ck", root / "train.jsonl", waves


def test_units_are_the_nearest_centroids_of_transformers_layer_features(tiny, tmp_path):
    hf, ck, manifest, waves = tiny
    assert main(["data", "train-units", "--manifest", str(manifest), "--out", str(tmp_path / "units"),
                 "--features", "hubert", "--hubert", str(ck), "--layer", str(LAYER), "--k", "6", "--no-dedup",
                 "--epochs", "3", "--batch-size", "32"]) == 0
    extractor = UnitExtractor.load(tmp_path / "units")
    meta = json.loads((tmp_path / "units" / "units.json").read_text())
    assert meta["features"] == {"kind": "hubert", "checkpoint": str(ck.resolve()), "layer": LAYER}
    assert meta["unit_rate"] == 50.0 and extractor.frames_per_unit == 1  # the encoder's 320-sample frames
    centroids = extractor.centroids.astype(np.float64)
    seen = set()
    for wave in waves:
        ids = extractor.extract(wave)
        ref_hidden, _ = hf_hidden_states(hf, wave)
        feats = (ref_hidden[LAYER].astype(np.float64) - extractor.mean) / extractor.std
        d2 = ((feats[:, None, :] - centroids[None]) ** 2).sum(-1)
        assert ids.shape == (len(feats),)
        # the chosen centroid is the nearest one (a float32 near-tie may pick its equal twin)
        np.testing.assert_allclose(d2[np.arange(len(ids)), ids], d2.min(1), rtol=1e-4, atol=1e-4)
        assert (ids == d2.argmin(1)).mean() > 0.95
        seen.update(ids.tolist())
    assert len(seen) >= 3  # the codebook really splits the frames


def test_padding_buckets_are_few_and_hold_every_length():
    lengths = range(400, 30 * 16000, 977)
    buckets = {bucket_samples(n, 320) for n in lengths}
    assert all(bucket_samples(n, 320) >= n and bucket_samples(n, 320) % 320 == 0 for n in lengths)
    assert all(bucket_samples(n, 640) < 1.2 * n + 640 for n in lengths if n >= 16000)
    assert len(buckets) <= 21  # 1 s .. 30 s in steps of 2^(1/4)
    assert bucket_samples(2000, 320) == bucket_samples(16000, 320) == 16000


def test_preset_and_layer_errors_name_the_argument(tiny, tmp_path):
    _, ck, manifest, _ = tiny
    base = ["data", "train-units", "--manifest", str(manifest), "--out", str(tmp_path / "u")]
    cli_error([*base, "--preset", "most", "--hubert", str(ck), "--layer", "1"],
              r"--preset most needs a 25 Hz HuBERT .* 50 Hz")
    cli_error([*base, "--features", "hubert", "--hubert", str(ck), "--layer", "3"], r"layer 3 is not a layer .*0\.\.2")
    cli_error([*base, "--features", "hubert", "--layer", "1"], r"needs --hubert CKPT and --layer N")
    assert not (tmp_path / "u").exists()


def test_prepare_writes_the_hubert_units_of_each_utterance(tiny, tmp_path):
    from data_corpus import make_tokenizer, sentences
    from most_jax.data.pipeline import PreparedData

    _, ck, manifest, waves = tiny
    texts = sentences(len(waves), seed=2)
    with open(tmp_path / "pairs.jsonl", "w") as f:  # the fixture's audio, with transcripts
        for i, line in enumerate(manifest.read_text().splitlines()):
            entry = json.loads(line)
            f.write(json.dumps({**entry, "audio": str(manifest.parent / entry["audio"]), "text": texts[i]}) + "\n")
    assert main(["data", "train-units", "--manifest", str(manifest), "--out", str(tmp_path / "units"),
                 "--features", "hubert", "--hubert", str(ck), "--layer", str(LAYER), "--k", "6", "--rate", "25",
                 "--pooling", "mean", "--epochs", "2"]) == 0
    assert main(["data", "prepare", "--manifest", str(tmp_path / "pairs.jsonl"), "--out", str(tmp_path / "prep"),
                 "--tokenizer", str(make_tokenizer(tmp_path / "tok")), "--units", str(tmp_path / "units"),
                 "--workers", "1"]) == 0
    data = PreparedData(tmp_path / "prep")
    extractor = data.unit_extractor()
    assert extractor.features.kind == "hubert" and extractor.unit_rate == 25.0
    records = {r.id: r for r in data.records("pair")}
    for i, wave in enumerate(waves):
        np.testing.assert_array_equal(records[f"u{i}"].arrays["units"], extractor.extract(wave))
