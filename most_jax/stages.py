"""Resumable staged jobs, the machinery both main jobs share (`most demo`, `most demo u2pp`).

A job runs named stages in order, each writing its own outputs under the job's directory OUT.
OUT/stages.json (the ledger) records each finished stage with its key (the settings it was made
with, chained with the key of the stage before) and its wall time. A re-run skips a stage whose
record matches; a stage whose settings (or an earlier stage's) changed is rebuilt. An interrupted
training stage resumes from its latest checkpoint. Every stage writes through temporary paths,
so a killed run never leaves a half-written output that looks finished.

Also here: the corpus stage both jobs run (the built-in eSpeak corpus), the training stage's
call of the common trainer, and the machine facts every summary reports.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

from most_jax.atomic import atomic_file
from most_jax.bench.timing import cpu_model

LEDGER = "stages.json"
TRAIN_STAGE = "train"  # resumes instead of rebuilding (a job may name more such stages)


class DemoError(RuntimeError):
    """A stage cannot run (bad settings, missing inputs, a failed step)."""


class DemoInterrupted(RuntimeError):
    """Training stopped on SIGTERM/SIGINT after saving a checkpoint; a re-run resumes it."""

    def __init__(self, signal_name: str, step: int):
        super().__init__(f"training stopped by {signal_name} at step {step}; its checkpoint is saved, run the same "
                         f"command again to resume")
        self.signal_name = signal_name


def chained_keys(settings: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each stage's key (stages in the dict's order): its settings plus the key of the stage before,
    so a change anywhere upstream invalidates everything after it."""
    keys, previous = {}, None
    for name, value in settings.items():
        keys[name] = {"settings": value, "after": previous}
        previous = keys[name]
    return keys


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two JSON-like trees differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += differences(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if old == new else [prefix or "(all)"]


def write_json(path: Path, obj: Any) -> None:
    """Writes through a temporary file renamed into place, so readers never see half a file."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1) + "\n")


class StagedJob:
    """Runs `stages()` in order over the ledger in OUT. A subclass names its stages (the settings
    each depends on, in order), the builder of each (returning the facts the ledger keeps) and the
    outputs a rebuild removes."""

    tag = "demo"  # prefix of the progress lines
    resumable_stages: tuple[str, ...] = (TRAIN_STAGE,)  # training stages: resumed, not rebuilt

    def __init__(self, out: str | Path, settings: dict[str, dict[str, Any]],
                 log: Callable[[str], None] | None = None, total_stages: int | None = None):
        self.out = Path(out)
        self.ledger_path = self.out / LEDGER
        self.keys = chained_keys(settings)
        self.total_stages = total_stages or len(settings)
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self.ledger: dict = {}
        self.ran: list[str] = []

    def say(self, message: str) -> None:
        self.log(f"[{self.tag}] {message}")

    def builders(self) -> dict[str, Callable[[], dict]]:
        raise NotImplementedError

    def outputs(self, name: str) -> list[Path]:
        raise NotImplementedError

    def run_stages(self) -> float:
        """Runs (or skips) every keyed stage; returns this run's wall time."""
        self.out.mkdir(parents=True, exist_ok=True)
        self.ledger = self._read_ledger()
        self.load_start = os.getloadavg()
        self.ran = []
        start = time.monotonic()
        builders = self.builders()
        for index, name in enumerate(self.keys, start=1):
            self._stage(index, name, builders[name])
        return time.monotonic() - start

    def _stage(self, index: int, name: str, build: Callable[[], dict]) -> None:
        header = f"{index}/{self.total_stages} {name}"
        entry = self.ledger.get(name)
        key = self.keys[name]
        if entry is not None and entry["key"] == key and entry["done"]:
            self.say(f"{header}: done already ({entry['seconds']:.0f} s when built), skipped")
            return
        resumable = name in self.resumable_stages and entry is not None and entry["key"] == key
        if entry is not None and entry["key"] != key:
            changed = differences(entry["key"], key)
            self.say(f"{header}: settings changed since it was built ({', '.join(changed[:6])}); rebuilding")
        if not resumable:
            for path in self.outputs(name):
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
        previous_seconds = entry["seconds"] if resumable else 0.0
        self.say(f"{header}: {'resuming' if resumable else 'building'}")
        self.ledger[name] = {"key": key, "done": False, "seconds": previous_seconds, "facts": {}}
        self._write_ledger()
        start = time.monotonic()
        try:
            facts = build()
        finally:
            # an interrupted training run keeps its time, so the summary counts all of it
            self.ledger[name]["seconds"] = previous_seconds + time.monotonic() - start
            self._write_ledger()
        self.ledger[name].update(done=True, facts=facts)
        self._write_ledger()
        self.ran.append(name)
        self.say(f"{header}: finished in {self.ledger[name]['seconds']:.0f} s")

    def _read_ledger(self) -> dict:
        path = self.ledger_path
        if not path.is_file():
            return {}
        try:
            ledger = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise DemoError(f"{path}: unreadable ({err}); delete it to rebuild every stage") from None
        if not isinstance(ledger, dict):
            raise DemoError(f"{path}: expected an object of stages; delete it to rebuild every stage")
        return ledger

    def _write_ledger(self) -> None:
        write_json(self.ledger_path, self.ledger)

    def facts(self, name: str) -> dict:
        return self.ledger[name]["facts"]

    def stage_seconds(self, report_seconds: float) -> dict[str, float]:
        seconds = {name: round(self.ledger[name]["seconds"], 1) for name in self.keys}
        seconds["report"] = round(report_seconds, 1)
        return seconds

    def machine(self) -> dict:
        return {"cpu_model": cpu_model(), "cpus": os.cpu_count(),
                "load_average_start": [round(x, 2) for x in self.load_start],
                "load_average_end": [round(x, 2) for x in os.getloadavg()]}


def corpus_settings(d, text_lm_sentences: int = 0) -> dict[str, Any]:
    """What the corpus stage's output depends on (d: a DemoCorpusConfig)."""
    return {"utterances": d.utterances, "dev_utterances": d.dev_utterances, "test_utterances": d.test_utterances,
            "text_lm_sentences": text_lm_sentences, "seed": d.corpus_seed, "voices": list(d.voices),
            "pitches": list(d.pitches), "rate_wpm": list(d.rate_wpm), "vocabulary": d.vocabulary}


def corpus_speakers(d):
    """The corpus's speakers (demo.voices, demo.pitches, demo.rate_wpm; empty: synth's defaults)."""
    from most_jax.corpus import synth

    try:
        return synth.SpeakerSet(d.voices or synth.VOICES, d.pitches or synth.PITCHES, d.rate_wpm or synth.RATE_WPM)
    except ValueError as exc:
        raise DemoError(f"demo.voices / demo.pitches / demo.rate_wpm: {exc}") from None


def build_corpus(out: Path, d, say: Callable[[str], None], text_lm_sentences: int = 0) -> dict:
    """The built-in eSpeak corpus in `out`: train, dev and test over disjoint sentences, plus
    text-LM sentences disjoint from all of them; returns the ledger's facts."""
    from most_jax.corpus import synth

    info = synth.synthesize_corpus(out, d.utterances, seed=d.corpus_seed, workers=d.workers,
                                   dev_fraction=d.dev_utterances / d.utterances,
                                   test_fraction=d.test_utterances / d.utterances, num_text_lm=text_lm_sentences,
                                   speaker_set=corpus_speakers(d), vocabulary_limit=d.vocabulary or None, log=say)
    return {"utterances": info["utterances"], "hours": info["hours"],
            "text_lm_sentences": info["text_lm_sentences"], "vocabulary_words": info["vocabulary_size"]}


def train(cfg, run_dir: Path, batches) -> Any:
    """The common trainer on `batches`, resuming run_dir's latest checkpoint; a run stopped by
    SIGTERM/SIGINT (its checkpoint saved) raises DemoInterrupted."""
    from most_jax.train.loop import run_training

    result = run_training(cfg, run_dir, batches, resume=True, console=sys.stderr)
    if result.stopped_by in ("SIGTERM", "SIGINT"):
        raise DemoInterrupted(result.stopped_by, result.step)
    return result
