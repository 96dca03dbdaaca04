"""The main job (`most demo`): from nothing to a held-out ASR word error rate on one machine.

Stages, each writing its outputs under OUT:

    corpus     corpus/          the built-in eSpeak corpus; train and test over disjoint sentences
    tokenizer  tokenizer/       sentencepiece BPE fitted on the text-LM sentences
    units      units/           k-means speech units fitted on training audio
    prepare    prepared/ test/  training records (speech pairs + text LM) and the held-out pairs
    train      train/           a small MAMoE MoST on ASR + TTS + text LM (metrics.jsonl, checkpoints)
    eval       eval.json        held-out ASR WER and TTS unit accuracy, by generation
    report     curves.png summary.json

OUT/stages.json records each finished stage with the settings it was made with and its wall time.
A re-run skips a stage whose record matches; a stage whose settings (or an earlier stage's) changed
is rebuilt. An interrupted training run resumes from its latest checkpoint. Every stage writes
through temporary paths, so a killed run never leaves a half-written output that looks finished.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

from most_jax.atomic import atomic_file
from most_jax.config import Config, DemoConfig, config_from_dict, to_dict

# Shipped with the package (configs/demo.yaml), so `most demo` finds it from any directory.
DEFAULT_CONFIG = "demo.yaml"
LEDGER = "stages.json"
SUMMARY = "summary.json"
EVAL = "eval.json"
CURVES = "curves.png"
STAGES = ("corpus", "tokenizer", "units", "prepare", "train", "eval", "report")


class DemoError(RuntimeError):
    """A stage cannot run (bad settings, missing inputs, a failed step)."""


class DemoInterrupted(RuntimeError):
    """Training stopped on SIGTERM/SIGINT after saving a checkpoint; a re-run resumes it."""

    def __init__(self, signal_name: str, step: int):
        super().__init__(f"training stopped by {signal_name} at step {step}; its checkpoint is saved, run the same "
                         f"command again to resume")
        self.signal_name = signal_name


class Paths:
    """Where each stage writes, under the demo's output directory."""

    def __init__(self, out: Path):
        self.out = out
        self.corpus, self.tokenizer, self.units = out / "corpus", out / "tokenizer", out / "units"
        self.prepared, self.test, self.train = out / "prepared", out / "test", out / "train"
        self.eval, self.curves, self.summary, self.ledger = out / EVAL, out / CURVES, out / SUMMARY, out / LEDGER


def stage_settings(cfg: Config, d: DemoConfig) -> dict[str, dict[str, Any]]:
    """What each stage's output depends on, besides the outputs of the stages before it."""
    return {
        "corpus": {"utterances": d.utterances, "test_utterances": d.test_utterances,
                   "text_lm_sentences": d.text_lm_sentences, "seed": d.corpus_seed,
                   "voices": list(d.voices), "pitches": list(d.pitches), "rate_wpm": list(d.rate_wpm),
                   "vocabulary": d.vocabulary},
        "tokenizer": {"size": d.tokenizer_size},
        "units": {"k": d.units_k, "rate": d.units_rate, "features": d.units_features, "pooling": d.units_pooling,
                  "cmvn": d.units_cmvn, "min_run": d.units_min_run, "hours": d.units_hours,
                  "epochs": d.kmeans_epochs},
        "prepare": {"max_audio_seconds": cfg.data.max_audio_seconds, "max_tokens": cfg.data.seq_len},
        # data.records and the vocabulary are filled in from the prepare stage's outputs (whose
        # key the train key chains), so the configured ones are left out of it
        "train": {"model": {k: v for k, v in to_dict(cfg.model).items() if k not in ("vocab", "vocab_size")},
                  "data": {k: v for k, v in to_dict(cfg.data).items() if k != "records"},
                  "train": to_dict(cfg.train)},
        "eval": {"batch_size": d.eval_batch_size, "asr_max_new_tokens": d.asr_max_new_tokens,
                 "tts_utterances": d.tts_eval_utterances, "tts_max_new_tokens": d.tts_max_new_tokens},
    }


def chained_keys(settings: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each stage's key: its settings plus the key of the stage before, so a change anywhere upstream
    invalidates everything after it."""
    keys, previous = {}, None
    for name in STAGES[:-1]:
        keys[name] = {"settings": settings[name], "after": previous}
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


class Demo:
    """Runs the stages in order; `run()` returns the summary dict."""

    def __init__(self, cfg: Config, demo: DemoConfig, out: str | Path, config_name: str = "",
                 overrides: tuple[str, ...] = (), log: Callable[[str], None] | None = None):
        self.cfg, self.demo = cfg, demo
        self.paths = Paths(Path(out))
        self.config_name = config_name
        self.overrides = tuple(overrides)
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self.keys = chained_keys(stage_settings(cfg, demo))

    def say(self, message: str) -> None:
        self.log(f"[demo] {message}")

    # ------------------------------------------------------------------ orchestration
    def run(self) -> dict:
        self.paths.out.mkdir(parents=True, exist_ok=True)
        self.ledger = self._read_ledger()
        self.load_start = os.getloadavg()
        self.ran: list[str] = []
        start = time.monotonic()
        builders = {"corpus": self.build_corpus, "tokenizer": self.build_tokenizer, "units": self.build_units,
                    "prepare": self.build_prepare, "train": self.build_train, "eval": self.build_eval}
        for index, name in enumerate(STAGES[:-1], start=1):
            self._stage(index, name, builders[name])
        summary = self.build_report(time.monotonic() - start)
        self.say(f"held-out ASR WER {100 * summary['wer']:.2f}% on {summary['test_utterances']} utterances; "
                 f"end to end {summary['total_seconds'] / 60:.1f} min; wrote {self.paths.summary} and "
                 f"{self.paths.curves}")
        return summary

    def _stage(self, index: int, name: str, build: Callable[[], dict]) -> None:
        header = f"{index}/{len(STAGES)} {name}"
        entry = self.ledger.get(name)
        key = self.keys[name]
        if entry is not None and entry["key"] == key and entry["done"]:
            self.say(f"{header}: done already ({entry['seconds']:.0f} s when built), skipped")
            return
        resumable = name == "train" and entry is not None and entry["key"] == key
        if entry is not None and entry["key"] != key:
            changed = differences(entry["key"], key)
            self.say(f"{header}: settings changed since it was built ({', '.join(changed[:6])}); rebuilding")
        if not resumable:
            self._remove_outputs(name)
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

    def _remove_outputs(self, name: str) -> None:
        outputs = {"corpus": [self.paths.corpus], "tokenizer": [self.paths.tokenizer], "units": [self.paths.units],
                   "prepare": [self.paths.prepared, self.paths.test], "train": [self.paths.train],
                   "eval": [self.paths.eval]}[name]
        for path in outputs:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    def _read_ledger(self) -> dict:
        path = self.paths.ledger
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
        write_json(self.paths.ledger, self.ledger)

    def facts(self, name: str) -> dict:
        return self.ledger[name]["facts"]

    # ------------------------------------------------------------------ stages
    def build_corpus(self) -> dict:
        from most_jax.corpus import synth

        d = self.demo
        try:
            speaker_set = synth.SpeakerSet(d.voices or synth.VOICES, d.pitches or synth.PITCHES,
                                           d.rate_wpm or synth.RATE_WPM)
        except ValueError as exc:
            raise DemoError(f"demo.voices / demo.pitches / demo.rate_wpm: {exc}") from None
        info = synth.synthesize_corpus(self.paths.corpus, d.utterances, seed=d.corpus_seed, workers=d.workers,
                                       dev_fraction=0.0, test_fraction=d.test_utterances / d.utterances,
                                       num_text_lm=d.text_lm_sentences, speaker_set=speaker_set,
                                       vocabulary_limit=d.vocabulary or None, log=self.say)
        return {"utterances": info["utterances"], "hours": info["hours"],
                "text_lm_sentences": info["text_lm_sentences"], "vocabulary_words": info["vocabulary_size"]}

    def build_tokenizer(self) -> dict:
        from most_jax.data.tasks import TEMPLATE_TEXTS
        from most_jax.data.tokenizers import train_sentencepiece

        # Text-LM sentences only: they are disjoint from every spoken sentence, held-out ones included.
        tok = train_sentencepiece([self.paths.corpus / "text_lm.txt"], self.paths.tokenizer,
                                  self.demo.tokenizer_size, extra_lines=TEMPLATE_TEXTS)
        return {"pieces": tok.text_size}

    def build_units(self) -> dict:
        from most_jax.speech import kmeans
        from most_jax.speech.units import fit_from_manifest

        d = self.demo
        options = kmeans.KMeansOptions(num_clusters=d.units_k, epochs=d.kmeans_epochs, seed=d.corpus_seed)
        fit = fit_from_manifest(self.paths.corpus / "train.jsonl", self.paths.units, features=d.units_features,
                                unit_rate=d.units_rate, pooling=d.units_pooling, utterance_cmvn=d.units_cmvn,
                                min_run=d.units_min_run, max_hours=d.units_hours, options=options, log=self.say)
        return {"k": d.units_k, "fit_hours": fit["hours"], "units_per_second": fit["units_per_second"]}

    def build_prepare(self) -> dict:
        from most_jax.data.prepare import PrepareOptions, manifest_items, prepare, text_items

        d, corpus = self.demo, self.paths.corpus
        options = PrepareOptions(str(self.paths.tokenizer), str(self.paths.units), self.cfg.data.max_audio_seconds,
                                 max_tokens=self.cfg.data.seq_len, workers=d.workers)
        items = manifest_items(corpus / "train.jsonl") + text_items(corpus / "text_lm.txt")
        self.say(f"preparing {len(items)} training items (speech pairs and text-LM lines)")
        train = prepare(items, self.paths.prepared, options, total=len(items))
        # Held-out pairs of any length are kept: leaving out long ones would flatter the WER.
        test_options = dataclasses.replace(options, max_tokens=1 << 20)
        test_items = manifest_items(corpus / "test.jsonl")
        self.say(f"preparing {len(test_items)} held-out pairs")
        test = prepare(test_items, self.paths.test, test_options, total=len(test_items))
        return {"train": _report_facts(train), "test": _report_facts(test)}

    def training_config(self) -> Config:
        """The configured model/data/train sections on this run's records and vocabulary layout."""
        from most_jax.data.pipeline import PreparedData

        layout = PreparedData(self.paths.prepared).layout
        model = dataclasses.replace(self.cfg.model, vocab=layout.config, vocab_size=layout.vocab_size)
        if model.vocab != self.cfg.model.vocab or model.vocab_size != self.cfg.model.vocab_size:
            self.say(f"model vocabulary set from the prepared layout: vocab_size {layout.vocab_size}, "
                     f"{layout.config.num_audio_units} units")
        data = dataclasses.replace(self.cfg.data, records=str(self.paths.prepared))
        return config_from_dict(to_dict(dataclasses.replace(self.cfg, model=model, data=data)))

    def build_train(self) -> dict:
        from most_jax.data.pipeline import PreparedData, build_dataset
        from most_jax.models.most import count_params
        from most_jax.train.loop import run_training

        cfg = self.training_config()
        params = count_params(cfg.model)
        self.say(f"model: {params:,} parameters ({active_params(cfg, params):,} active per token), "
                 f"{cfg.train.steps} steps of {cfg.data.batch_size} x {cfg.data.seq_len} tokens, mixture "
                 f"{_mixture(cfg)}")
        batches = iter(build_dataset(cfg.data, PreparedData(self.paths.prepared)))
        result = run_training(cfg, self.paths.train, batches, resume=True, console=sys.stderr)
        if result.stopped_by in ("SIGTERM", "SIGINT"):
            raise DemoInterrupted(result.stopped_by, result.step)
        return {"steps": result.step, "params": params, "active_params": active_params(cfg, params),
                "vocab_size": cfg.model.vocab_size}

    def build_eval(self) -> dict:
        from most_jax.checkpoint.params_io import restore_model
        from most_jax.data.pipeline import PreparedData
        from most_jax.eval.speech import evaluate_asr, evaluate_tts, load_eval_set
        from most_jax.infer.generate import Sampling

        d = self.demo
        # Dropless routing, as `most eval` does: a row's output never depends on the rest of its batch.
        _, model = restore_model(self.paths.train, ["model.moe.dispatch=dropless"])
        data = PreparedData(self.paths.prepared)
        items = load_eval_set(self.paths.test, data)
        if not items:
            raise DemoError(f"{self.paths.test}: no held-out utterances to evaluate")
        self.say(f"transcribing {len(items)} held-out utterances")
        asr = evaluate_asr(model, data, items, sampling=Sampling(max_new_tokens=d.asr_max_new_tokens),
                           batch_size=d.eval_batch_size)
        for example in asr["examples"][:3]:
            self.say(f"  REF: {example['reference']}\n[demo]   HYP: {example['hypothesis']}")
        self.say(f"held-out ASR WER {100 * asr['wer']:.2f}% ({asr['word_errors']} errors / {asr['words']} words)")
        result = {"asr": asr}
        if d.tts_eval_utterances:
            self.say(f"speaking {d.tts_eval_utterances} held-out sentences (TTS units)")
            result["tts"] = evaluate_tts(model, data, items[:d.tts_eval_utterances],
                                         sampling=Sampling(max_new_tokens=d.tts_max_new_tokens),
                                         batch_size=d.eval_batch_size)
            self.say(f"TTS unit accuracy {100 * result['tts']['unit_accuracy']:.1f}%, unit error rate "
                     f"{100 * result['tts']['unit_error_rate']:.1f}%")
        write_json(self.paths.eval, result)
        return {"wer": asr["wer"], "utterances": asr["utterances"], "seconds": asr["seconds"]}

    def build_report(self, this_run_seconds: float) -> dict:
        from most_jax.train.curves import loss_series, plot_losses, read_metrics

        start = time.monotonic()
        records = read_metrics(self.paths.train)
        plot_losses(records, self.paths.curves, title=f"most demo: {self.paths.out}")
        result = json.loads(self.paths.eval.read_text())
        asr = result["asr"]
        last = records[-1]
        corpus, prepared, train = self.facts("corpus"), self.facts("prepare"), self.facts("train")
        stage_seconds = {name: round(self.ledger[name]["seconds"], 1) for name in STAGES[:-1]}
        stage_seconds["report"] = round(time.monotonic() - start, 1)
        summary = {
            "wer": asr["wer"], "word_errors": asr["word_errors"], "words": asr["words"],
            "test_utterances": asr["utterances"],
            "tts": {k: result["tts"][k] for k in ("unit_accuracy", "unit_error_rate", "utterances")}
            if "tts" in result else None,
            # each task's latest logged value: a short log window may have held no sequence of a task
            "final_losses": {"step": last["step"], **{name: values[-1] for name, (_, values) in
                                                      loss_series(records).items()}},
            "stage_seconds": stage_seconds,
            "total_seconds": round(sum(stage_seconds.values()), 1),
            "this_run_seconds": round(this_run_seconds + stage_seconds["report"], 1),
            "stages_run": self.ran + ["report"],
            "sizes": {"utterances": corpus["utterances"], "hours": corpus["hours"],
                      "text_lm_sentences": corpus["text_lm_sentences"],
                      "corpus_vocabulary_words": corpus["vocabulary_words"],
                      "tokenizer_pieces": self.facts("tokenizer")["pieces"], "units_k": self.facts("units")["k"],
                      "units_per_second": self.facts("units")["units_per_second"],
                      "train_records": prepared["train"], "test_records": prepared["test"],
                      "params": train["params"], "active_params": train["active_params"],
                      "vocab_size": train["vocab_size"], "train_steps": train["steps"],
                      "tokens_per_step": self.cfg.data.batch_size * self.cfg.data.seq_len},
            "machine": {"cpus": os.cpu_count(), "load_average_start": [round(x, 2) for x in self.load_start],
                        "load_average_end": [round(x, 2) for x in os.getloadavg()],
                        "tokens_per_s_last_window": last.get("tokens_per_s")},
            "config": self.config_name, "overrides": list(self.overrides),
        }
        write_json(self.paths.summary, summary)
        return summary


def active_params(cfg: Config, total: int) -> int:
    """Parameters one token uses: all but the routed experts it is not sent to (SwiGLU: 3 matrices)."""
    moe, model = cfg.model.moe, cfg.model
    unused = model.num_moe_layers * (moe.num_experts - moe.top_k) * 3 * model.hidden_size * moe.expert_ffn_dim
    return total - unused


def _mixture(cfg: Config) -> str:
    return ", ".join(f"{f.name} {getattr(cfg.data.mixture, f.name):g}" for f in dataclasses.fields(cfg.data.mixture)
                     if getattr(cfg.data.mixture, f.name) > 0)


def _report_facts(report: dict) -> dict:
    return {k: report[k] for k in ("records_by_kind", "hours", "units_per_second", "skipped")}
