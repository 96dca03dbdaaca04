"""Reading spoken pair sets for audio-LM scoring (eval/audio_lm.py).

Two layouts:

* the project's JSONL (what `most data audio-lm-pairs` writes): one pair per line,
  {"id", "category", "real": ITEM, "fake": ITEM}, an ITEM holding "units" (unit ids 0..K-1) and/or
  "audio" (a path, relative to the file's directory; its units are then extracted), and "text";
* a ZeroSpeech 2021 lexical or syntactic set: a directory with gold.csv and the .wav files it
  names. Its columns used: filename (without .wav), id (the pair: rows sharing an id, and voice
  where that column exists, are one pair), correct (1 the real item, 0 the fake), and the
  category: `type` where it exists (sBLIMP's phenomena), else the directory's name.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Callable

import numpy as np

from most_jax.eval.audio_lm import SpokenPair
from most_jax.speech.audio import AudioError, load_audio
from most_jax.speech.manifest import resolve_audio_path

GOLD_FILE = "gold.csv"

UnitsOf = Callable[[np.ndarray], np.ndarray]  # 16 kHz waveform -> unit ids


class PairSetError(ValueError):
    """A pair file or ZeroSpeech directory is malformed; names the file, line and field."""


def read_pair_set(path: str | Path, units_of: UnitsOf) -> list[SpokenPair]:
    """The pairs of a JSONL file or a ZeroSpeech directory (see the module docstring)."""
    path = Path(path)
    if path.is_dir():
        return read_zerospeech(path, units_of)
    if not path.is_file():
        raise PairSetError(f"--pairs {path}: no such file or directory")
    return read_jsonl_pairs(path, units_of)


def _audio_units(audio: Path, units_of: UnitsOf, where: str) -> np.ndarray:
    try:
        wave, _ = load_audio(audio)
    except AudioError as e:
        raise PairSetError(f"{where}: {e}") from None
    units = np.asarray(units_of(wave), np.int32)
    if units.size == 0:
        raise PairSetError(f"{where}: {audio} is too short to yield any speech units")
    return units


def _item(path: Path, line: int, side: str, item, units_of: UnitsOf) -> np.ndarray:
    where = f"{path}:{line}: {side}"
    if not isinstance(item, dict) or not ("units" in item or "audio" in item):
        raise PairSetError(f"{where} must be an object with 'units' or 'audio'")
    if "units" in item:
        units = item["units"]
        if not isinstance(units, list) or not units or not all(isinstance(u, int) and u >= 0 for u in units):
            raise PairSetError(f"{where}.units must be a non-empty list of unit ids >= 0")
        return np.asarray(units, np.int32)
    if not isinstance(item["audio"], str):
        raise PairSetError(f"{where}.audio must be a path")
    return _audio_units(resolve_audio_path(path, item["audio"]), units_of, f"{where}.audio")


def read_jsonl_pairs(path: Path, units_of: UnitsOf) -> list[SpokenPair]:
    pairs = []
    with open(path, encoding="utf-8") as handle:
        for line, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw)
            except json.JSONDecodeError as e:
                raise PairSetError(f"{path}:{line}: not JSON ({e.msg})") from None
            if not isinstance(entry, dict):
                raise PairSetError(f"{path}:{line}: expected a JSON object")
            for key in ("id", "category"):
                if not isinstance(entry.get(key), str):
                    raise PairSetError(f"{path}:{line}: needs a string {key!r}")
            pairs.append(SpokenPair(entry["id"], entry["category"],
                                    _item(path, line, "real", entry.get("real"), units_of),
                                    _item(path, line, "fake", entry.get("fake"), units_of)))
    if not pairs:
        raise PairSetError(f"{path}: no pairs")
    return pairs


def read_zerospeech(directory: Path, units_of: UnitsOf) -> list[SpokenPair]:
    gold = directory / GOLD_FILE
    if not gold.is_file():
        raise PairSetError(f"--pairs {directory}: a directory must hold a ZeroSpeech {GOLD_FILE}")
    with open(gold, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"filename", "id", "correct"} - set(reader.fieldnames or ())
        if missing:
            raise PairSetError(f"{gold}: no column(s) {sorted(missing)} (has {reader.fieldnames})")
        rows = list(reader)
    groups: dict[tuple[str, str], dict[str, dict]] = {}
    for line, row in enumerate(rows, 2):
        if row["correct"] not in ("0", "1"):
            raise PairSetError(f"{gold}:{line}: correct must be 0 or 1, got {row['correct']!r}")
        side = "real" if row["correct"] == "1" else "fake"
        key = (row["id"], row.get("voice", ""))
        if side in groups.setdefault(key, {}):
            raise PairSetError(f"{gold}:{line}: pair id {row['id']!r} has two {side} items")
        groups[key][side] = {**row, "line": line}
    pairs = []
    for (pair_id, voice), items in groups.items():
        if len(items) != 2:
            only = next(iter(items.values()))
            raise PairSetError(f"{gold}:{only['line']}: pair id {pair_id!r} has no "
                               f"{'fake' if 'real' in items else 'real'} item")
        units = {side: _audio_units(directory / f"{item['filename']}.wav", units_of, f"{gold}:{item['line']}")
                 for side, item in items.items()}
        category = items["real"].get("type") or directory.name
        pairs.append(SpokenPair(f"{pair_id}/{voice}" if voice else pair_id, category, units["real"], units["fake"]))
    if not pairs:
        raise PairSetError(f"{gold}: no pairs")
    return pairs
