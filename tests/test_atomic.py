"""Atomic outputs: complete or absent, never half-written; existing outputs survive failures."""

import os
import subprocess
import sys

import numpy as np
import pytest

from most_jax.atomic import atomic_directory, atomic_file, partial_directory
from most_jax.checkpoint.hf_export import write_hf_dir
from most_jax.checkpoint.safetensors_file import TensorSpec


def test_directory_appears_only_on_success(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_directory(out) as tmp:
            (tmp / "a").write_text("partial")
            raise RuntimeError("interrupted")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with atomic_directory(out) as tmp:
        (tmp / "a").write_text("done")
    assert (out / "a").read_text() == "done"


def test_directory_overwrite_rules(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("kept")
    with pytest.raises(FileExistsError):
        with atomic_directory(out):
            pass
    with pytest.raises(RuntimeError):
        with atomic_directory(out, overwrite=True):
            raise RuntimeError("failed replacement")
    assert (out / "old").read_text() == "kept"  # a failed replacement loses nothing
    with atomic_directory(out, overwrite=True) as tmp:
        (tmp / "new").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in out.iterdir()] == ["new"]


def test_file_replaced_only_on_success(tmp_path):
    path = tmp_path / "result.txt"
    path.write_text("before")
    with pytest.raises(RuntimeError):
        with atomic_file(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert path.read_text() == "before" and sorted(p.name for p in tmp_path.iterdir()) == ["result.txt"]
    with atomic_file(path) as tmp:
        assert tmp.suffix == ".txt" and tmp.parent == tmp_path
        tmp.write_text("after")
    assert path.read_text() == "after"


def test_whole_file_writers_keep_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
    """The demo's JSON files, the loss curves and the truncated metrics log go through atomic_file."""
    import matplotlib.figure

    from most_jax.demo import write_json
    from most_jax.train import metrics
    from most_jax.train.curves import plot_losses

    summary = tmp_path / "summary.json"
    summary.write_text("old")
    with pytest.raises(TypeError):
        write_json(summary, {"wer": 0.5, "bad": object()})  # json gives up half way through
    png = tmp_path / "curves.png"
    png.write_bytes(b"old")

    def torn_savefig(self, target, **kwargs):
        open(target, "wb").write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", torn_savefig)
    with pytest.raises(OSError, match="disk full"):
        plot_losses([{"step": 1, "loss": 2.0}], png)
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\n{"ste')
    monkeypatch.setattr(metrics, "atomic_file", _failing_after_write(metrics.atomic_file))
    with pytest.raises(RuntimeError, match="killed"):
        metrics._truncate_jsonl(log, 1)
    assert summary.read_text() == "old" and png.read_bytes() == b"old"
    assert log.read_text() == '{"step": 1}\n{"step": 2}\n{"ste'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "metrics.jsonl", "summary.json"]
    monkeypatch.undo()
    metrics._truncate_jsonl(log, 1)
    write_json(summary, {"wer": 0.5})
    assert log.read_text() == '{"step": 1}\n' and summary.read_text() == '{\n "wer": 0.5\n}\n'


def _failing_after_write(atomic):
    """atomic_file, interrupted after its body wrote the temporary file and before the rename."""
    import contextlib

    @contextlib.contextmanager
    def wrapped(path):
        with atomic(path) as tmp:
            yield tmp
            assert tmp.stat().st_size > 0
            raise RuntimeError("killed before the rename")

    return wrapped


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_partials_of_the_same_output_are_removed_live_ones_kept(tmp_path):
    dead = _dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = [f".ck.partial-{dead}", f".ck.partial-{dead}.orbax-checkpoint-tmp", f".ck.partial-{os.getpid()}"]
        kept = [f".ck.partial-{live.pid}", f".ck.partial-{live.pid}.orbax-checkpoint-tmp",  # a run still going
                f".other.partial-{dead}", f".ck.partial-{dead}x", ".ck.partial-", f"ck.partial-{dead}",
                f".ck.tmp-{dead}", "ck"]
        for name in stale + kept:
            (tmp_path / name).mkdir()
            (tmp_path / name / "shard").write_text("data")
        said = []
        partial = partial_directory(tmp_path / "ck", said.append)
        assert partial == tmp_path / f".ck.partial-{os.getpid()}" and not partial.exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
        assert len(said) == 3 and all("interrupted" in m for m in said)
        assert any(f".ck.partial-{dead}.orbax-checkpoint-tmp" in m and str(dead) in m for m in said)
    finally:
        live.kill()
        live.wait()


def test_a_file_named_like_a_partial_is_not_touched(tmp_path):
    (tmp_path / f".ck.partial-{_dead_pid()}").write_text("not ours")
    partial_directory(tmp_path / "ck", pytest.fail)
    assert len(list(tmp_path.iterdir())) == 1


def test_export_after_a_killed_export_cleans_up_and_says_so(tmp_path):
    stale = tmp_path / f".out.partial-{_dead_pid()}"
    stale.mkdir()
    (stale / "model-00001-of-00002.safetensors").write_bytes(b"\0" * 100)
    specs = [TensorSpec("w", np.dtype(np.float32), (2, 3))]
    said = []
    write_hf_dir(tmp_path / "out", specs, lambda i: np.ones((2, 3), np.float32), {"model_type": "x"}, 10**9,
                 said.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert said[0] == f"removed {stale}: left by an interrupted run (process {stale.name.rsplit('-', 1)[1]} is gone)"
