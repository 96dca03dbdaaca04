"""JSONL speech manifests: one `{"id", "audio", "text", "speaker", "duration"}` object per line.

`audio` is a path relative to the directory holding the manifest (what `most data synth` writes),
or an absolute path; `resolve_audio_path` turns either into a usable path. `duration` is in seconds
at the audio's own rate.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

MANIFEST_FIELDS = ("id", "audio", "text", "speaker", "duration")


class ManifestError(ValueError):
    """A manifest line is not a JSON object with string `id` and `audio` fields."""


def resolve_audio_path(manifest_path: str | os.PathLike, audio: str) -> Path:
    audio_path = Path(audio)
    return audio_path if audio_path.is_absolute() else Path(manifest_path).resolve().parent / audio_path


def json_lines(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, object) of each non-blank line of a JSONL file; raises ManifestError naming
    file:line for a line that is not a JSON object."""
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ManifestError(f"{path}:{line_no}: not a JSON object ({exc})") from exc
            if not isinstance(entry, dict):
                raise ManifestError(f"{path}:{line_no}: expected a JSON object, got {type(entry).__name__}")
            yield line_no, entry


def read_manifest(path: str | os.PathLike) -> list[dict]:
    """All entries, with `audio` resolved to an absolute path; raises ManifestError naming file:line.

    Only `id` and `audio` are checked here: what to do about a missing or bad transcript is the
    caller's policy."""
    entries = []
    for line_no, entry in json_lines(path):
        for field in ("id", "audio"):
            if not isinstance(entry.get(field), str) or not entry[field]:
                raise ManifestError(f"{path}:{line_no}: field {field!r} must be a non-empty string")
        entries.append(entry | {"audio": str(resolve_audio_path(path, entry["audio"]))})
    return entries


def write_manifest(path: str | os.PathLike, entries: list[dict]) -> None:
    """One compact JSON object per line, fields in MANIFEST_FIELDS order (stable bytes for a given input)."""
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for entry in entries:
            ordered = {k: entry[k] for k in MANIFEST_FIELDS if k in entry}
            ordered |= {k: entry[k] for k in sorted(entry) if k not in ordered}
            handle.write(json.dumps(ordered, ensure_ascii=False) + "\n")
