"""`most data prepare`: good records all come out, bad inputs are counted by reason, output is atomic."""

import json

import numpy as np
import pytest
import soundfile as sf

from cli_check import cli_error
from most_jax.data import records as rec
from most_jax.data.prepare import PrepareError, PrepareOptions, manifest_items, prepare, text_items
from most_jax.data.tasks import TEMPLATE_TEXTS
from most_jax.data.tokenizers import load_tokenizer, train_sentencepiece
from most_jax.speech.audio import load_audio
from most_jax.speech.kmeans import KMeansOptions
from most_jax.corpus.synth import synthesize_corpus
from most_jax.speech.units import UnitExtractor, build_features


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A few eSpeak utterances, a tokenizer trained on their text and 16 units fitted on their audio."""
    root = tmp_path_factory.mktemp("prep")
    synthesize_corpus(root / "corpus", num=10, seed=0, num_text_lm=200, log=lambda message: None)
    entries = [json.loads(line) for line in (root / "corpus" / "train.jsonl").read_text().splitlines()]
    train_sentencepiece([root / "corpus" / "text_lm.txt"], root / "tok", 400, extra_lines=TEMPLATE_TEXTS)
    waves = [load_audio(root / "corpus" / e["audio"])[0] for e in entries]
    units = UnitExtractor.fit(waves, build_features("mfcc"), options=KMeansOptions(num_clusters=16, epochs=2))
    units.save(root / "units")
    return root, entries


def _bad_and_odd_inputs(root, entries):
    """A manifest mixing the good utterances with every kind of bad or odd input; -> (path, good ids)."""
    d = root / "odd"
    d.mkdir()
    wave, sr = sf.read(root / "corpus" / entries[0]["audio"], dtype="float32")
    sf.write(d / "stereo.wav", np.stack([wave, 0.5 * wave], axis=1), sr)
    sf.write(d / "rate8k.flac", wave[::2], 8000)
    sf.write(d / "rate44k.wav", np.repeat(wave, 3)[: int(len(wave) * 44100 / 16000)], 44100)
    (d / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage that is not audio" * 10)
    (d / "empty.wav").write_bytes(b"")
    full = (root / "corpus" / entries[1]["audio"]).read_bytes()
    (d / "truncated.wav").write_bytes(full[: len(full) // 2])
    sf.write(d / "long.wav", np.zeros(16000 * 31, np.float32), 16000)
    lines = [json.dumps({"id": e["id"], "audio": f"corpus/{e['audio']}", "text": e["text"]}).encode() for e in entries]
    text = entries[0]["text"]
    odd = {"stereo": "stereo.wav", "rate8k": "rate8k.flac", "rate44k": "rate44k.wav"}
    lines += [json.dumps({"id": k, "audio": f"odd/{v}", "text": text}).encode() for k, v in odd.items()]
    bad = [("corrupt", "corrupt.wav", text), ("empty", "empty.wav", text), ("truncated", "truncated.wav", text),
           ("missing", "nowhere.wav", text), ("long", "long.wav", text), ("notext", "stereo.wav", None),
           ("blank", "stereo.wav", "   "), ("surrogate", "stereo.wav", "bad \udcff text")]
    lines += [json.dumps({"id": k, "audio": f"odd/{v}", **({} if t is None else {"text": t})}).encode()
              for k, v, t in bad]
    lines.append(b'{"id": "latin1", "audio": "odd/stereo.wav", "text": "caf\xe9"}')
    lines.append(b"{not json")
    lines.append(json.dumps({"id": "qa", "prompt": {"audio": "odd/stereo.wav"},
                             "response": {"text": "Near the river."}}).encode())
    manifest = root / "mixed.jsonl"
    manifest.write_bytes(b"\n".join(lines) + b"\n")
    good = sorted([e["id"] for e in entries] + list(odd))
    return manifest, good


def _read_all(directory, kind):
    from array_record.python.array_record_module import ArrayRecordReader

    out = []
    for path in rec.shard_paths(directory, kind):
        reader = ArrayRecordReader(str(path))
        out += [rec.decode_record(b) for b in reader.read_all()]
        reader.close()
    return out


def test_prepare_keeps_good_records_and_counts_bad_ones(corpus, tmp_path):
    root, entries = corpus
    manifest, good = _bad_and_odd_inputs(root, entries)
    text_file = tmp_path / "lm.txt"
    text_file.write_bytes(b"The dog runs.\nA second line.\n\xff\xfe broken\n")
    options = PrepareOptions(str(root / "tok"), str(root / "units"), max_audio_seconds=30.0, num_shards=2)
    out = tmp_path / "prepared"
    report = prepare(manifest_items(manifest) + text_items(text_file), out, options, progress=None)

    assert report["skipped"] == {"audio_empty": 1, "audio_missing": 1, "audio_truncated": 1, "audio_unreadable": 1,
                                 "bad_manifest_line": 1, "missing_transcript": 2, "non_utf8_transcript": 3,
                                 "over_length": 1}
    # stereo and the qa prompt (same file) are downmixed; 8 kHz and 44.1 kHz resampled.
    assert report["repaired"] == {"downmixed": 2, "resampled": 2}
    assert report["records_by_kind"] == {"pair": len(good), "spoken_qa_text": 1, "text": 2}
    assert report["records_written"] == len(good) + 3
    pairs = _read_all(out, "pair")
    assert sorted(r.id for r in pairs) == good
    # Content: transcript tokens and the units of the (downmixed) audio.
    tok = load_tokenizer(out / rec.TOKENIZER_DIR)
    extractor = UnitExtractor.load(root / "units")
    first = next(r for r in pairs if r.id == entries[0]["id"])
    assert tok.decode(first.arrays["text"]) == entries[0]["text"]
    wave, _ = load_audio(root / "corpus" / entries[0]["audio"])
    np.testing.assert_array_equal(first.arrays["units"], extractor.extract(wave))
    hours = sum(r.seconds for r in pairs) / 3600 + _read_all(out, "spoken_qa_text")[0].seconds / 3600
    assert report["hours"] == pytest.approx(hours)
    assert 5 < report["units_per_second"] < 50
    assert json.loads((out / rec.REPORT_FILE).read_text()) == report
    assert not list(tmp_path.glob(".prepared.tmp-*"))


def test_prepare_failure_leaves_no_output(corpus, tmp_path):
    root, entries = corpus
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "audio": str(root / "corpus" / entries[0]["audio"]), "text": "x"}))
    with pytest.raises(PrepareError, match="no unit extractor"):
        prepare(manifest_items(manifest), tmp_path / "out", PrepareOptions(str(root / "tok")), progress=None)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))
    (tmp_path / "out").mkdir()
    with pytest.raises(PrepareError, match="already exists"):
        prepare(manifest_items(manifest), tmp_path / "out", PrepareOptions(str(root / "tok")), progress=None)


def test_cli_two_workers_match_one_and_inspect_shows_masks(corpus, tmp_path, capsys):
    from most_jax.cli import main

    root, entries = corpus
    manifest = root / "corpus" / "train.jsonl"
    common = ["data", "prepare", "--manifest", str(manifest), "--tokenizer", str(root / "tok"), "--units",
              str(root / "units")]
    assert main(common + ["--out", str(tmp_path / "one"), "--workers", "1"]) == 0
    assert main(common + ["--out", str(tmp_path / "two"), "--workers", "2"]) == 0
    one, two = _read_all(tmp_path / "one", "pair"), _read_all(tmp_path / "two", "pair")
    assert [r.id for r in one] == [r.id for r in two] == [e["id"] for e in entries]
    for a, b in zip(one, two):
        assert a.arrays.keys() == b.arrays.keys()
        for k in a.arrays:
            np.testing.assert_array_equal(a.arrays[k], b.arrays[k])
    capsys.readouterr()
    assert main(["data", "inspect", str(tmp_path / "one"), "--examples", "1"]) == 0
    out = capsys.readouterr().out
    assert f"== asr: {len(entries)} 'pair' records" in out
    assert "modality= 1 loss=0  <begin_of_audio>" in out  # ASR: audio in the prompt, no loss
    assert "modality= 1 loss=1  <begin_of_audio>" in out  # TTS: audio in the response, loss
    assert f"modality= 0 loss=1  {entries[0]['text']!r}" in out


def test_cli_train_tokenizer(corpus, tmp_path, capsys):
    from most_jax.cli import main

    root, _ = corpus
    assert main(["data", "train-tokenizer", "--text", str(root / "corpus" / "text_lm.txt"), "--out",
                 str(tmp_path / "tok"), "--vocab-size", "350"]) == 0
    assert "350 pieces" in capsys.readouterr().out
    assert load_tokenizer(tmp_path / "tok").text_size == 350
    cli_error(["data", "train-tokenizer", "--text", str(root / "corpus" / "text_lm.txt"), "--out",
               str(tmp_path / "t2"), "--vocab-size", "100"],
              "vocab_size must be >= 300")
