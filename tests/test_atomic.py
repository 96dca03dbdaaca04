"""Atomic outputs: complete or absent, never half-written; existing outputs survive failures."""

import pytest

from most_jax.atomic import atomic_directory, atomic_file


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
