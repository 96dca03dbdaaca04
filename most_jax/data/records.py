"""Prepared records: the byte format inside the ArrayRecord shards and the directory layout.

A prepared directory (written by `most data prepare`) holds

    layout.json                      the vocabulary layout (`VocabLayout.to_dict`)
    tokenizer/                       a copy of the text tokenizer used
    units/                           a copy of the unit extractor used (when the inputs had audio)
    continuous.json                  MoST-C: the frame features of the records' continuous speech
                                     ({"kind", "config", "dim", "frame_rate"}, `--continuous-hubert`)
    {kind}-SSSSS-of-NNNNN.array_record   records of each kind: "pair" (speech + transcript),
                                     "text" (text only), and the dialog kinds "spoken_qa_text",
                                     "spoken_qa_speech", "instruct" (prompt -> response)
    report.json                      counts, hours, skips by reason

A record is a JSON header line followed by little-endian int32 arrays, so reading one costs a
`json.loads` and a few `np.frombuffer` calls (the pipeline decodes every record it uses).
Header: {"id", "kind", "seconds", "arrays": {name: length}}. Array names: "text" and "units"
(pair, text); "instruction" (optional), "prompt_text" | "prompt_units", "response_text" |
"response_units" (dialog kinds). Text arrays hold text token ids, unit arrays hold unit ids 0..K-1 (not token ids).
The U2++ kind "utterance" (`most data prepare --family u2pp`) holds "pcm", 16 kHz mono 16-bit samples,
stored as little-endian int16 (the header's optional "dtypes" names arrays that are not int32), and
"target", the transcript's token ids in WeNet's convention (tokenizer id + 1: 0 is the CTC blank).
A MoST-C "pair" (`most data prepare --continuous`) adds "features", the utterance's continuous
speech frames [frames, F] stored as little-endian float16 (the header's optional "shapes" gives
the shape of an array with more than one dimension).
The HuBERT pretraining kind "hubert" (`most hubert prepare`, data/hubert_data.py) holds "pcm" (int16, as
"utterance") and "units", the k-means id of every unit-rate frame (no dedup): the frame targets.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

KINDS = ("pair", "text", "spoken_qa_text", "spoken_qa_speech", "instruct", "utterance", "hubert")
LAYOUT_FILE = "layout.json"
TOKENIZER_DIR = "tokenizer"
UNITS_DIR = "units"
CONTINUOUS_FILE = "continuous.json"  # MoST-C: the frame features behind the records' "features"
REPORT_FILE = "report.json"


class RecordError(ValueError):
    """A record's bytes do not decode."""


@dataclasses.dataclass(frozen=True)
class Record:
    id: str
    kind: str
    arrays: dict[str, np.ndarray]
    seconds: float = 0.0

    def get(self, name: str) -> np.ndarray | None:
        return self.arrays.get(name)


# Stored dtype of an array by its in-memory dtype; everything else is stored as int32.
_STORED = {np.dtype(np.int16): "<i2", np.dtype(np.float16): "<f2", np.dtype(np.float32): "<f2"}


def encode_record(record: Record) -> bytes:
    """Float arrays are stored as float16."""
    if record.kind not in KINDS:
        raise RecordError(f"record {record.id!r}: unknown kind {record.kind!r}")
    arrays = {k: np.ascontiguousarray(v, _STORED.get(np.asarray(v).dtype, "<i4")) for k, v in record.arrays.items()}
    header = {"id": record.id, "kind": record.kind, "seconds": record.seconds,
              "arrays": {k: int(v.size) for k, v in arrays.items()}}
    other = {k: v.dtype.str for k, v in arrays.items() if v.dtype.str != "<i4"}
    if other:
        header["dtypes"] = other
    shapes = {k: list(v.shape) for k, v in arrays.items() if v.ndim > 1}
    if shapes:
        header["shapes"] = shapes
    return json.dumps(header).encode() + b"\n" + b"".join(v.tobytes() for v in arrays.values())


def decode_record(data: bytes) -> Record:
    end = data.find(b"\n")
    try:
        header = json.loads(data[:end])
        offset, arrays = end + 1, {}
        dtypes, shapes = header.get("dtypes", {}), header.get("shapes", {})
        for name, length in header["arrays"].items():
            dtype = np.dtype(dtypes.get(name, "<i4"))
            array = np.frombuffer(data, dtype, count=length, offset=offset).astype(dtype.newbyteorder("="))
            arrays[name] = array.reshape(shapes[name]) if name in shapes else array
            offset += dtype.itemsize * length
        if end < 0 or offset != len(data):
            raise ValueError(f"{len(data) - offset} bytes left over after the arrays")
        return Record(header["id"], header["kind"], arrays, float(header["seconds"]))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise RecordError(f"undecodable record ({len(data)} bytes): {err}") from None


def shard_paths(directory: str | Path, kind: str) -> list[Path]:
    return sorted(Path(directory).glob(f"{kind}-*-of-*.array_record"))


def shard_name(kind: str, index: int, count: int) -> str:
    return f"{kind}-{index:05d}-of-{count:05d}.array_record"
