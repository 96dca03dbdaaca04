"""The second main job (`most demo u2pp`): from nothing to streaming and non-streaming WER of a U2++ MoE.

Stages, each writing its outputs under OUT (the machinery is most_jax/stages.py, shared with `most demo`):

    corpus     corpus/              the built-in eSpeak corpus; train, dev and test over disjoint sentences
    tokenizer  tokenizer/           sentencepiece BPE fitted on the training transcripts only
    prepare    prepared/ dev/ test/ U2++ records (16-bit PCM + WeNet ids, global CMVN of the training fbank)
    train      train/               a small U2++ MoE through the common trainer (metrics.jsonl, checkpoints)
    eval       eval.json            dev and test WER of each decoding mode
    report     curves.png summary.json

Decoding modes (WeNet's recognize.py): attention_rescoring (full context: the CTC prefix beam's n-best
rescored by both attention decoders), ctc_greedy (full context) and, per demo.streaming_chunks,
streaming_chunk<N>: the encoder attends chunk by chunk (N frames after subsampling, all history)
as the streaming runtime does, then attention rescoring at the end of the utterance. The chunk-masked
forward it runs equals the cached chunk-by-chunk one (models/u2pp/decode.py transcribe_streaming,
checked in tests/test_u2pp_decode.py), batched. Model choices are made on dev; test is reported.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from most_jax.config import Config, U2ppDemoConfig, config_from_dict, to_dict
from most_jax.stages import DemoError, StagedJob, build_corpus, corpus_settings, train, write_json

# Shipped with the package (configs/u2pp_demo.yaml), so `most demo u2pp` finds it from any directory.
DEFAULT_CONFIG = "u2pp_demo.yaml"
SUMMARY = "summary.json"
EVAL = "eval.json"
CURVES = "curves.png"
STAGES = ("corpus", "tokenizer", "prepare", "train", "eval", "report")
EVAL_SPLITS = ("dev", "test")
# Padded frames of an evaluation batch are rounded up to a multiple of this, so the encoder
# compiles for a few shapes rather than one per batch.
FRAME_QUANTUM = 128


def mode_names(d: U2ppDemoConfig) -> tuple[str, ...]:
    return ("attention_rescoring", "ctc_greedy", *(f"streaming_chunk{c}" for c in d.streaming_chunks))


class Paths:
    """Where each stage writes, under the job's output directory."""

    def __init__(self, out: Path):
        self.out = out
        self.corpus, self.tokenizer, self.train = out / "corpus", out / "tokenizer", out / "train"
        self.prepared, self.dev, self.test = out / "prepared", out / "dev", out / "test"
        self.eval, self.curves, self.summary = out / EVAL, out / CURVES, out / SUMMARY

    def split(self, name: str) -> Path:
        return {"train": self.prepared, "dev": self.dev, "test": self.test}[name]


def stage_settings(cfg: Config, d: U2ppDemoConfig) -> dict[str, dict[str, Any]]:
    """What each stage's output depends on, besides the outputs of the stages before it."""
    return {
        "corpus": corpus_settings(d),
        "tokenizer": {"size": d.tokenizer_size},
        "prepare": {"max_audio_seconds": cfg.data.max_audio_seconds, "max_tokens": cfg.data.seq_len},
        # data.records and the vocabulary size come from the prepare stage's outputs (whose key the
        # train key chains), so the configured ones are left out of it
        "train": {"model": {k: v for k, v in to_dict(cfg.model).items() if k != "vocab_size"},
                  "data": {k: v for k, v in to_dict(cfg.data).items() if k != "records"},
                  "train": to_dict(cfg.train)},
        "eval": {"batch_size": d.eval_batch_size, "beam": d.beam, "ctc_weight": d.ctc_weight,
                 "streaming_chunks": list(d.streaming_chunks)},
    }


class U2ppDemo(StagedJob):
    """Runs the stages in order; `run()` returns the summary dict."""

    tag = "demo u2pp"

    def __init__(self, cfg: Config, demo: U2ppDemoConfig, out: str | Path, config_name: str = "",
                 overrides: tuple[str, ...] = (), log: Callable[[str], None] | None = None):
        if cfg.model.family != "u2pp":
            raise DemoError(f"{config_name or 'the config'}: model.family is {cfg.model.family!r}; `most demo u2pp` "
                            f"trains a U2++ model (model.family: u2pp)")
        super().__init__(out, stage_settings(cfg, demo), log, total_stages=len(STAGES))
        self.cfg, self.demo = cfg, demo
        self.paths = Paths(Path(out))
        self.config_name = config_name
        self.overrides = tuple(overrides)

    def run(self) -> dict:
        summary = self.build_report(self.run_stages())
        self.say(f"end to end {summary['total_seconds'] / 60:.1f} min; wrote {self.paths.summary} and "
                 f"{self.paths.curves}")
        return summary

    def builders(self) -> dict[str, Callable[[], dict]]:
        return {"corpus": self.build_corpus, "tokenizer": self.build_tokenizer, "prepare": self.build_prepare,
                "train": self.build_train, "eval": self.build_eval}

    def outputs(self, name: str) -> list[Path]:
        p = self.paths
        return {"corpus": [p.corpus], "tokenizer": [p.tokenizer], "prepare": [p.prepared, p.dev, p.test],
                "train": [p.train], "eval": [p.eval]}[name]

    # ------------------------------------------------------------------ stages
    def build_corpus(self) -> dict:
        return build_corpus(self.paths.corpus, self.demo, self.say)

    def build_tokenizer(self) -> dict:
        from most_jax.data.tokenizers import train_sentencepiece

        # The training transcripts only: dev and test sentences never reach the tokenizer.
        texts = [row["text"] for row in _manifest(self.paths.corpus / "train.jsonl")]
        with tempfile.TemporaryDirectory(dir=self.paths.out, prefix=".tokenizer-text-") as tmp:
            lines = Path(tmp) / "train.txt"
            lines.write_text("".join(text + "\n" for text in texts), encoding="utf-8")
            tok = train_sentencepiece([lines], self.paths.tokenizer, self.demo.tokenizer_size)
        return {"pieces": tok.text_size}

    def build_prepare(self) -> dict:
        from most_jax.data.prepare import PrepareOptions, manifest_items, prepare

        options = PrepareOptions(str(self.paths.tokenizer), None, self.cfg.data.max_audio_seconds,
                                 max_tokens=self.cfg.data.seq_len, workers=self.demo.workers, family="u2pp")
        # Held-out utterances of any length are kept: leaving out long ones would flatter the WER.
        held_out = dataclasses.replace(options, max_audio_seconds=1e9, max_tokens=1 << 20)
        facts = {}
        for split in ("train", *EVAL_SPLITS):
            items = manifest_items(self.paths.corpus / f"{split}.jsonl")
            self.say(f"preparing {len(items)} {split} utterances (fbank CMVN, WeNet ids)")
            report = prepare(items, self.paths.split(split), options if split == "train" else held_out,
                             total=len(items))
            facts[split] = {k: report[k] for k in ("records_by_kind", "hours", "skipped")}
        return facts

    def training_config(self) -> Config:
        """The configured model/data/train sections on this run's records and vocabulary."""
        from most_jax.data.speech_pipeline import SpeechData

        vocab_size = SpeechData(self.paths.prepared).vocab_size
        if vocab_size != self.cfg.model.vocab_size:
            self.say(f"model vocabulary set from the prepared records: vocab_size {vocab_size} (tokenizer "
                     f"{vocab_size - 2} + blank + sos/eos)")
        model = dataclasses.replace(self.cfg.model, vocab_size=vocab_size)
        data = dataclasses.replace(self.cfg.data, records=str(self.paths.prepared))
        return config_from_dict(to_dict(dataclasses.replace(self.cfg, model=model, data=data)))

    def build_train(self) -> dict:
        from most_jax.data.speech_pipeline import build_speech_dataset

        cfg = self.training_config()
        params, active = parameter_counts(cfg)
        self.say(f"model: {params:,} parameters ({active:,} per frame), {cfg.train.steps} steps of "
                 f"{cfg.data.batch_size} utterances")
        result = train(cfg, self.paths.train, iter(build_speech_dataset(cfg)))
        return {"steps": result.step, "params": params, "active_params": active, "vocab_size": cfg.model.vocab_size}

    def build_eval(self) -> dict:
        from most_jax.checkpoint.params_io import restore_model
        from most_jax.data.tokenizers import load_tokenizer

        overrides = [f"model.{side}.moe.dispatch=dropless" for side in ("encoder", "decoder")
                     if getattr(self.cfg.model, side).mlp_type == "moe"]
        # Dropless routing: an utterance's output never depends on the rest of its batch.
        _, model = restore_model(self.paths.train, overrides)
        tokenizer = load_tokenizer(self.paths.tokenizer)
        result, facts = {}, {}
        for split in EVAL_SPLITS:
            references = {row["id"]: row["text"] for row in _manifest(self.paths.corpus / f"{split}.jsonl")}
            ids, feats = split_features(self.paths.split(split))
            if not ids:
                raise DemoError(f"{self.paths.split(split)}: no utterances to decode")
            self.say(f"decoding {len(ids)} {split} utterances in {len(mode_names(self.demo))} modes")
            start = time.monotonic()
            hyps = decode_modes(model, feats, self.demo)
            seconds = time.monotonic() - start
            result[split] = score_modes([references[i] for i in ids], hyps,
                                        lambda tokens: tokenizer.decode([t - 1 for t in tokens]))
            result[split]["utterances"] = len(ids)
            result[split]["decode_seconds"] = round(seconds, 1)
            result[split]["audio_seconds"] = round(sum(len(f) for f in feats) / 100.0, 1)
            self.say(f"{split}: " + ", ".join(f"{mode} {100 * result[split][mode]['wer']:.2f}%"
                                              for mode in mode_names(self.demo)) + f" ({seconds:.0f} s)")
        write_json(self.paths.eval, result)
        facts = {split: {mode: result[split][mode]["wer"] for mode in mode_names(self.demo)}
                 for split in EVAL_SPLITS}
        return facts

    def build_report(self, this_run_seconds: float) -> dict:
        from most_jax.train.curves import plot_losses, read_metrics

        start = time.monotonic()
        records = read_metrics(self.paths.train)
        plot_losses(records, self.paths.curves, title=f"most demo u2pp: {self.paths.out}",
                    names=("loss", "loss_ctc", "loss_att"), ylabel="loss (per utterance)")
        result = json.loads(self.paths.eval.read_text())
        modes = mode_names(self.demo)
        last = records[-1]
        corpus, prepared, trained = self.facts("corpus"), self.facts("prepare"), self.facts("train")
        stage_seconds = self.stage_seconds(time.monotonic() - start)
        summary = {
            "wer": {split: {mode: result[split][mode]["wer"] for mode in modes} for split in EVAL_SPLITS},
            "words": {split: result[split][modes[0]]["words"] for split in EVAL_SPLITS},
            "utterances": {split: result[split]["utterances"] for split in EVAL_SPLITS},
            "decode_seconds": {split: result[split]["decode_seconds"] for split in EVAL_SPLITS},
            "final_losses": {"step": last["step"], **{k: last.get(k) for k in ("loss", "loss_ctc", "loss_att",
                                                                                "th_accuracy")}},
            "stage_seconds": stage_seconds,
            "total_seconds": round(sum(stage_seconds.values()), 1),
            "this_run_seconds": round(this_run_seconds + stage_seconds["report"], 1),
            "stages_run": self.ran + ["report"],
            "sizes": {"utterances": corpus["utterances"], "hours": corpus["hours"],
                      "corpus_vocabulary_words": corpus["vocabulary_words"],
                      "tokenizer_pieces": self.facts("tokenizer")["pieces"], "records": prepared,
                      "params": trained["params"], "active_params": trained["active_params"],
                      "vocab_size": trained["vocab_size"], "train_steps": trained["steps"],
                      "batch_size": self.cfg.data.batch_size},
            "machine": {**self.machine(), "frames_per_s_last_window": last.get("tokens_per_s"),
                        "seconds_per_step_last_window": last.get("step_time_s")},
            "config": self.config_name, "overrides": list(self.overrides),
        }
        write_json(self.paths.summary, summary)
        return summary


EXPERT_LEAVES = ("w_1", "w_2", "b_1", "b_2")  # an MoE FFN's per-expert weights (its gate is shared)


def parameter_counts(cfg: Config) -> tuple[int, int]:
    """(all parameters, those one frame uses: all but the experts its MoE layers do not route it to)."""
    import jax
    from flax import nnx

    from most_jax.models.family import abstract_model

    params = nnx.state(abstract_model(cfg.model), nnx.Param)
    total, unused = 0, 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        size = int(np.prod(leaf.shape))
        total += size
        names = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
        side = {"encoder": cfg.model.encoder, "decoder": cfg.model.decoder}.get(names[0])
        if side is not None and side.mlp_type == "moe" and any(n.startswith("feed_forward") for n in names) \
                and names[-2] in EXPERT_LEAVES:
            unused += size * (side.moe.num_experts - side.moe.top_k) // side.moe.num_experts
    return total, total - unused


def _manifest(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def split_features(directory: Path) -> tuple[list[str], list[np.ndarray]]:
    """(record ids, 80-bin fbank [U, 80] without dither) of a prepared U2++ directory's utterances."""
    from most_jax.data import records as rec
    from most_jax.data.speech_pipeline import SpeechData
    from most_jax.speech.features import fbank

    data = SpeechData(directory)
    ids, feats = [], []
    for i in range(len(data.source)):
        record = rec.decode_record(data.source[i])
        ids.append(record.id)
        feats.append(fbank(record.arrays["pcm"].astype(np.float32) / 32768.0).astype(np.float32))
    return ids, feats


def decode_modes(model, feats: list[np.ndarray], d: U2ppDemoConfig) -> dict[str, list[tuple[int, ...]]]:
    """Token ids of every utterance in every mode (mode_names). Utterances are decoded in batches of
    similar length, padded to FRAME_QUANTUM frames and to a whole batch (repeating the first)."""
    from most_jax.models.u2pp import decode

    rescoring = decode.DecodeOptions(mode="attention_rescoring", beam=d.beam, ctc_weight=d.ctc_weight,
                                     reverse_weight=model.cfg.reverse_weight)
    greedy = decode.DecodeOptions(mode="ctc_greedy")
    order = np.argsort([len(f) for f in feats], kind="stable")
    out: dict[str, list] = {mode: [None] * len(feats) for mode in mode_names(d)}
    for start in range(0, len(order), d.eval_batch_size):
        rows = order[start:start + d.eval_batch_size]
        batch = list(rows) + [rows[0]] * (d.eval_batch_size - len(rows))
        lengths = np.array([len(feats[i]) for i in batch], np.int32)
        frames = -(-int(lengths.max()) // FRAME_QUANTUM) * FRAME_QUANTUM
        x = np.zeros((len(batch), frames, feats[0].shape[1]), np.float32)
        for j, i in enumerate(batch):
            x[j, :lengths[j]] = feats[i]
        full = decode.encode(model, x, lengths)
        results = {"attention_rescoring": decode.finish(model, rescoring, *full),
                   "ctc_greedy": decode.finish(model, greedy, *full)}
        for chunk in d.streaming_chunks:
            streamed = decode.encode(model, x, lengths, chunk=chunk)
            results[f"streaming_chunk{chunk}"] = decode.finish(model, rescoring, *streamed)
        for mode, hyps in results.items():
            for j, i in enumerate(rows):
                out[mode][i] = hyps[j].tokens
    return out


def score_modes(references: list[str], hyps: dict[str, list[tuple[int, ...]]],
                detokenize: Callable[[tuple[int, ...]], str]) -> dict[str, dict]:
    """Per mode: corpus WER (word_error_rate) and every utterance's reference and hypothesis."""
    from most_jax.eval.wer import word_error_rate

    result = {}
    for mode, tokens in hyps.items():
        texts = [detokenize(t) for t in tokens]
        result[mode] = {**word_error_rate(references, texts),
                        "examples": [{"reference": r, "hypothesis": h} for r, h in zip(references, texts)]}
    return result
