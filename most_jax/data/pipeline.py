"""Grain training pipeline: prepared records -> weighted task mixture -> packed, batched rows.

Per JAX process: each task's records are sliced `[process_index::process_count]` (disjoint
parts), shuffled by seed and repeated forever; the task streams are mixed with the configured
weights, formatted (most_jax/data/tasks.py), packed first-fit into rows of `seq_len` tokens and
batched into `batch_size / process_count` rows. Everything is a function of the seed and the
process index, and the iterator's `get_state()` / `set_state()` resume it exactly.

A batch is a dict of int32 NumPy arrays, all [B, T]:

    tokens       input token ids
    targets      the next token of the same segment: targets[t] = tokens[t + 1]; the last token
                 of a segment has target pad (loss_mask 0). The train step shifts nothing.
    loss_mask    1 where targets[t] is a response token (prompt/response tasks) or any token
                 (language-model tasks); 0 on prompts and padding
    modality     0 text, 1 audio, -1 padding (no routed experts, left out of load statistics)
    segment_ids  1, 2, ... per packed sequence in the row; 0 = padding
    positions    0, 1, ... restarting at every segment; 0 on padding
    task         the task id (tasks.TASK_IDS) of each token; -1 on padding

With `data.speech_input: features` (MoST-C) ASR prompts hear the records' continuous frames, and
every batch has two more arrays:

    features     float32 [B, T, F]: a frame's features at its position, 0 elsewhere
    continuous   int32 [B, T]: 1 at the continuous frames, 0 elsewhere

A record that does not decode, or a sequence longer than `seq_len`, is dropped with a warning
instead of stopping the run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import grain
import numpy as np

from most_jax.config import DataConfig
from most_jax.data import records as rec
from most_jax.data.tasks import TASK_IDS, TASKS, Example, Formatter
from most_jax.data.tokenizers import load_tokenizer
from most_jax.vocab import NO_GROUP, VocabLayout

log = logging.getLogger(__name__)

FIELDS = ("tokens", "targets", "loss_mask", "modality", "task")
# The record kind that feeds each task.
TASK_KIND = {"asr": "pair", "tts": "pair", "unit_lm": "pair", "text_lm": "text",
             "spoken_qa_text": "spoken_qa_text", "spoken_qa_speech": "spoken_qa_speech", "instruct": "instruct"}


class PipelineError(ValueError):
    """The configuration asks for data the prepared directory does not have."""


class PreparedData:
    """A directory written by `most data prepare`: its layout, tokenizer and record shards."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        layout_path = self.directory / rec.LAYOUT_FILE
        if not layout_path.is_file():
            raise PipelineError(f"{self.directory}: no {rec.LAYOUT_FILE}; not a `most data prepare` output")
        self.layout = VocabLayout.from_dict(json.loads(layout_path.read_text()))
        self.tokenizer = load_tokenizer(self.directory / rec.TOKENIZER_DIR)
        self.formatter = Formatter(self.layout, self.tokenizer)
        self._sources: dict[str, grain.sources.ArrayRecordDataSource] = {}

    def source(self, kind: str):
        """Random-access source over the records of `kind`, or None if there are none."""
        if kind not in self._sources:
            paths = rec.shard_paths(self.directory, kind)
            self._sources[kind] = grain.sources.ArrayRecordDataSource([str(p) for p in paths]) if paths else None
        return self._sources[kind]

    def unit_extractor(self):
        """The unit extractor the records were made with (for new audio at generation time)."""
        from most_jax.speech.units import UnitExtractor

        path = self.directory / rec.UNITS_DIR
        if not path.is_dir():
            raise PipelineError(f"{self.directory}: no {rec.UNITS_DIR}/ (prepared without audio, or by an older "
                                f"version); re-run `most data prepare --units DIR`")
        return UnitExtractor.load(path)

    def continuous_features(self):
        """The frame features the records' continuous speech was computed with (`most data
        prepare --continuous`), for new audio at generation time."""
        from most_jax.speech.units import build_features

        spec = self._continuous_spec()
        return build_features(spec["kind"], spec["config"])

    def continuous_dim(self) -> int:
        """The width of the records' continuous speech frames."""
        return int(self._continuous_spec()["dim"])

    def _continuous_spec(self) -> dict:
        path = self.directory / rec.CONTINUOUS_FILE
        if not path.is_file():
            raise PipelineError(f"{self.directory}: no {rec.CONTINUOUS_FILE}; its records hold no continuous speech "
                                f"features (prepare with `most data prepare --continuous-hubert CKPT`)")
        return json.loads(path.read_text())

    def records(self, kind: str):
        """Every decoded record of `kind`, in order."""
        source = self.source(kind)
        for i in range(0 if source is None else len(source)):
            yield rec.decode_record(source[i])

    def num_records(self, kind: str) -> int:
        source = self.source(kind)
        return 0 if source is None else len(source)


def format_record(formatter: Formatter, task: str, record: rec.Record, speech_input: str = "units") -> Example:
    """The `Example` of `task` built from a decoded record of kind TASK_KIND[task]; with
    `speech_input` "features", ASR hears the record's continuous frames."""
    a = record.arrays
    instruction = a.get("instruction")
    if task == "asr":
        if speech_input == "features":
            if "features" not in a:
                raise ValueError(f"record {record.id!r} has no continuous features (prepared without --continuous)")
            return formatter.asr(a["text"], features=a["features"])
        return formatter.asr(a["text"], a["units"])
    if task == "tts":
        return formatter.tts(a["text"], a["units"])
    if task == "unit_lm":
        return formatter.unit_lm(a["units"])
    if task == "text_lm":
        return formatter.text_lm(a["text"])
    if task == "spoken_qa_text":
        return formatter.spoken_qa_text(a["prompt_units"], a["response_text"], instruction)
    if task == "spoken_qa_speech":
        return formatter.spoken_qa_speech(a["prompt_units"], a["response_units"], instruction)
    if task == "instruct":
        return formatter.instruct(instruction, a.get("prompt_text"), a.get("prompt_units"),
                                  a.get("response_text"), a.get("response_units"))
    raise PipelineError(f"unknown task {task!r}; known: {TASKS}")


def training_columns(example: Example, pad_id: int) -> np.ndarray:
    """[n, len(FIELDS)] int32: an example's tokens with next-token targets and the shifted mask."""
    n = len(example)
    columns = np.empty((n, len(FIELDS)), np.int32)
    columns[:, 0] = example.tokens
    columns[:-1, 1] = example.tokens[1:]
    columns[-1, 1] = pad_id
    columns[:-1, 2] = example.loss_mask[1:]
    columns[-1, 2] = 0
    columns[:, 3] = example.modality
    columns[:, 4] = example.task
    return columns


@dataclasses.dataclass(frozen=True)
class _FormatTask:
    """Record bytes -> packable columns (and, when `feature_dim` > 0, features and the continuous
    mask, zeros for a sequence without frames), or None (dropped) for a bad record or an over-long
    sequence."""

    formatter: Formatter
    task: str
    seq_len: int
    speech_input: str = "units"
    feature_dim: int = 0

    def __call__(self, data: bytes):
        try:
            example = format_record(self.formatter, self.task, rec.decode_record(data), self.speech_input)
            if example.features is not None and example.features.shape[1] != self.feature_dim:
                raise ValueError(f"continuous features of width {example.features.shape[1]}, the data has "
                                 f"{self.feature_dim}")
        except (rec.RecordError, KeyError, ValueError) as err:
            _warn_dropped(f"a {self.task} record: {err}")
            return None
        if len(example) > self.seq_len:
            _warn_dropped(f"a {self.task} sequence of {len(example)} tokens (> seq_len {self.seq_len})")
            return None
        out = {"columns": training_columns(example, self.formatter.layout.pad_id)}
        if self.feature_dim:
            n = len(example)
            out["features"] = (np.zeros((n, self.feature_dim), np.float16) if example.features is None
                               else example.features.astype(np.float16))
            out["continuous"] = np.zeros(n, np.int32) if example.continuous is None else example.continuous
        return out


_dropped = 0


def _warn_dropped(what: str) -> None:
    """Logs drops 1, 2, 4, 8, ... so a bad record met every epoch does not flood the log."""
    global _dropped
    _dropped += 1
    if _dropped & (_dropped - 1) == 0:
        log.warning("dropped %s (%d dropped so far in this process)", what, _dropped)


@dataclasses.dataclass(frozen=True)
class _Unpack:
    pad_id: int

    def __call__(self, batch: dict) -> dict[str, np.ndarray]:
        columns = batch["columns"]
        segment_ids = batch["columns_segment_ids"].astype(np.int32)
        padding = segment_ids == 0
        out = {name: np.ascontiguousarray(columns[..., i]) for i, name in enumerate(FIELDS)}
        # The packer pads with zeros; give padding values that cannot be mistaken for data.
        for name, value in (("tokens", self.pad_id), ("targets", self.pad_id), ("loss_mask", 0),
                            ("modality", NO_GROUP), ("task", -1)):
            out[name][padding] = value
        out["segment_ids"] = segment_ids
        out["positions"] = np.where(padding, 0, batch["columns_positions"]).astype(np.int32)
        if "features" in batch:  # the packer pads these with zeros, as they should be
            out["features"] = batch["features"].astype(np.float32)
            out["continuous"] = batch["continuous"].astype(np.int32)
        return out


def task_weights(cfg: DataConfig) -> dict[str, float]:
    return {task: float(getattr(cfg.mixture, task)) for task in TASKS if getattr(cfg.mixture, task) > 0}


def build_dataset(cfg: DataConfig, data: PreparedData | None = None, *, process_index: int | None = None,
                  process_count: int | None = None) -> grain.IterDataset:
    """The training stream of one JAX process (defaults: jax.process_index() / process_count())."""
    process_index, process_count = _process(cfg, process_index, process_count)
    data = data if data is not None else PreparedData(cfg.records)
    weights = task_weights(cfg)
    for task in weights:
        kind = TASK_KIND[task]
        if data.num_records(kind) < process_count:
            raise PipelineError(f"data.mixture.{task}: {data.directory} has {data.num_records(kind)} '{kind}' "
                                f"records, fewer than the {process_count} processes that must share them")
    batched = _batches(cfg, data, weights, process_index, process_count)
    if cfg.num_workers > 0:
        from absl import flags

        # grain 0.2.x reads an absl flag when starting workers and fails unless flags were parsed
        # (google/grain#1355); programs not run through absl.app never parse them.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        batched = batched.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.num_workers))
    return batched


def build_eval_batches(cfg: DataConfig, data: PreparedData, count: int, *, process_index: int | None = None,
                       process_count: int | None = None) -> list[dict[str, np.ndarray]]:
    """`count` batches of held-out records for this process, the same at every call: the training
    mixture's tasks that `data` has records for (a dev split of speech pairs has no text-LM
    lines), at their relative weights, packed as in training."""
    process_index, process_count = _process(cfg, process_index, process_count)
    weights = {task: w for task, w in task_weights(cfg).items() if data.num_records(TASK_KIND[task]) >= process_count}
    if not weights:
        raise PipelineError(f"data.eval_records: {data.directory} has no records for the mixture's tasks "
                            f"({', '.join(task_weights(cfg))}), at least {process_count} per task")
    for task in weights:
        _check_fits(cfg, data, task)
    stream = iter(_batches(cfg, data, weights, process_index, process_count))
    return [next(stream) for _ in range(count)]


def _check_fits(cfg: DataConfig, data: PreparedData, task: str) -> None:
    """Some record of `task` must fit a row (the packer would otherwise wait forever for one);
    the search stops at the first that does."""
    source = data.source(TASK_KIND[task])
    shortest = None
    for i in range(len(source)):
        try:
            length = len(format_record(data.formatter, task, rec.decode_record(source[i]), cfg.speech_input))
        except (rec.RecordError, KeyError, ValueError):
            continue
        if length <= cfg.seq_len:
            return
        shortest = length if shortest is None else min(shortest, length)
    raise PipelineError(f"data.eval_records: no {task} record of {data.directory} fits data.seq_len={cfg.seq_len} "
                        f"(the shortest is {shortest} tokens)" if shortest is not None else
                        f"data.eval_records: no {task} record of {data.directory} decodes")


def _process(cfg: DataConfig, process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    if not 0 <= process_index < process_count:
        raise PipelineError(f"process_index={process_index} outside 0..{process_count - 1}")
    if cfg.batch_size % process_count:
        raise PipelineError(f"data.batch_size={cfg.batch_size} does not split over {process_count} processes")
    return process_index, process_count


def _batches(cfg: DataConfig, data: PreparedData, weights: dict[str, float], process_index: int,
             process_count: int) -> grain.IterDataset:
    """The tasks' record streams (this process's slice, shuffled, repeated), mixed by weight, packed
    and batched."""
    feature_dim = data.continuous_dim() if cfg.speech_input == "features" else 0
    streams = []
    for task in weights:
        stream = grain.MapDataset.source(data.source(TASK_KIND[task]))[process_index::process_count]
        # Seeds differ per task so two tasks over the same records do not walk them in step.
        stream = stream.shuffle(seed=cfg.seed * len(TASKS) + TASK_IDS[task]).repeat()
        streams.append(stream.map(_FormatTask(data.formatter, task, cfg.seq_len, cfg.speech_input, feature_dim)))
    mixed = grain.MapDataset.mix(streams, list(weights.values())) if len(streams) > 1 else streams[0]
    lengths = {"columns": cfg.seq_len}
    if feature_dim:
        lengths.update(features=cfg.seq_len, continuous=cfg.seq_len)
    packed = grain.experimental.FirstFitPackIterDataset(
        mixed.to_iter_dataset(), length_struct=lengths, num_packing_bins=cfg.packing_bins, seed=cfg.seed)
    return packed.batch(cfg.batch_size // process_count, drop_remainder=True).map(_Unpack(data.layout.pad_id))
