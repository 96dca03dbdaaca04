"""`most data prepare`: manifest / text / TFDS examples -> tokenised records in ArrayRecord shards.

Inputs
  * a JSONL manifest, one object per line, of two shapes:
      speech pair  {"id", "audio": PATH, "text": TRANSCRIPT, ...}  (PATH relative to the manifest's
                   directory unless absolute) -> a "pair" record (ASR, TTS, unit LM)
      dialog       {"id", "instruction"?: TEXT, "prompt": SIDE, "response": SIDE} with SIDE =
                   {"text": TEXT} and/or {"audio": PATH} -> a spoken prompt gives "spoken_qa_text"
                   and/or "spoken_qa_speech" records (one per response modality), a text prompt an
                   "instruct" record (the response's speech if it has any, else its text)
  * a text file, one sentence per line -> "text" records (text LM)
  * a TFDS split (`tfds.data_source`), e.g. LibriSpeech or most_jax's built-in corpus -> "pair"

Bad-input policy. Nothing stops the run and every good record is written; each case is counted
in report.json, skips under "skipped", repairs under "repaired":
  * audio missing, unreadable, truncated or empty (most_jax.speech.audio.AudioError):
    skipped as "audio_<reason>"
  * a sample rate other than 16 kHz or more than one channel: resampled (soxr) / mixed to mono
    and kept, counted as "resampled" / "downmixed"
  * transcript missing, not a string or blank: skipped, "missing_transcript"
  * transcript not valid UTF-8 (undecodable manifest line, lone surrogate escapes, undecodable
    TFDS bytes): skipped, "non_utf8_transcript"
  * a transcript the tokenizer maps onto special ids: skipped, "bad_transcript"
  * audio longer than --max-audio-seconds, or a formatted sequence longer than --max-tokens:
    skipped, "over_length" (truncating would put the transcript out of step with the speech)
  * audio that yields no units: skipped, "no_units" (no continuous frame or a non-finite one, MoST-C: "no_features")
  * a line that is not a JSON object of one of the shapes above: skipped, "bad_manifest_line"
Output is written to a temporary sibling directory and renamed onto OUT only on success.

MoST-C (`continuous`, `most data prepare --continuous-hubert CKPT`): every speech pair also
stores its continuous frames (HuBERT's hidden states of one layer, the last by default, in
evaluation mode: no dropout, no masking) as "features", float16 [frames, F], and continuous.json
names the features so generation computes the same ones for new audio. The HuBERT encoder runs
here, once, not in the training step: it stays frozen and out of the step's cost.

U2++ mode (`family="u2pp"`, `most data prepare --family u2pp`): speech pairs become "utterance"
records of 16-bit PCM (features are computed at training time, so dither and speed perturbation
happen there) and WeNet token ids (tokenizer id + 1; 0 is the CTC blank, tokenizer size + 1 the
sos/eos). Dialog lines and text files have no place in it: dialog lines are skipped as
"not_an_utterance". The same bad-input policy applies, plus "clipped" (a sample beyond full scale,
clipped to int16 and kept) among the repairs. Besides the shards it writes U2PP_FILE (the vocabulary
size and the utterances' lengths in source order, which the length-bucketing pipeline plans with)
and CMVN_FILE, WeNet's global CMVN statistics (JSON: mean_stat, var_stat, frame_num) of the 80-bin
fbank (no dither) over every written utterance.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import itertools
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator, TextIO

import numpy as np

from most_jax.atomic import atomic_directory
from most_jax.data import records as rec
from most_jax.data.tasks import Formatter
from most_jax.data.tokenizers import TokenizerError, copy_tokenizer, load_tokenizer
from most_jax.vocab import VocabError, VocabLayout

SAMPLE_RATE = 16000


class PrepareError(ValueError):
    """The inputs of a prepare run (not a single record) are unusable."""


class Skip(Exception):
    """One input item is skipped; `reason` is its report key."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
    tokenizer_dir: str
    units_dir: str | None = None  # required when any input has audio
    max_audio_seconds: float = 30.0
    max_tokens: int = 2048
    num_shards: int = 1
    workers: int = 1
    family: str = "most"  # "most": MoST records (units); "u2pp": utterance records (PCM + WeNet ids)
    # MoST-C: (feature kind, its config) of the continuous frames added to every speech pair as
    # "features" (e.g. ("hubert", {"checkpoint": DIR, "layer": 12})); None: units only
    continuous: tuple[str, dict] | None = None


@dataclasses.dataclass(frozen=True)
class Item:
    """One unit of work: a manifest line (bytes), a text line (bytes) or a decoded TFDS example."""

    source: str  # "manifest" | "text" | "tfds"
    index: int
    payload: object
    manifest: str = ""  # the manifest's path: audio paths are relative to its directory


@dataclasses.dataclass
class Outcome:
    records: list[tuple[str, bytes]] = dataclasses.field(default_factory=list)  # (kind, encoded record)
    skip: str | None = None
    repairs: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    units: int = 0
    # U2++ mode: (samples, target tokens) of each utterance record, and the fbank's
    # (sum [I], sum of squares [I], frames) for the global CMVN
    lengths: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    cmvn: tuple[np.ndarray, np.ndarray, int] | None = None


def load_layout(tokenizer, units_dir: str | None) -> tuple[VocabLayout, object | None]:
    """The layout for a tokenizer plus the unit extractor in `units_dir` (None: no units)."""
    extractor = None
    num_units = 0
    if units_dir is not None:
        from most_jax.speech.units import UnitExtractor

        extractor = UnitExtractor.load(units_dir)
        num_units = extractor.num_units
    layout = VocabLayout.after_text(tokenizer.text_size, num_units, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id)
    return layout, extractor


FAMILIES = ("most", "u2pp")
U2PP_FILE = "u2pp.json"
CMVN_FILE = "global_cmvn.json"


class Worker:
    """Turns items into records; one per process (holds the tokenizer and the unit extractor)."""

    def __init__(self, options: PrepareOptions):
        self.options = options
        self.tokenizer = load_tokenizer(options.tokenizer_dir)
        self.u2pp = options.family == "u2pp"
        self.layout, self.extractor = load_layout(self.tokenizer, None if self.u2pp else options.units_dir)
        self.formatter = Formatter(self.layout, self.tokenizer)
        self.continuous = continuous_features(options)

    def __call__(self, item: Item) -> Outcome:
        out = Outcome()
        try:
            if item.source == "manifest":
                self._manifest_line(item, out)
            elif item.source == "text":
                self._text_line(item, out)
            else:
                self._tfds_example(item, out)
        except Skip as skip:
            return Outcome(skip=skip.reason, repairs=out.repairs)
        return out

    # ----------------------------------------------------------------- inputs
    def _manifest_line(self, item: Item, out: Outcome) -> None:
        try:
            line = item.payload.decode("utf-8")
        except UnicodeDecodeError as err:
            raise Skip("non_utf8_transcript", f"line {item.index + 1}: {err}") from None
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise Skip("bad_manifest_line", f"line {item.index + 1}: {err}") from None
        if not isinstance(entry, dict):
            raise Skip("bad_manifest_line", f"line {item.index + 1} is not a JSON object")
        record_id = str(entry.get("id", f"line{item.index + 1}"))
        if "prompt" in entry or "response" in entry:
            if self.u2pp:
                raise Skip("not_an_utterance", f"line {item.index + 1} is a dialog")
            self._dialog(record_id, entry, item.manifest, out)
        elif "audio" in entry:
            text_ids = self._text(entry.get("text"))
            wave = self._load_wave(entry["audio"], item.manifest, out)
            self._speech_pair(record_id, text_ids, wave, out)
        else:
            raise Skip("bad_manifest_line", f"line {item.index + 1} has neither 'audio' nor 'prompt'/'response'")

    def _text_line(self, item: Item, out: Outcome) -> None:
        try:
            line = item.payload.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise Skip("non_utf8_transcript", f"text line {item.index + 1}") from None
        text_ids = self._text(line)
        self._check_length(self.formatter.text_lm(text_ids))
        out.records.append(("text", rec.encode_record(rec.Record(f"text{item.index + 1}", "text",
                                                                   {"text": text_ids}))))

    def _tfds_example(self, item: Item, out: Outcome) -> None:
        record_id, text, wave, sample_rate = item.payload
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise Skip("non_utf8_transcript", record_id) from None
        text_ids = self._text(text)
        self._speech_pair(record_id, text_ids, self._tfds_wave(wave, sample_rate, out), out)

    # ----------------------------------------------------------------- pieces
    def _text(self, text) -> np.ndarray:
        if not isinstance(text, str) or not text.strip():
            raise Skip("missing_transcript", repr(text)[:60])
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise Skip("non_utf8_transcript", repr(text)[:60]) from None
        try:
            ids = self.tokenizer.encode(text.strip())
            if self.u2pp:
                if len(ids) == 0:
                    raise ValueError("the transcript encodes to no tokens")
                return np.asarray(ids, np.int32) + 1  # WeNet's ids: 0 is the CTC blank
            return self.formatter.text(ids)
        except (ValueError, TokenizerError) as err:
            raise Skip("bad_transcript", str(err)) from None

    def _audio(self, path, manifest: str, out: Outcome) -> tuple[np.ndarray, float]:
        return self._wave_units(self._load_wave(path, manifest, out), out)

    def _load_wave(self, path, manifest: str, out: Outcome) -> np.ndarray:
        from most_jax.speech.audio import AudioError, load_audio
        from most_jax.speech.manifest import resolve_audio_path

        if not isinstance(path, str) or not path:
            raise Skip("bad_manifest_line", f"audio path {path!r}")
        full = resolve_audio_path(manifest, path)
        if self.options.max_audio_seconds and _too_long(full, self.options.max_audio_seconds):
            raise Skip("over_length", f"{full} is longer than {self.options.max_audio_seconds} s")
        try:
            wave, info = load_audio(full, target_sr=SAMPLE_RATE)
        except AudioError as err:
            raise Skip(f"audio_{err.reason}", str(err)) from None
        if info.resampled:
            out.repairs.append("resampled")
        if info.downmixed:
            out.repairs.append("downmixed")
        return wave

    def _tfds_wave(self, wave: np.ndarray, sample_rate: int, out: Outcome) -> np.ndarray:
        import soxr

        wave = np.asarray(wave)
        if wave.size == 0:
            raise Skip("audio_empty", "TFDS example with no samples")
        if np.issubdtype(wave.dtype, np.integer):
            # TFDS stores PCM as integers; int16 full scale is the convention of its Audio feature.
            wave = wave.astype(np.float32) / 32768.0
        if wave.ndim == 2:
            wave = wave.mean(axis=1)
            out.repairs.append("downmixed")
        if sample_rate != SAMPLE_RATE:
            wave = soxr.resample(wave, sample_rate, SAMPLE_RATE)
            out.repairs.append("resampled")
        return wave.astype(np.float32)

    def _wave_units(self, wave: np.ndarray, out: Outcome) -> tuple[np.ndarray, float]:
        if self.extractor is None:
            raise PrepareError("the inputs contain audio but no unit extractor was given (--units DIR)")
        seconds = len(wave) / SAMPLE_RATE
        if seconds > self.options.max_audio_seconds:
            raise Skip("over_length", f"{seconds:.1f} s of audio")
        units = np.asarray(self.extractor.extract(wave), np.int32)
        if units.size == 0:
            raise Skip("no_units", f"{seconds:.2f} s of audio")
        return units, seconds

    def _speech_pair(self, record_id: str, text_ids: np.ndarray, wave: np.ndarray, out: Outcome) -> None:
        if not self.u2pp:
            units, seconds = self._wave_units(wave, out)
            features = None
            if self.continuous is not None:
                features = np.asarray(self.continuous(wave), np.float32)
                if len(features) == 0 or not np.isfinite(features).all():
                    raise Skip("no_features", f"{seconds:.2f} s of audio make no (finite) continuous frames")
            self._pair(record_id, text_ids, units, seconds, out, features)
            return
        from most_jax.speech.features import fbank

        seconds = len(wave) / SAMPLE_RATE
        if seconds > self.options.max_audio_seconds:
            raise Skip("over_length", f"{seconds:.1f} s of audio")
        if len(text_ids) > self.options.max_tokens:
            raise Skip("over_length", f"{len(text_ids)} tokens > {self.options.max_tokens}")
        scaled = np.round(np.asarray(wave, np.float64) * 32768.0)
        if np.abs(scaled).max(initial=0) > 32767:
            out.repairs.append("clipped")
        pcm = np.clip(scaled, -32768, 32767).astype(np.int16)
        # CMVN and training read the stored samples, so the statistics are those of what training sees.
        feats = fbank(pcm.astype(np.float32) / 32768.0).astype(np.float64)
        if len(feats) == 0:
            raise Skip("audio_too_short", f"{len(pcm)} samples make no 25 ms frame")
        out.cmvn = (feats.sum(axis=0), (feats ** 2).sum(axis=0), len(feats))
        record = rec.Record(record_id, "utterance", {"pcm": pcm, "target": text_ids}, seconds)
        out.records.append(("utterance", rec.encode_record(record)))
        out.lengths.append((len(pcm), len(text_ids)))
        out.seconds += seconds

    def _check_length(self, *examples) -> None:
        longest = max(len(e) for e in examples)
        if longest > self.options.max_tokens:
            raise Skip("over_length", f"{longest} tokens > {self.options.max_tokens}")

    def _pair(self, record_id: str, text_ids, units, seconds: float, out: Outcome, features=None) -> None:
        examples = [self.formatter.asr(text_ids, units), self.formatter.tts(text_ids, units)]
        arrays = {"text": text_ids, "units": units}
        if features is not None:
            examples.append(self.formatter.asr(text_ids, features=features))
            arrays["features"] = features
        self._check_length(*examples)
        record = rec.Record(record_id, "pair", arrays, seconds)
        out.records.append(("pair", rec.encode_record(record)))
        out.seconds += seconds
        out.units += len(units)

    def _side(self, side, name: str, manifest: str, out: Outcome) -> dict[str, np.ndarray]:
        if not isinstance(side, dict) or not ({"text", "audio"} & side.keys()):
            raise Skip("bad_manifest_line", f"{name} must be an object with 'text' and/or 'audio'")
        arrays = {}
        if "text" in side:
            arrays[f"{name}_text"] = self._text(side["text"])
        if "audio" in side:
            units, seconds = self._audio(side["audio"], manifest, out)
            arrays[f"{name}_units"] = units
            out.seconds += seconds
            out.units += len(units)
        return arrays

    def _dialog(self, record_id: str, entry: dict, manifest: str, out: Outcome) -> None:
        instruction = entry.get("instruction")
        head = {} if instruction in (None, "") else {"instruction": self._text(instruction)}
        prompt = self._side(entry.get("prompt"), "prompt", manifest, out)
        response = self._side(entry.get("response"), "response", manifest, out)
        if "prompt_units" in prompt:
            prompt = {"prompt_units": prompt["prompt_units"]}  # a spoken prompt's transcript is not used
            for modality, kind in (("text", "spoken_qa_text"), ("units", "spoken_qa_speech")):
                if f"response_{modality}" in response:
                    arrays = {**head, **prompt, f"response_{modality}": response[f"response_{modality}"]}
                    self._emit(record_id, kind, arrays, out)
        else:
            answer = {k: v for k, v in response.items() if k == "response_units"} or response
            self._emit(record_id, "instruct", {**head, **prompt, **answer}, out)

    def _emit(self, record_id: str, kind: str, arrays: dict, out: Outcome) -> None:
        from most_jax.data.pipeline import format_record

        record = rec.Record(record_id, kind, arrays, out.seconds)
        task = {"spoken_qa_text": "spoken_qa_text", "spoken_qa_speech": "spoken_qa_speech", "instruct": "instruct"}
        self._check_length(format_record(self.formatter, task[kind], record))
        out.records.append((kind, rec.encode_record(record)))


def continuous_features(options: PrepareOptions):
    """The FrameFeatures of `options.continuous`, or None."""
    if options.continuous is None:
        return None
    from most_jax.speech.units import build_features

    kind, config = options.continuous
    try:
        return build_features(kind, config)
    except ValueError as err:
        raise PrepareError(f"continuous features (--continuous-hubert): {err}") from None


def _too_long(path: Path, max_seconds: float) -> bool:
    """Header check so a huge file is refused before it is decoded; unreadable files pass to load_audio."""
    import soundfile

    try:
        info = soundfile.info(str(path))
    except (RuntimeError, OSError, soundfile.LibsndfileError):
        return False
    return info.frames > max_seconds * info.samplerate


# --------------------------------------------------------------------------------- inputs

def manifest_items(path: str | Path) -> list[Item]:
    path = Path(path)
    if not path.is_file():
        raise PrepareError(f"manifest {path} does not exist")
    lines = path.read_bytes().splitlines()
    return [Item("manifest", i, line, str(path)) for i, line in enumerate(lines) if line.strip()]


def text_items(path: str | Path) -> list[Item]:
    path = Path(path)
    if not path.is_file():
        raise PrepareError(f"text file {path} does not exist")
    return [Item("text", i, line) for i, line in enumerate(path.read_bytes().splitlines()) if line.strip()]


def tfds_items(spec: str, data_dir: str | None = None) -> Iterator[Item]:
    """Examples of `NAME[:SPLIT]` (default split 'train') through `tfds.data_source`."""
    import tensorflow_datasets as tfds

    import most_jax.data.tfds_builder  # noqa: F401  (registers most_speech)

    name, _, split = spec.partition(":")
    split = split or "train"
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir)
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as err:  # TFDS raises many unrelated types for "not found / not prepared"
        raise PrepareError(f"--tfds {spec}: cannot open the dataset ({type(err).__name__}: {err})") from None
    features = builder.info.features
    audio_key = next((k for k in ("audio", "speech") if k in features), None)
    if audio_key is None or "text" not in features:
        raise PrepareError(f"--tfds {spec}: needs an 'audio' or 'speech' feature and a 'text' feature, "
                           f"has {sorted(features.keys())}")
    # tfds.features.Audio knows its rate; a plain int16 tensor (most_speech) is 16 kHz PCM.
    sample_rate = int(getattr(features[audio_key], "sample_rate", None) or SAMPLE_RATE)
    for i in range(len(source)):
        example = source[i]
        record_id = example.get("id", f"{name}-{split}-{i}")
        if isinstance(record_id, bytes):
            record_id = record_id.decode("utf-8", "replace")
        yield Item("tfds", i, (str(record_id), example["text"], example[audio_key], sample_rate))


# --------------------------------------------------------------------------------- running

_WORKER: Worker | None = None


def _init_worker(options: PrepareOptions) -> None:
    global _WORKER
    _WORKER = Worker(options)


def _run_item(item: Item) -> Outcome:
    return _WORKER(item)


def _outcomes(items: Iterable[Item], options: PrepareOptions) -> Iterator[Outcome]:
    """Outcomes in input order, from `options.workers` processes (1: this process)."""
    if options.workers <= 1:
        worker = Worker(options)
        yield from map(worker, items)
        return
    # spawn, not fork: the parent may have JAX (threads) loaded, which fork can deadlock.
    context = multiprocessing.get_context("spawn")
    with _single_threaded_blas(), concurrent.futures.ProcessPoolExecutor(
            options.workers, mp_context=context, initializer=_init_worker, initargs=(options,)) as pool:
        # Bounded batches: Executor.map would submit (and hold in memory) every item at once.
        items = iter(items)
        while batch := list(itertools.islice(items, 64 * options.workers)):
            yield from pool.map(_run_item, batch, chunksize=8)


@contextlib.contextmanager
def _single_threaded_blas():
    """Worker processes started inside this block use one BLAS thread each. They already run side by
    side; BLAS threads of their own only contend for the same cores (OpenBLAS spin-waits), which
    made unit extraction about 3x more expensive on 2 cores. Spawned workers read the variables
    when they load NumPy; the parent's own BLAS is already loaded and unaffected."""
    names = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({name: "1" for name in names})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class ShardWriter:
    """Round-robin ArrayRecord shards per record kind, opened on a kind's first record."""

    def __init__(self, directory: Path, num_shards: int):
        self.directory = directory
        self.num_shards = num_shards
        self._writers: dict[str, list] = {}
        self.counts: Counter = Counter()

    def write(self, kind: str, data: bytes) -> None:
        from array_record.python.array_record_module import ArrayRecordWriter

        if kind not in self._writers:
            self._writers[kind] = [ArrayRecordWriter(str(self.directory / rec.shard_name(kind, i, self.num_shards)),
                                                     "group_size:1") for i in range(self.num_shards)]
        self._writers[kind][self.counts[kind] % self.num_shards].write(data)
        self.counts[kind] += 1

    def close(self) -> None:
        for writers in self._writers.values():
            for w in writers:
                w.close()


def _write_u2pp_meta(directory: Path, tokenizer, lengths: list[tuple[int, int]], num_shards: int,
                     cmvn: tuple[np.ndarray, np.ndarray, int]) -> None:
    """U2PP_FILE and CMVN_FILE. The writer deals records round-robin over the shards and the
    readers chain the shards in order, so record n sits at source position (n % S, n // S)."""
    order = [n for shard in range(num_shards) for n in range(shard, len(lengths), num_shards)]
    meta = {"vocab_size": tokenizer.text_size + 2, "sample_rate": SAMPLE_RATE,
            "samples": [lengths[n][0] for n in order], "target_lengths": [lengths[n][1] for n in order]}
    (directory / U2PP_FILE).write_text(json.dumps(meta))
    total, squares, frames = cmvn
    (directory / CMVN_FILE).write_text(json.dumps({"mean_stat": np.asarray(total).tolist(),
                                                    "var_stat": np.asarray(squares).tolist(), "frame_num": frames}))


def prepare(items: Iterable[Item], out_dir: str | Path, options: PrepareOptions, total: int | None = None,
            overwrite: bool = False, progress: TextIO | None | str = "stderr") -> dict:
    """Writes the prepared directory OUT_DIR (see most_jax/data/records.py) and returns its report.

    Progress goes to `progress` (None: silent; "stderr": sys.stderr as it is at call time)."""
    if progress == "stderr":
        progress = sys.stderr
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise PrepareError(f"{out_dir} already exists (use --overwrite to replace it)")
    if options.num_shards < 1:
        raise PrepareError(f"--num-shards must be >= 1, got {options.num_shards}")
    if options.family not in FAMILIES:
        raise PrepareError(f"--family must be one of {FAMILIES}, got {options.family!r}")
    if options.continuous is not None and options.family != "most":
        raise PrepareError("continuous speech features are for MoST records (--family most)")
    continuous = continuous_features(options)
    tokenizer = load_tokenizer(options.tokenizer_dir)
    try:
        layout, _ = load_layout(tokenizer, None if options.family == "u2pp" else options.units_dir)
    except VocabError as err:
        raise PrepareError(f"vocabulary layout: {err}") from None
    start = last_print = time.monotonic()
    skipped, repaired = Counter(), Counter()
    seconds = units = 0.0
    done = 0
    lengths: list[tuple[int, int]] = []
    cmvn_sum, cmvn_squares, cmvn_frames = 0.0, 0.0, 0
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        writer = ShardWriter(tmp, options.num_shards)
        for outcome in _outcomes(items, options):
            done += 1
            for kind, data in outcome.records:
                writer.write(kind, data)
            if outcome.skip:
                skipped[outcome.skip] += 1
            repaired.update(outcome.repairs)
            seconds += outcome.seconds
            units += outcome.units
            lengths += outcome.lengths
            if outcome.cmvn is not None:
                cmvn_sum, cmvn_squares = cmvn_sum + outcome.cmvn[0], cmvn_squares + outcome.cmvn[1]
                cmvn_frames += outcome.cmvn[2]
            now = time.monotonic()
            if progress is not None and now - last_print > 2.0:
                last_print = now
                of = f"/{total}" if total else ""
                print(f"prepare: {done}{of} items, {sum(writer.counts.values())} records, {sum(skipped.values())} "
                      f"skipped, {done / (now - start):.0f} items/s", file=progress, flush=True)
        writer.close()
        report = {
            "records_written": sum(writer.counts.values()),
            "records_by_kind": dict(sorted(writer.counts.items())),
            "items_read": done,
            "hours": seconds / 3600.0,
            "units": int(units),
            "units_per_second": units / seconds if seconds else 0.0,
            "skipped": dict(sorted(skipped.items())),
            "repaired": dict(sorted(repaired.items())),
            "elapsed_seconds": time.monotonic() - start,
            "num_shards": options.num_shards,
        }
        if options.family == "u2pp":
            if not lengths:
                raise PrepareError("no utterance was written (see the skipped counts above); nothing to train on")
            _write_u2pp_meta(tmp, tokenizer, lengths, options.num_shards, (cmvn_sum, cmvn_squares, cmvn_frames))
        else:
            (tmp / rec.LAYOUT_FILE).write_text(json.dumps(layout.to_dict(), indent=2))
        copy_tokenizer(options.tokenizer_dir, tmp / rec.TOKENIZER_DIR)
        if continuous is not None:
            spec = {"kind": continuous.kind, "config": continuous.config(), "dim": continuous.dim,
                    "frame_rate": continuous.frame_rate}
            (tmp / rec.CONTINUOUS_FILE).write_text(json.dumps(spec, indent=2))
        if options.units_dir is not None and options.family == "most":
            # Generation and evaluation extract units from new audio with this same codebook.
            shutil.copytree(options.units_dir, tmp / rec.UNITS_DIR)
        (tmp / rec.REPORT_FILE).write_text(json.dumps(report, indent=2))
    if progress is not None:
        print(f"prepare: wrote {report['records_written']} records ({report['hours']:.2f} h of audio) to {out_dir}; "
              f"skipped {dict(skipped) or 'none'}", file=progress, flush=True)
    return report
