"""The results table of a scaling study: DIR/results.jsonl, one JSON object per finished run.

Each object holds at least `run` (a name), `variant` (dense, moe, mamoe, ...), `params_active`,
`tokens`, `flops` (training compute of the run) and `loss` (final evaluation loss); it may hold
`loss_text` and `loss_audio` (the loss on text and on audio tokens, null where not measured). Other
fields are kept but not read. A table from anywhere (runs made on another cluster) works alike.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

RESULTS_FILE = "results.jsonl"
POSITIVE_FIELDS = ("params_active", "tokens", "flops", "loss")
MODALITY_FIELDS = {"text": "loss_text", "audio": "loss_audio"}


class ResultsError(ValueError):
    """A results table that cannot be read: the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class Run:
    run: str
    variant: str
    params_active: float
    tokens: float
    flops: float
    loss: float
    modality_loss: dict[str, float]  # "text" / "audio" -> loss, only those measured


def results_path(path: str | Path) -> Path:
    """DIR/results.jsonl for a directory, the path itself for a file."""
    path = Path(path)
    return path / RESULTS_FILE if path.is_dir() else path


def read_results(path: str | Path) -> list[Run]:
    """The runs of a results table (a directory holding results.jsonl, or the file itself)."""
    file = results_path(path)
    if not file.is_file():
        raise ResultsError(f"{file}: no results table (expected {RESULTS_FILE}, one JSON object per run)")
    runs = []
    names: dict[str, int] = {}
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{file} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ResultsError(f"{where}: not JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise ResultsError(f"{where}: expected a JSON object, got {type(record).__name__}")
        run = _parse(record, where)
        if run.run in names:
            raise ResultsError(f"{where}: run {run.run!r} already on line {names[run.run]}")
        names[run.run] = number
        runs.append(run)
    if not runs:
        raise ResultsError(f"{file}: no runs in the results table")
    return runs


def _parse(record: dict, where: str) -> Run:
    for key in ("run", "variant"):
        if not isinstance(record.get(key), str) or not record[key]:
            raise ResultsError(f"{where}: field {key!r} must be a non-empty string, got {record.get(key)!r}")
    values = {key: _positive(record, key, where) for key in POSITIVE_FIELDS}
    modality = {}
    for name, key in MODALITY_FIELDS.items():
        if record.get(key) is not None:
            modality[name] = _positive(record, key, where)
    return Run(run=record["run"], variant=record["variant"], modality_loss=modality, **values)


def _positive(record: dict, key: str, where: str) -> float:
    if key not in record:
        raise ResultsError(f"{where}: field {key!r} missing")
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ResultsError(f"{where}: field {key!r} must be a positive finite number, got {value!r}")
    return float(value)
