"""TFDS: the built-in corpus builder's features, and `prepare --tfds` through TFDS's mock data."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from most_jax.data import records as rec
from most_jax.data.prepare import PrepareError, PrepareOptions, prepare, tfds_items
from most_jax.data.tfds_builder import MostSpeech
from most_jax.speech.units import UnitExtractor, build_features


def test_builder_registers_with_array_record_features(tmp_path):
    builder = tfds.builder("most_speech/tiny", data_dir=tmp_path)
    assert isinstance(builder, MostSpeech)
    features = builder.info.features
    assert set(features.keys()) == {"id", "audio", "text", "speaker", "duration"}
    assert features["audio"].np_dtype == np.int16 and features["audio"].shape == (None,)
    assert builder.info.file_format.value == "array_record"  # what tfds.data_source reads


@pytest.fixture(scope="module")
def tools(tmp_path_factory):
    from data_corpus import make_tokenizer

    root = tmp_path_factory.mktemp("tfds")
    # A codebook of 8 random centroids: these tests are about the TFDS path, not unit quality
    # (and fitting k-means would compile JAX code for seconds).
    features = build_features("mfcc")
    shell = UnitExtractor(features, 25.0, "stack", True, np.zeros(0), np.ones(0), np.zeros((0, 0)))
    dims = features.dim * shell.frames_per_unit
    rng = np.random.default_rng(0)
    UnitExtractor(features, 25.0, "stack", True, np.zeros(dims, np.float32), np.ones(dims, np.float32),
                  rng.normal(size=(8, dims)).astype(np.float32)).save(root / "units")
    return make_tokenizer(root / "tok"), root / "units"


def test_prepare_from_mocked_tfds_split(tools, tmp_path):
    """TFDS's mock data with chosen examples: good ones written, stereo downmixed, bad ones counted."""
    tok_dir, units_dir = tools
    rng = np.random.default_rng(1)

    def pcm(*shape):
        return (rng.normal(0, 3000, shape)).astype(np.int16)

    examples = [
        {"id": b"good-0", "audio": pcm(16000), "text": b"The dog runs."},
        {"id": b"good-1", "audio": pcm(24000), "text": b"A red bird."},
        {"id": b"stereo", "audio": pcm(16000, 2), "text": b"The cat."},
        {"id": b"empty", "audio": np.zeros(0, np.int16), "text": b"Nothing."},
        {"id": b"latin1", "audio": pcm(16000), "text": b"caf\xe9"},
        {"id": b"blank", "audio": pcm(16000), "text": b"  "},
    ]

    def as_data_source(builder, split, **kwargs):
        assert split == "train"
        return examples

    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, as_data_source_fn=as_data_source):
        items = list(tfds_items("most_speech/tiny:train", data_dir=str(tmp_path / "tfds")))
    assert [i.payload[0] for i in items] == [e["id"].decode() for e in examples]
    report = prepare(items, tmp_path / "out", PrepareOptions(str(tok_dir), str(units_dir)), progress=None)
    assert report["skipped"] == {"audio_empty": 1, "missing_transcript": 1, "non_utf8_transcript": 1}
    assert report["repaired"] == {"downmixed": 1}
    from array_record.python.array_record_module import ArrayRecordReader

    written = [rec.decode_record(b) for p in rec.shard_paths(tmp_path / "out", "pair")
               for b in ArrayRecordReader(str(p)).read_all()]
    assert sorted(r.id for r in written) == ["good-0", "good-1", "stereo"]
    assert report["hours"] == pytest.approx((1 + 1.5 + 1) / 3600)


def test_prepare_survives_random_mock_examples(tools, tmp_path):
    tok_dir, units_dir = tools
    with tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE):
        items = list(tfds_items("most_speech/tiny:train", data_dir=str(tmp_path / "tfds")))
    report = prepare(items, tmp_path / "out", PrepareOptions(str(tok_dir), str(units_dir)), progress=None)
    assert report["records_written"] + sum(report["skipped"].values()) == 5


def test_tfds_errors_name_the_dataset(tmp_path):
    with pytest.raises(PrepareError, match="no_such_dataset"):
        next(tfds_items("no_such_dataset:train", data_dir=str(tmp_path)))
