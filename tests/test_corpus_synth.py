"""`most data synth`: manifests, disjoint splits, 16 kHz audio, byte-identical reruns."""

import hashlib
import json

import numpy as np
import pytest
import soundfile as sf

from cli_check import cli_error
from most_jax.cli import main
from most_jax.corpus import synth
from most_jax.speech.manifest import read_manifest


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    # 20 utterances in two blocks: the blocks render in separate fresh processes.
    synth.BLOCK_SIZE, block = 12, synth.BLOCK_SIZE
    try:
        assert main(["data", "synth", str(root / "a"), "--num", "20", "--seed", "5", "--workers", "2",
                     "--test-fraction", "0.1", "--text-lm", "40"]) == 0
        assert main(["data", "synth", str(root / "b"), "--num", "20", "--seed", "5", "--workers", "1",
                     "--test-fraction", "0.1", "--text-lm", "40"]) == 0
    finally:
        synth.BLOCK_SIZE = block
    return root


def test_corpus_plan_is_pinned_for_seed_0():
    """Sentences, speakers, rates and eSpeak seeds of a seed-0 plan, pinned before the generator's
    word lists moved to data files."""
    utterances, text_lm = synth.plan_corpus(40, 0, num_text_lm=5)
    assert hashlib.sha256(repr(utterances + [text_lm]).encode()).hexdigest() == \
        "63e30e0d89134167949cfd1f49d8e6032f46c4e4a988c93c4658beb58aa04cd3"


def test_manifests_and_audio_are_identical_across_runs_and_worker_counts(corpus):
    for name in ("train.jsonl", "dev.jsonl", "test.jsonl", "text_lm.txt", "corpus.json"):
        assert (corpus / "a" / name).read_bytes() == (corpus / "b" / name).read_bytes(), name
    for wav in sorted((corpus / "a" / "audio").iterdir()):
        assert wav.read_bytes() == (corpus / "b" / "audio" / wav.name).read_bytes(), wav.name


def test_layout_fields_and_disjoint_splits(corpus):
    out = corpus / "a"
    splits = {s: read_manifest(out / f"{s}.jsonl") for s in ("train", "dev", "test")}
    assert [len(splits[s]) for s in ("train", "dev", "test")] == [17, 1, 2]
    texts = {s: {e["text"] for e in entries} for s, entries in splits.items()}
    text_lm = set((out / "text_lm.txt").read_text().splitlines())
    assert len(text_lm) == 40
    groups = [texts["train"], texts["dev"], texts["test"], text_lm]
    assert sum(map(len, groups)) == len(set().union(*groups))  # pairwise disjoint
    raw = json.loads((out / "train.jsonl").read_text().splitlines()[0])
    assert list(raw) == ["id", "audio", "text", "speaker", "duration"]
    assert raw["audio"] == f"audio/{raw['id']}.wav"  # relative to the manifest's directory
    speakers = {e["speaker"] for entries in splits.values() for e in entries}
    assert len(speakers) > 3
    for entry in splits["train"][:5]:
        wave, rate = sf.read(entry["audio"], dtype="float32")
        assert rate == 16000 and wave.ndim == 1
        assert entry["duration"] == pytest.approx(len(wave) / 16000, abs=1e-4)
        assert 0.5 < entry["duration"] < 15 and np.abs(wave).max() > 0.05
    info = json.loads((out / "corpus.json").read_text())
    assert info["utterances"] == {"train": 17, "dev": 1, "test": 2} and info["seed"] == 5


def test_refuses_to_overwrite_and_leaves_no_temporary_directory(corpus):
    with pytest.raises(FileExistsError, match="already exists"):
        synth.synthesize_corpus(corpus / "a", 3, seed=5)
    assert sorted(p.name for p in corpus.iterdir()) == ["a", "b"]


def test_plan_depends_on_seed():
    first, _ = synth.plan_corpus(30, seed=1)
    again, _ = synth.plan_corpus(30, seed=1)
    other, _ = synth.plan_corpus(30, seed=2)
    assert first == again and [u.text for u in first] != [u.text for u in other]
    with pytest.raises(ValueError, match="--num"):
        synth.plan_corpus(0, seed=1)


def test_overwrite_swaps_in_the_new_corpus(tmp_path):
    synth.synthesize_corpus(tmp_path / "c", 3, seed=1, num_text_lm=2, log=lambda message: None)
    synth.synthesize_corpus(tmp_path / "c", 4, seed=2, num_text_lm=2, overwrite=True, log=lambda message: None)
    assert [p.name for p in tmp_path.iterdir()] == ["c"]
    assert json.loads((tmp_path / "c" / "corpus.json").read_text())["seed"] == 2
    assert len(list((tmp_path / "c" / "audio").iterdir())) == 4


def test_speaker_set_and_vocabulary_limit_choose_who_speaks_what():
    chosen = synth.SpeakerSet(voices=("en-us", "en+f5"), pitches=(50,), rate_wpm=(150, 160))
    utterances, text_lm = synth.plan_corpus(60, seed=1, num_text_lm=30, speaker_set=chosen, vocabulary_limit=500)
    assert {u.speaker.name for u in utterances} == {"en-us-p50", "en+f5-p50"}
    assert all(150 <= u.rate <= 160 for u in utterances)
    allowed = synth.sentences.frequent_words(500)
    assert all(allowed.issuperset(text.split()) for text in [u.text for u in utterances] + text_lm)


@pytest.mark.parametrize("args, culprit", [
    (dict(voices=()), "voices"), (dict(voices=("en-us", "en-us")), "voices"), (dict(pitches=(120,)), "pitches"),
    (dict(rate_wpm=(200, 150)), "rate_wpm"), (dict(rate_wpm=(50, 150)), "rate_wpm"),
    (dict(rate_wpm=(150, 160, 170)), "rate_wpm")])
def test_bad_speaker_sets_are_refused_by_name(args, culprit):
    with pytest.raises(ValueError, match=culprit):
        synth.SpeakerSet(**args)


def test_cli_names_a_bad_speaker_option(tmp_path):
    cli_error(["data", "synth", str(tmp_path / "c"), "--num", "4", "--pitches", "50,50"], "pitches")
    assert not (tmp_path / "c").exists()
