"""The main job (`most demo`): from nothing to a held-out ASR word error rate on one machine.

Stages, each writing its outputs under OUT:

    corpus     corpus/          the built-in eSpeak corpus; train, dev and test over disjoint sentences
    tokenizer  tokenizer/       sentencepiece BPE fitted on the text-LM sentences
    units      units/           k-means speech units fitted on training audio
    prepare    prepared/ dev/ test/  training records (speech pairs + text LM) and the held-out pairs
    train      train/           a small MAMoE MoST on ASR + TTS + text LM (metrics.jsonl, checkpoints)
    eval       eval.json        dev and test ASR WER and test TTS unit accuracy, by generation
    report     curves.png summary.json

`most demo --full` (demo.full) adds speech out, after eval:

    vocoder    vocoder/         a unit vocoder (demo.vocoder_config) trained on the training audio
    speech     speech.json tts_*.wav   TTS waveforms of held-out sentences; TTS WER through the
                                demo model as its own ASR, next to the original-audio and the
                                vocoder-resynthesis floors
    audio_lm   audio_lm/ audio_lm.json  sWUGGY-like and sBLIMP-like pair accuracies

Recipe choices are judged on dev; the test WER is the reported figure. OUT/stages.json records
each finished stage (most_jax/stages.py, shared with `most demo u2pp`): a re-run skips finished
stages, rebuilds those whose settings changed and resumes an interrupted training run from its
latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

from most_jax.config import Config, DemoConfig, config_from_dict, to_dict
from most_jax.stages import (DemoError, DemoInterrupted, StagedJob, build_corpus, chained_keys, corpus_settings,
                             corpus_speakers, differences, train, write_json)

__all__ = ["Demo", "DemoError", "DemoInterrupted", "STAGES", "chained_keys", "differences", "stage_settings"]

# Shipped with the package (configs/demo.yaml), so `most demo` finds it from any directory.
DEFAULT_CONFIG = "demo.yaml"
SUMMARY = "summary.json"
EVAL = "eval.json"
CURVES = "curves.png"
STAGES = ("corpus", "tokenizer", "units", "prepare", "train", "eval", "report")
FULL_STAGES = ("vocoder", "speech", "audio_lm")  # with demo.full, between eval and report
EVAL_SPLITS = ("dev", "test")
SPEAKER = 0  # the vocoder voice of the speech stage (speaker ids: the corpus voices in sorted order)


class Paths:
    """Where each stage writes, under the demo's output directory."""

    def __init__(self, out: Path):
        self.out = out
        self.corpus, self.tokenizer, self.units = out / "corpus", out / "tokenizer", out / "units"
        self.prepared, self.dev, self.test, self.train = out / "prepared", out / "dev", out / "test", out / "train"
        self.eval, self.curves, self.summary = out / EVAL, out / CURVES, out / SUMMARY
        self.vocoder, self.speech, self.audio_lm_pairs = out / "vocoder", out / "speech.json", out / "audio_lm"
        self.audio_lm = out / "audio_lm.json"

    def tts_wavs(self) -> list[Path]:
        return sorted(self.out.glob("tts_*.wav")) + [self.out / "tts_texts.json"]


def stage_settings(cfg: Config, d: DemoConfig) -> dict[str, dict[str, Any]]:
    """What each stage's output depends on, besides the outputs of the stages before it."""
    settings = {
        "corpus": corpus_settings(d, text_lm_sentences=d.text_lm_sentences),
        "tokenizer": {"size": d.tokenizer_size},
        "units": {"k": d.units_k, "rate": d.units_rate, "features": d.units_features, "pooling": d.units_pooling,
                  "cmvn": d.units_cmvn, "min_run": d.units_min_run, "hours": d.units_hours,
                  "epochs": d.kmeans_epochs,
                  # only when set, so the keys of runs made before the option existed still hold
                  **({"feature_options": d.units_feature_options()} if d.units_feature_options() else {})},
        "prepare": {"max_audio_seconds": cfg.data.max_audio_seconds, "max_tokens": cfg.data.seq_len},
        # data.records and the vocabulary are filled in from the prepare stage's outputs (whose
        # key the train key chains), so the configured ones are left out of it
        "train": {"model": {k: v for k, v in to_dict(cfg.model).items() if k not in ("vocab", "vocab_size")},
                  "data": {k: v for k, v in to_dict(cfg.data).items() if k != "records"},
                  "train": to_dict(cfg.train)},
        "eval": {"batch_size": d.eval_batch_size, "asr_max_new_tokens": d.asr_max_new_tokens,
                 "tts_utterances": d.tts_eval_utterances, "tts_max_new_tokens": d.tts_max_new_tokens},
    }
    if d.full:
        settings.update({
            "vocoder": {"config": to_dict(vocoder_config(d)), "utterances": d.vocoder_utterances},
            "speech": {"wavs": d.tts_wav_sentences, "utterances": d.tts_wer_utterances, "speaker": SPEAKER,
                       "tts_max_new_tokens": d.tts_max_new_tokens, "asr_max_new_tokens": d.asr_max_new_tokens},
            "audio_lm": {"pairs": d.audio_lm_pairs, "seed": d.corpus_seed, "voices": "corpus"}})
    return settings


def vocoder_config(d: DemoConfig) -> Config:
    """The speech stage's vocoder: demo.vocoder_config speaking the demo's units for demo.vocoder_steps."""
    from most_jax.config import load_config

    return load_config(d.vocoder_config, [f"model.num_units={d.units_k}", f"train.steps={d.vocoder_steps}"])


class Demo(StagedJob):
    """Runs the stages in order; `run()` returns the summary dict."""

    resumable_stages = ("train", "vocoder")

    def __init__(self, cfg: Config, demo: DemoConfig, out: str | Path, config_name: str = "",
                 overrides: tuple[str, ...] = (), log: Callable[[str], None] | None = None):
        super().__init__(out, stage_settings(cfg, demo), log,
                         total_stages=len(STAGES) + (len(FULL_STAGES) if demo.full else 0))
        self.cfg, self.demo = cfg, demo
        self.paths = Paths(Path(out))
        self.config_name = config_name
        self.overrides = tuple(overrides)

    def run(self) -> dict:
        summary = self.build_report(self.run_stages())
        self.say(f"test ASR WER {100 * summary['wer']:.2f}% on {summary['test_utterances']} utterances (dev "
                 f"{100 * summary['dev_wer']:.2f}%); "
                 f"end to end {summary['total_seconds'] / 60:.1f} min; wrote {self.paths.summary} and "
                 f"{self.paths.curves}")
        return summary

    def builders(self) -> dict[str, Callable[[], dict]]:
        return {"corpus": self.build_corpus, "tokenizer": self.build_tokenizer, "units": self.build_units,
                "prepare": self.build_prepare, "train": self.build_train, "eval": self.build_eval,
                "vocoder": self.build_vocoder, "speech": self.build_speech, "audio_lm": self.build_audio_lm}

    def outputs(self, name: str) -> list[Path]:
        p = self.paths
        return {"corpus": [p.corpus], "tokenizer": [p.tokenizer], "units": [p.units],
                "prepare": [p.prepared, p.dev, p.test], "train": [p.train], "eval": [p.eval],
                "vocoder": [p.vocoder], "speech": [p.speech, *p.tts_wavs()],
                "audio_lm": [p.audio_lm_pairs, p.audio_lm]}[name]

    # ------------------------------------------------------------------ stages
    def build_corpus(self) -> dict:
        return build_corpus(self.paths.corpus, self.demo, self.say, text_lm_sentences=self.demo.text_lm_sentences)

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
                                feature_options=d.units_feature_options(), unit_rate=d.units_rate,
                                pooling=d.units_pooling, utterance_cmvn=d.units_cmvn,
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
        held_out_options = dataclasses.replace(options, max_tokens=1 << 20)
        reports = {"train": _report_facts(train)}
        for split in EVAL_SPLITS:
            split_items = manifest_items(corpus / f"{split}.jsonl")
            self.say(f"preparing {len(split_items)} held-out {split} pairs")
            reports[split] = _report_facts(prepare(split_items, getattr(self.paths, split), held_out_options,
                                                   total=len(split_items)))
        return reports

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

        cfg = self.training_config()
        params = count_params(cfg.model)
        self.say(f"model: {params:,} parameters ({active_params(cfg, params):,} active per token), "
                 f"{cfg.train.steps} steps of {cfg.data.batch_size} x {cfg.data.seq_len} tokens, mixture "
                 f"{_mixture(cfg)}")
        batches = iter(build_dataset(cfg.data, PreparedData(self.paths.prepared)))
        result = train(cfg, self.paths.train, batches)
        return {"steps": result.step, "params": params, "active_params": active_params(cfg, params),
                "vocab_size": cfg.model.vocab_size}

    def build_eval(self) -> dict:
        from most_jax.eval.speech import evaluate_asr, evaluate_tts, load_eval_set
        from most_jax.infer.generate import Sampling

        d = self.demo
        model, data = self._trained_model()
        result, held_out = {}, {}
        for split in EVAL_SPLITS:
            items = held_out[split] = load_eval_set(getattr(self.paths, split), data)
            if not items:
                raise DemoError(f"{getattr(self.paths, split)}: no held-out utterances to evaluate")
            self.say(f"transcribing {len(items)} held-out {split} utterances")
            asr = evaluate_asr(model, data, items, sampling=Sampling(max_new_tokens=d.asr_max_new_tokens),
                               batch_size=d.eval_batch_size)
            for example in asr["examples"][:2]:
                self.say(f"  REF: {example['reference']}\n[demo]   HYP: {example['hypothesis']}")
            self.say(f"{split} ASR WER {100 * asr['wer']:.2f}% ({asr['word_errors']} errors / {asr['words']} words)")
            result[f"asr_{split}"] = asr
        if d.tts_eval_utterances:
            self.say(f"speaking {d.tts_eval_utterances} held-out test sentences (TTS units)")
            result["tts"] = evaluate_tts(model, data, held_out["test"][:d.tts_eval_utterances],
                                         sampling=Sampling(max_new_tokens=d.tts_max_new_tokens),
                                         batch_size=d.eval_batch_size)
            self.say(f"TTS unit accuracy {100 * result['tts']['unit_accuracy']:.1f}%, unit error rate "
                     f"{100 * result['tts']['unit_error_rate']:.1f}%")
        write_json(self.paths.eval, result)
        return {split: {"wer": result[f"asr_{split}"]["wer"], "utterances": result[f"asr_{split}"]["utterances"]}
                for split in EVAL_SPLITS}

    def build_vocoder(self) -> dict:
        from most_jax.data.vocoder_batches import VocoderDataError, from_manifest

        cfg = vocoder_config(self.demo)
        try:
            batches = from_manifest(cfg, str(self.paths.units), str(self.paths.corpus / "train.jsonl"),
                                    self.demo.vocoder_utterances, log=self.say)
        except VocoderDataError as e:
            raise DemoError(f"demo.vocoder_config {self.demo.vocoder_config}: {e}") from None
        self.say(f"vocoder: {cfg.train.steps} steps of {cfg.data.batch_size} x {cfg.data.seq_len} unit frames "
                 f"({'GAN' if cfg.model.adversarial else 'mel-L1 only'})")
        result = train(cfg, self.paths.vocoder, batches)
        return {"steps": result.step, "mel_l1": (result.last_record or {}).get("mel_l1")}

    def _trained_model(self):
        """The trained MoST and its prepared assets. Dropless routing, as `most eval` does: a row's
        output never depends on the rest of its batch."""
        from most_jax.checkpoint.params_io import restore_model
        from most_jax.data.pipeline import PreparedData

        _, model = restore_model(self.paths.train, ["model.moe.dispatch=dropless"])
        return model, PreparedData(self.paths.prepared)

    def build_speech(self) -> dict:
        from most_jax.eval.speech import AsrJudge, evaluate_tts, load_eval_set
        from most_jax.infer.generate import Sampling
        from most_jax.infer.speech import synthesize_units
        from most_jax.infer.vocoder import load_vocoder, synthesize_batch, write_waveform

        d = self.demo
        model, data = self._trained_model()
        vocoder = load_vocoder(self.paths.vocoder, "the demo's vocoder")
        sampling = Sampling(max_new_tokens=d.tts_max_new_tokens)
        items = load_eval_set(self.paths.corpus / "test.jsonl", data, d.tts_wer_utterances, keep_audio=True)
        written = []
        if d.tts_wav_sentences:
            texts = [it.text for it in items[:d.tts_wav_sentences]]
            units = synthesize_units(model, data, texts, sampling=sampling, batch_size=d.eval_batch_size)
            spoken = [(t, u) for t, u in zip(texts, units) if len(u)]
            waves = synthesize_batch(vocoder, [u for _, u in spoken], SPEAKER)
            for i, ((text, _), wave) in enumerate(zip(spoken, waves)):
                path = self.paths.out / f"tts_{i}.wav"
                write_waveform(path, wave, vocoder.cfg.sample_rate)
                written.append({"file": path.name, "text": text,
                                "seconds": round(wave.size / vocoder.cfg.sample_rate, 2)})
            write_json(self.paths.out / "tts_texts.json", written)
            self.say(f"wrote {len(written)} TTS waveforms: {', '.join(w['file'] for w in written)}")
        self.say(f"TTS WER: speaking {len(items)} held-out test sentences, transcribing them with the demo model")
        judge = AsrJudge(model, data, vocoder, SPEAKER, None, max_new_tokens=d.asr_max_new_tokens)
        result = evaluate_tts(model, data, items, sampling=sampling, batch_size=d.eval_batch_size, judge=judge)
        result["wavs"] = written
        write_json(self.paths.speech, result)
        floors = result["floors"]
        self.say(f"TTS WER {100 * result['tts_wer']['wer']:.2f}% (floors: original audio "
                 f"{100 * floors['original']['wer']:.2f}%, vocoder resynthesis "
                 f"{100 * floors['resynthesis']['wer']:.2f}%)")
        return {"tts_wer": result["tts_wer"]["wer"], "original_wer": floors["original"]["wer"],
                "resynthesis_wer": floors["resynthesis"]["wer"], "utterances": result["utterances"]}

    def build_audio_lm(self) -> dict:
        from most_jax.corpus.pairs import write_spoken_pairs
        from most_jax.eval.audio_lm import score_pairs
        from most_jax.eval.pair_sets import read_pair_set

        d = self.demo
        model, data = self._trained_model()
        extractor = data.unit_extractor()
        self.say(f"speaking {d.audio_lm_pairs} lexical and {d.audio_lm_pairs} syntactic pairs")
        # spoken by the corpus's own voices: the model has heard no other
        write_spoken_pairs(self.paths.audio_lm_pairs, d.audio_lm_pairs, d.audio_lm_pairs, d.corpus_seed,
                           extractor.extract, corpus_speakers(d), log=self.say)
        result = {}
        for name in ("lexical", "syntactic"):
            pairs = read_pair_set(self.paths.audio_lm_pairs / f"{name}.jsonl", extractor.extract)
            result[name] = score_pairs(model, data.formatter, pairs, batch_size=d.eval_batch_size)
            self.say(f"audio-LM {name} accuracy {100 * result[name]['sum']['accuracy']:.1f}% (summed log-likelihood), "
                     f"{100 * result[name]['mean']['accuracy']:.1f}% (length-normalised), "
                     f"{result[name]['sum']['pairs']} pairs")
        write_json(self.paths.audio_lm, result)
        return {name: {score: result[name][score]["accuracy"] for score in ("sum", "mean")} for name in result}

    def build_report(self, this_run_seconds: float) -> dict:
        from most_jax.train.curves import loss_series, plot_losses, read_metrics

        start = time.monotonic()
        records = read_metrics(self.paths.train)
        plot_losses(records, self.paths.curves, title=f"most demo: {self.paths.out}")
        result = json.loads(self.paths.eval.read_text())
        asr, dev = result["asr_test"], result["asr_dev"]
        last = records[-1]
        corpus, prepared, train = self.facts("corpus"), self.facts("prepare"), self.facts("train")
        stage_seconds = self.stage_seconds(time.monotonic() - start)
        summary = {
            "wer": asr["wer"], "word_errors": asr["word_errors"], "words": asr["words"],
            "test_utterances": asr["utterances"],
            "dev_wer": dev["wer"], "dev_word_errors": dev["word_errors"], "dev_words": dev["words"],
            "dev_utterances": dev["utterances"],
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
                      "train_records": prepared["train"], "dev_records": prepared["dev"],
                      "test_records": prepared["test"],
                      "params": train["params"], "active_params": train["active_params"],
                      "vocab_size": train["vocab_size"], "train_steps": train["steps"],
                      "tokens_per_step": self.cfg.data.batch_size * self.cfg.data.seq_len},
            "machine": {**self.machine(), "tokens_per_s_last_window": last.get("tokens_per_s")},
            "config": self.config_name, "overrides": list(self.overrides),
        }
        if self.demo.full:
            speech = json.loads(self.paths.speech.read_text())
            summary["speech"] = {"tts_wer": speech["tts_wer"], "floors": speech["floors"],
                                 "utterances": speech["utterances"], "wavs": speech["wavs"],
                                 "vocoder": self.facts("vocoder")}
            summary["audio_lm"] = self.facts("audio_lm")
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
