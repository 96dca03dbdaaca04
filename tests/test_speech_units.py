"""Unit extraction: JAX k-means (determinism, quality, reference assignment), grouping, dedup, save/load, CLI."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

from most_jax.cli import main
from most_jax.speech import features, kmeans, units


def blobs(seed=0, per=200, centres=7, dims=5):
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 6, (centres, dims))
    return (means[:, None, :] + rng.normal(0, 0.5, (centres, per, dims))).reshape(-1, dims).astype(np.float32)


def test_assign_matches_brute_force():
    rng = np.random.default_rng(1)
    x, c = rng.normal(size=(301, 13)).astype(np.float32), rng.normal(size=(17, 13)).astype(np.float32)
    ids, d2 = kmeans.assign(jnp.asarray(x), jnp.asarray(c))
    reference = ((x[:, None, :].astype(np.float64) - c[None, :, :]) ** 2).sum(-1)
    # Compare distances at the chosen ids, not the ids: float32 rounding may flip exact near-ties.
    np.testing.assert_allclose(reference[np.arange(301), np.asarray(ids)], reference.min(1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(d2), reference.min(1), rtol=1e-4, atol=1e-4)


def test_kmeans_is_deterministic_and_beats_random_centroids():
    data = blobs()
    options = kmeans.KMeansOptions(num_clusters=7, batch_size=256, epochs=6, seed=3)
    first, again = kmeans.fit(data, options), kmeans.fit(data, options)
    np.testing.assert_array_equal(first, again)
    other = kmeans.fit(data, kmeans.KMeansOptions(num_clusters=7, batch_size=256, epochs=6, seed=4))
    assert not np.array_equal(first, other)
    random_init = kmeans.initial_centroids(data, kmeans.KMeansOptions(num_clusters=7, init="random", seed=3))
    fitted = kmeans.inertia(data, first)
    assert fitted < 0.5 * kmeans.inertia(data, random_init)
    # Seven well separated blobs of variance 0.5^2 per dim: the optimum is about 5 * 0.25.
    assert fitted < 1.6


def test_centroids_that_win_nothing_are_reseeded_on_data():
    data = blobs()
    centroids = kmeans.initial_centroids(data, kmeans.KMeansOptions(num_clusters=7, init="random", seed=0))
    centroids[[1, 4]] = 1e4  # far from every point: they win nothing
    batches = jnp.asarray(data[:5 * 256].reshape(5, 256, -1))
    key = jax.random.key(0)
    out, counts, _, reseeded = kmeans._epoch(jnp.asarray(centroids), jnp.zeros(7), batches, key, jnp.asarray(True))
    assert int(reseeded) == 2 and float(counts[1]) == float(counts[4]) == 0.0
    rows = {tuple(r) for r in data[:5 * 256]}
    assert tuple(np.asarray(out[1])) in rows and tuple(np.asarray(out[4])) in rows
    kept, _, _, none = kmeans._epoch(jnp.asarray(centroids), jnp.zeros(7), batches, key, jnp.asarray(False))
    assert int(none) == 0 and float(kept[1, 0]) == 1e4  # no re-seeding after the last epoch


def test_kmeans_rejects_too_few_points():
    with pytest.raises(ValueError, match="at least num_clusters=50"):
        kmeans.fit(blobs(per=2), kmeans.KMeansOptions(num_clusters=50))


def test_remove_duplicates():
    np.testing.assert_array_equal(units.remove_duplicates(np.array([3, 3, 5, 3, 3, 3, 7, 7])), [3, 5, 3, 7])
    assert units.remove_duplicates(np.array([], np.int32)).size == 0
    np.testing.assert_array_equal(units.remove_duplicates(np.array([1, 2, 3])), [1, 2, 3])


def test_remove_short_runs():
    ids = np.array([3, 3, 5, 3, 3, 3, 7, 7, 9])
    np.testing.assert_array_equal(units.remove_short_runs(ids, 1), ids)
    np.testing.assert_array_equal(units.remove_short_runs(ids, 2), [3, 3, 3, 3, 3, 7, 7])
    np.testing.assert_array_equal(units.remove_short_runs(ids, 3), [3, 3, 3])
    # No run is long enough: the longest (first of equals) survives instead of nothing.
    np.testing.assert_array_equal(units.remove_short_runs(np.array([4, 6, 6, 8, 8]), 5), [6, 6])
    assert units.remove_short_runs(np.array([], np.int32), 3).size == 0


def test_normalise_utterance():
    rng = np.random.default_rng(0)
    frames = rng.normal(5.0, 3.0, (40, 6)).astype(np.float32)
    frames[:, 2] = 1.5  # a constant dimension stays finite
    out = units.normalise_utterance(frames)
    np.testing.assert_allclose(out.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(0)[[0, 1, 3, 4, 5]], 1, atol=1e-5)
    assert np.isfinite(out).all() and out.dtype == np.float32


def test_group_frames_stack_and_mean():
    frames = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    stacked = units.group_frames(frames, 4, "stack")
    assert stacked.shape == (3, 12)
    np.testing.assert_array_equal(stacked[0], frames[:4].reshape(-1))
    # The partial last group repeats the last frame.
    np.testing.assert_array_equal(stacked[2], np.concatenate([frames[8], frames[9], frames[9], frames[9]]))
    np.testing.assert_allclose(units.group_frames(frames, 2, "mean")[1], frames[2:4].mean(0))
    with pytest.raises(ValueError, match="pooling"):
        units.group_frames(frames, 2, "max")


def test_unit_rate_must_divide_the_frame_rate():
    assert units.frames_per_unit(units.MfccFeatures(), 25) == 4
    assert units.frames_per_unit(units.FbankFeatures(), 50) == 2
    with pytest.raises(ValueError, match="whole number"):
        units.frames_per_unit(units.MfccFeatures(), 30)


def synthetic_waves(count=12, seed=0):
    """Chirps and noise bursts: varied spectra without eSpeak."""
    rng = np.random.default_rng(seed)
    waves = []
    for _ in range(count):
        t = np.arange(int(16000 * rng.uniform(0.6, 1.2))) / 16000
        f0 = rng.uniform(100, 400)
        chirp = np.sin(2 * np.pi * (f0 * t + rng.uniform(50, 800) * t ** 2))
        noise = rng.normal(0, 0.3, len(t)) * (t > t[-1] / 2)
        waves.append((0.3 * chirp + noise).astype(np.float32))
    return waves


@pytest.fixture(scope="module")
def fitted():
    options = kmeans.KMeansOptions(num_clusters=16, batch_size=128, epochs=3, seed=0)
    return units.UnitExtractor.fit(synthetic_waves(), units.MfccFeatures(), 25, options=options)


def test_extract_matches_the_pipeline_by_hand(fitted):
    wave = synthetic_waves(1, seed=9)[0]
    frames = units.group_frames(units.MfccFeatures()(wave), 4, "stack")
    normalised = (frames - fitted.mean) / fitted.std
    ids = ((normalised[:, None, :] - fitted.centroids[None]) ** 2).sum(-1).argmin(1)
    got = fitted.extract(wave)
    assert got.dtype == np.int32 and got.max() < 16
    np.testing.assert_array_equal(got, units.remove_duplicates(ids))
    assert len(fitted.unit_frames(wave)) == -(-features.num_frames(len(wave), features.FrameOptions()) // 4)


def test_frame_units_with_cmvn_and_min_run_match_the_pipeline_by_hand(tmp_path):
    options = kmeans.KMeansOptions(num_clusters=8, batch_size=256, epochs=3, seed=0)
    extractor = units.UnitExtractor.fit(synthetic_waves(), units.MfccFeatures(), 100, options=options,
                                        utterance_cmvn=True, min_run=3)
    wave = synthetic_waves(1, seed=9)[0]
    frames = units.MfccFeatures()(wave)
    frames = (frames - frames.mean(0)) / frames.std(0)
    normalised = (frames - extractor.mean) / extractor.std
    ids = ((normalised[:, None, :] - extractor.centroids[None]) ** 2).sum(-1).argmin(1)
    expected = units.remove_duplicates(units.remove_short_runs(ids, 3))
    got = extractor.extract(wave)
    np.testing.assert_array_equal(got, expected)
    assert len(got) < len(units.remove_duplicates(ids))  # some short runs were dropped
    # A louder copy of the same audio gives the same units: CMVN removes the level.
    np.testing.assert_array_equal(extractor.extract(wave * 3.0), got)
    np.testing.assert_array_equal(extractor.extract_batch([wave])[0], got)
    extractor.save(tmp_path / "u")
    loaded = units.UnitExtractor.load(tmp_path / "u")
    assert (loaded.utterance_cmvn, loaded.min_run) == (True, 3)
    np.testing.assert_array_equal(loaded.extract(wave), got)
    with pytest.raises(ValueError, match="min_run"):
        units.UnitExtractor.fit(synthetic_waves(2), units.MfccFeatures(), 100, options=options, min_run=0)


def test_extract_batch_equals_extract_and_empty_audio_gives_no_units(fitted):
    waves = synthetic_waves(4, seed=5) + [np.zeros(100, np.float32)]
    batch = fitted.extract_batch(waves)
    for wave, ids in zip(waves, batch):
        np.testing.assert_array_equal(ids, fitted.extract(wave))
    assert batch[-1].size == 0


def test_save_load_round_trip_replaces_atomically(fitted, tmp_path):
    target = tmp_path / "units"
    fitted.save(target)
    fitted.save(target, {"note": "second save replaces the first"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["units"]
    loaded = units.UnitExtractor.load(target)
    for name in ("mean", "std", "centroids"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(fitted, name))
    assert (loaded.features, loaded.unit_rate, loaded.pooling, loaded.dedup) == (
        fitted.features, fitted.unit_rate, fitted.pooling, fitted.dedup)
    wave = synthetic_waves(1, seed=11)[0]
    np.testing.assert_array_equal(loaded.extract(wave), fitted.extract(wave))
    meta = json.loads((target / "units.json").read_text())
    assert meta["features"]["kind"] == "mfcc" and meta["num_units"] == 16 and meta["fit"]["note"]


def test_load_names_the_bad_field(fitted, tmp_path):
    fitted.save(tmp_path / "u")
    meta_path = tmp_path / "u" / "units.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(meta | {"features": {"kind": "hubert-not-registered"}}))
    with pytest.raises(units.UnitExtractorError, match="field 'features'.*hubert-not-registered"):
        units.UnitExtractor.load(tmp_path / "u")
    meta_path.write_text(json.dumps(meta | {"min_run": 0}))
    with pytest.raises(units.UnitExtractorError, match="field 'min_run'"):
        units.UnitExtractor.load(tmp_path / "u")
    # Extractors saved before the two options existed load with neither.
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k not in ("min_run", "utterance_cmvn")}))
    old = units.UnitExtractor.load(tmp_path / "u")
    assert (old.utterance_cmvn, old.min_run) == (False, 1)
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "pooling"}))
    with pytest.raises(units.UnitExtractorError, match="missing field 'pooling'"):
        units.UnitExtractor.load(tmp_path / "u")
    with pytest.raises(units.UnitExtractorError, match="missing"):
        units.UnitExtractor.load(tmp_path / "nowhere")


def test_a_new_feature_kind_plugs_in(tmp_path):
    """What a HuBERT extractor will do: implement FrameFeatures, register, fit, save, load."""

    class Energy50Hz:
        kind = "test-energy"
        frame_rate, dim = 50.0, 2

        def __call__(self, wave):
            frames = wave[: len(wave) // 320 * 320].reshape(-1, 320)
            return np.stack([np.log(1e-6 + (frames ** 2).mean(1)), np.abs(np.diff(np.sign(frames), axis=1)).mean(1)], 1)

        def config(self):
            return {}

    units.register_features("test-energy", Energy50Hz)
    try:
        assert isinstance(Energy50Hz(), units.FrameFeatures)
        extractor = units.UnitExtractor.fit(synthetic_waves(6), Energy50Hz(), 25, pooling="mean", dedup=False,
                                            options=kmeans.KMeansOptions(num_clusters=4, epochs=2))
        extractor.save(tmp_path / "e")
        loaded = units.UnitExtractor.load(tmp_path / "e")
        wave = synthetic_waves(1, seed=3)[0]
        assert len(loaded.extract(wave)) == -(-(len(wave) // 320) // 2)  # no dedup: one unit per 40 ms
        np.testing.assert_array_equal(loaded.extract(wave), extractor.extract(wave))
    finally:
        del units.FEATURE_KINDS["test-energy"]


def test_train_units_cli(tmp_path, capsys):
    audio = tmp_path / "audio"
    audio.mkdir()
    lines = []
    for i, wave in enumerate(synthetic_waves()):
        sf.write(audio / f"u{i}.wav", wave, 16000)
        lines.append(json.dumps({"id": f"u{i}", "audio": f"audio/u{i}.wav", "text": "x", "speaker": "s",
                                 "duration": len(wave) / 16000}))
    (audio / "broken.wav").write_bytes(b"not audio at all")
    lines.append(json.dumps({"id": "bad", "audio": "audio/broken.wav", "text": "x"}))
    lines.append(json.dumps({"id": "gone", "audio": str(tmp_path / "missing.wav"), "text": "x"}))
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    args = ["data", "train-units", "--manifest", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "u"),
            "--k", "16", "--epochs", "3", "--batch-size", "128", "--seed", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "12 files" in out and "'unreadable': 1" in out and "'missing': 1" in out
    meta = json.loads((tmp_path / "u" / "units.json").read_text())
    assert meta["num_units"] == 16 and meta["fit"]["skipped"] == {"unreadable": 1, "missing": 1}
    first = np.load(tmp_path / "u" / "centroids.npy")
    assert main(args) == 0  # same seed, same codebook
    np.testing.assert_array_equal(np.load(tmp_path / "u" / "centroids.npy"), first)
    assert main(args + ["--rate", "100", "--utterance-cmvn", "--min-run", "3"]) == 0
    loaded = units.UnitExtractor.load(tmp_path / "u")
    assert (loaded.unit_rate, loaded.utterance_cmvn, loaded.min_run) == (100.0, True, 3)


def test_unit_consistency_separates_what_was_said_from_who_said_it():
    from most_jax.eval.unit_consistency import normalised_distance, unit_consistency

    assert normalised_distance([], []) == 0.0
    assert normalised_distance([1, 2, 3], []) == 1.0
    assert normalised_distance([1, 2, 3, 4], [1, 3, 4]) == 0.25
    waves_a, waves_b = synthetic_waves(6, seed=1), synthetic_waves(6, seed=2)
    sentence = {w.tobytes(): i for ws in (waves_a, waves_b) for i, w in enumerate(ws)}
    voice = {w.tobytes(): v for v, ws in enumerate((waves_a, waves_b)) for w in ws}
    # units that spell the sentence whoever speaks it, and units that only tell the voice apart
    content = unit_consistency(lambda w: [sentence[w.tobytes()]] * 3 + [7], waves_a, waves_b)
    speaker = unit_consistency(lambda w: [voice[w.tobytes()]] * 4, waves_a, waves_b)
    assert content["same"] == 0.0 and content["different"] == 0.75 and content["same_over_different"] == 0.0
    assert speaker["same"] == speaker["different"] == 1.0 and speaker["same_over_different"] == 1.0
    with pytest.raises(ValueError, match="at least 2"):
        unit_consistency(lambda w: [0], waves_a[:1], waves_b[:1])


def test_eval_units_cli(fitted, tmp_path, capsys):
    from cli_check import cli_error

    fitted.save(tmp_path / "u")
    assert main(["eval", "units", str(tmp_path / "u"), "--sentences", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    r = result["extractors"][str(tmp_path / "u")]
    assert result["voices"] == ["en-us", "en-gb-x-rp"] and r["sentences"] == 3
    assert 0 <= r["same"] <= 1 and 0 < r["different"] <= 1 and r["units_per_second"] > 0
    cli_error(["eval", "units", str(tmp_path / "u"), "--voices", "en-us"], "exactly two voices")
    cli_error(["eval", "units", str(tmp_path / "nothing")], "not a unit extractor")
