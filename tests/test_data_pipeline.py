"""Grain pipeline: packing equals the separate sequences, efficiency, mixture, determinism, resume,
per-process disjoint sharding."""

from collections import Counter

import numpy as np
import pytest
from data_corpus import make_prepared, make_tokenizer

from most_jax.config import DataConfig, MixtureConfig
from most_jax.data import records as rec
from most_jax.data.pipeline import (FIELDS, PipelineError, PreparedData, build_dataset, format_record,
                                    training_columns)
from most_jax.data.tasks import TASK_IDS, TASKS

SEQ_LEN = 256


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    return PreparedData(make_prepared(root / "prepared", make_tokenizer(root / "tok")))


def _cfg(**kw):
    base = dict(records="unused", seq_len=SEQ_LEN, batch_size=4, seed=3, packing_bins=16)
    return DataConfig(**{**base, **kw})


def _take(ds_or_it, n):
    it = iter(ds_or_it)
    return [next(it) for _ in range(n)]


def _all_examples(data):
    """Every (task, record) training sequence as a tuple of its token ids, for lookup."""
    out = {}
    for task in TASKS:
        from most_jax.data.pipeline import TASK_KIND
        source = data.source(TASK_KIND[task])
        for i in range(len(source)):
            cols = training_columns(format_record(data.formatter, task, rec.decode_record(source[i])),
                                    data.layout.pad_id)
            out.setdefault(tuple(cols[:, 0]), []).append(cols)
    return out


def test_packed_segments_equal_the_sequences(data):
    batch = _take(build_dataset(_cfg(), data, process_index=0, process_count=1), 1)[0]
    assert set(batch) == set(FIELDS) | {"segment_ids", "positions"}
    for value in batch.values():
        assert value.shape == (4, SEQ_LEN) and value.dtype == np.int32
    known = _all_examples(data)
    for row in range(4):
        seg = batch["segment_ids"][row]
        ids = [s for s in np.unique(seg) if s > 0]
        assert ids == list(range(1, len(ids) + 1))
        for s in ids:
            where = np.flatnonzero(seg == s)
            assert (np.diff(where) == 1).all()  # contiguous
            np.testing.assert_array_equal(batch["positions"][row, where], np.arange(len(where)))
            cols = np.stack([batch[f][row, where] for f in FIELDS], axis=1)
            candidates = known[tuple(cols[:, 0])]
            assert any((cols == c).all() for c in candidates)
            # Within a segment the targets are the next tokens; the last one predicts nothing.
            np.testing.assert_array_equal(cols[:-1, 1], cols[1:, 0])
            assert cols[-1, 2] == 0
        pad = seg == 0
        assert (batch["loss_mask"][row, pad] == 0).all() and (batch["modality"][row, pad] == -1).all()
        assert (batch["task"][row, pad] == -1).all() and (batch["positions"][row, pad] == 0).all()


def test_packing_efficiency(data):
    batches = _take(build_dataset(_cfg(seq_len=1024, packing_bins=32), data, process_index=0, process_count=1), 8)
    nonpad = np.mean([(b["segment_ids"] > 0).mean() for b in batches])
    assert nonpad >= 0.95, nonpad


def test_mixture_follows_weights(data):
    cfg = _cfg(mixture=MixtureConfig(asr=0.5, tts=0.25, text_lm=0.25))
    counts = Counter()
    for b in _take(build_dataset(cfg, data, process_index=0, process_count=1), 30):
        starts = b["positions"] == 0
        counts.update(b["task"][starts & (b["segment_ids"] > 0)].tolist())
    total = sum(counts.values())
    assert set(counts) == {TASK_IDS["asr"], TASK_IDS["tts"], TASK_IDS["text_lm"]}
    assert abs(counts[TASK_IDS["asr"]] / total - 0.5) < 0.1
    assert abs(counts[TASK_IDS["text_lm"]] / total - 0.25) < 0.1


def test_every_task_runs(data):
    mixture = MixtureConfig(**{t: 1.0 for t in TASKS})
    batches = _take(build_dataset(_cfg(mixture=mixture), data, process_index=0, process_count=1), 6)
    seen = set(np.concatenate([b["task"].ravel() for b in batches]).tolist()) - {-1}
    assert seen == set(TASK_IDS.values())


def test_same_seed_same_stream_other_seed_differs(data):
    a = _take(build_dataset(_cfg(), data, process_index=0, process_count=1), 5)
    b = _take(build_dataset(_cfg(), data, process_index=0, process_count=1), 5)
    c = _take(build_dataset(_cfg(seed=4), data, process_index=0, process_count=1), 5)
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert not all(np.array_equal(x["tokens"], z["tokens"]) for x, z in zip(a, c))


def test_resume_from_saved_state_continues_identically(data):
    ds = build_dataset(_cfg(), data, process_index=0, process_count=1)
    it = iter(ds)
    _take(it, 3)
    state = it.get_state()
    expected = _take(it, 4)
    fresh = iter(build_dataset(_cfg(), data, process_index=0, process_count=1))
    fresh.set_state(state)
    for x, y in zip(expected, _take(fresh, 4)):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_processes_read_disjoint_records(data):
    cfg = _cfg(batch_size=4, mixture=MixtureConfig(asr=1.0, tts=0.0, text_lm=0.0))

    def first_segments(index):
        seen = set()
        for b in _take(build_dataset(cfg, data, process_index=index, process_count=2), 14):
            for row in range(b["tokens"].shape[0]):
                for s in set(b["segment_ids"][row].tolist()) - {0}:
                    seen.add(tuple(b["tokens"][row, b["segment_ids"][row] == s]))
        return seen

    zero, one = first_segments(0), first_segments(1)
    assert zero and one and not zero & one
    # Together the two processes cover all 60 pair records (each ASR sequence is unique).
    assert len(zero | one) == data.num_records("pair")


def test_worker_processes_resume_identically(data):
    cfg = _cfg(num_workers=2, mixture=MixtureConfig(asr=1.0, tts=1.0, text_lm=0.0))
    it = iter(build_dataset(cfg, data, process_index=0, process_count=1))
    first = _take(it, 2)
    state = it.get_state()
    expected = _take(it, 2)
    it.set_state(state)  # rewinding the same iterator (a fresh one would start two more workers)
    for x, y in zip(expected, _take(it, 2)):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert all((b["segment_ids"] > 0).mean() > 0.5 for b in first + expected)


def test_bad_records_and_long_sequences_are_dropped(tmp_path, data):
    import shutil

    from most_jax.data.prepare import ShardWriter

    bad = tmp_path / "bad"
    shutil.copytree(data.directory, bad)
    for p in rec.shard_paths(bad, "text"):
        p.unlink()
    writer = ShardWriter(bad, 1)
    good = rec.Record("ok", "text", {"text": data.tokenizer.encode("The dog.")})
    writer.write("text", b"garbage without a header")
    writer.write("text", rec.encode_record(rec.Record("long", "text", {"text": np.ones(SEQ_LEN, np.int32)})))
    for _ in range(30):
        writer.write("text", rec.encode_record(good))
    writer.close()
    cfg = _cfg(batch_size=1, mixture=MixtureConfig(asr=0.0, tts=0.0, text_lm=1.0))
    expected = data.formatter.text_lm(good.arrays["text"]).tokens
    for batch in _take(build_dataset(cfg, PreparedData(bad), process_index=0, process_count=1), 2):
        seg = batch["segment_ids"][0]
        assert seg.max() > 1
        for s in range(1, seg.max() + 1):
            np.testing.assert_array_equal(batch["tokens"][0, seg == s], expected)


def test_configuration_errors_name_the_field(data, tmp_path):
    with pytest.raises(PipelineError, match="batch_size"):
        build_dataset(_cfg(batch_size=3), data, process_index=0, process_count=2)
    with pytest.raises(PipelineError, match="no layout.json"):
        PreparedData(tmp_path)


def test_bench_data_cli(data, capsys):
    from most_jax.cli import main

    assert main(["bench", "data", "--records", str(data.directory), "--seconds", "0.5", "--set", "data.seq_len=512",
                 "--set", "data.batch_size=2"]) == 0
    out = capsys.readouterr().out
    assert "packed tokens/s per process" in out
    efficiency = float(out.split("packing efficiency ")[1].split("%")[0])
    assert 90.0 <= efficiency <= 100.0
