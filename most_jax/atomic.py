"""Outputs that appear whole or not at all.

Every file or directory a command produces is first written under a temporary sibling name and
moved into place only when complete, so an interrupted run never leaves something that looks
finished, and a failed run loses nothing that was already there. A run killed outright (SIGKILL,
out of memory) cannot clean up after itself; the checkpoint converters name their temporary
directory after their PID (`partial_directory`), so the next run into the same output can tell
which leftovers are dead and remove them. Writers that skip syncing file by file make the whole
tree durable in one pass (`sync_tree`) before the rename, and the rename itself durable after it
(`sync_directory` of the parent).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator


@contextlib.contextmanager
def atomic_directory(out_dir: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yields an empty temporary directory beside `out_dir`; on success it becomes `out_dir`.

    An existing `out_dir` is an error unless `overwrite`; then it is swapped out and deleted only
    after the new one is in place. On any exception the temporary directory is removed.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists (pass --overwrite to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path` (same suffix) to write; on success it replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def sync_tree(root: str | os.PathLike) -> None:
    """fsyncs every file and directory under `root` (root included), each directory after its
    contents, so that what `root` holds is on the disk before it is renamed into place."""
    for directory, _, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                _fsync(path, os.O_RDONLY)
        sync_directory(directory)


def sync_directory(path: str | os.PathLike) -> None:
    """fsyncs a directory: its entries (files created, renamed or removed in it) become durable."""
    _fsync(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync(path: str | os.PathLike, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Orbax saves into a sibling of the directory it is given and renames it when done.
_ORBAX_TMP_SUFFIX = ".orbax-checkpoint-tmp"


def partial_directory(out_dir: str | os.PathLike, say: Callable[[str], None] | None = None) -> Path:
    """The path `.NAME.partial-PID` beside `out_dir` (not created) in which this process builds
    `out_dir` before renaming it into place.

    First removes what earlier runs into the same `out_dir` left when killed: every
    `.NAME.partial-PID` sibling (and Orbax's `.NAME.partial-PID.orbax-checkpoint-tmp...`) whose PID
    is no longer running, or is this process; `say` (default: print to stderr) reports each removal. A partial whose PID is
    alive belongs to a run still going and is left alone. PIDs are this machine's: runs on other
    hosts writing the same output on a shared filesystem are not told apart.
    """
    out_dir = Path(out_dir)
    pattern = re.compile(rf"\.{re.escape(out_dir.name)}\.partial-(\d+)(?:{re.escape(_ORBAX_TMP_SUFFIX)}.*)?")
    if out_dir.parent.is_dir():
        for sibling in sorted(out_dir.parent.iterdir()):
            match = pattern.fullmatch(sibling.name)
            if match and sibling.is_dir() and not sibling.is_symlink() and not _running(int(match.group(1))):
                shutil.rmtree(sibling)
                (say or _to_stderr)(f"removed {sibling}: left by an interrupted run (process {match.group(1)} is gone)")
    return out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")


def _running(pid: int) -> bool:
    """Whether another process with this PID exists (this process does not count)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
