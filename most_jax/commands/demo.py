"""`most demo` (MoST) and `most demo u2pp` (U2++ MoE): the main jobs, end to end on one machine."""

from __future__ import annotations

import argparse
import signal
import sys

from most_jax.commands import UsageError
from most_jax.commands.group import add_config_args

DESCRIPTION = """\
Synthesises the built-in speech corpus (train and held-out test over disjoint sentences), fits a
sentencepiece tokenizer and a k-means unit codebook, prepares the training records and the
held-out set, trains a small MAMoE MoST on ASR + TTS + text LM, evaluates ASR by generation on
the held-out utterances (whose sentences never occur in training) and prints the WER. Writes
OUT/curves.png (loss per task) and OUT/summary.json (wall time per stage, WER, final per-task
losses, sizes, machine load).

Settings come from the config (default: the shipped demo.yaml, configs/demo.yaml in the source
tree): its model, data and train sections train the model, its demo section sizes the corpus,
tokenizer, units and evaluation and is not stored with the checkpoints; override any field with
--set, e.g. --set demo.utterances=4000 --set train.steps=800.

`most demo u2pp` is the second main job: the built-in corpus with train / dev / test splits over
disjoint sentences, a sentencepiece tokenizer fitted on the training transcripts, U2++ records
(fbank, WeNet ids, global CMVN), a small U2++ MoE trained by the common trainer, then dev and test
WER side by side for non-streaming attention rescoring, CTC greedy and streaming (chunk 16 and
chunk 4, rescoring at the end). Its settings: the shipped u2pp_demo.yaml (configs/u2pp_demo.yaml);
output default runs/u2pp_demo.

`most demo --full` (the MoST job; the same as --set demo.full=true) goes on after the ASR
evaluation: it trains a unit vocoder on the training audio (demo.vocoder_config, default the
shipped vocoder_demo.yaml), writes TTS waveforms of held-out sentences to OUT/tts_*.wav (texts in
OUT/tts_texts.json), measures TTS WER through the demo model as its own ASR next to two floors (the
original eSpeak audio, the vocoder's resynthesis of the reference units) and scores the built-in
sWUGGY-like and sBLIMP-like spoken pairs (OUT/speech.json, OUT/audio_lm.json, summary.json).
Run after a plain `most demo` with the same OUT, it builds only these stages.

A re-run with the same OUT skips finished stages, rebuilds those whose settings changed (and the
ones after them), and resumes an interrupted training run from its latest checkpoint. SIGTERM or
Ctrl-C during training saves a checkpoint first.
"""


JOBS = ("most", "u2pp")


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="the main jobs: corpus -> train -> held-out WER (MoST, or U2++ "
                                   "with `demo u2pp`)", description=DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("job", nargs="?", choices=JOBS, default="most",
                        help="most (default): the MoST main job; u2pp: the U2++ MoE one")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output directory (default runs/demo, or runs/u2pp_demo for u2pp)")
    parser.add_argument("--full", action="store_true",
                        help="MoST job: also train a vocoder, write OUT/tts_*.wav, measure TTS WER and audio-LM "
                             "pair accuracy (demo.full=true)")
    add_config_args(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from most_jax.config import U2ppDemoConfig, load_demo_config
    from most_jax.stages import DemoInterrupted

    if args.job == "u2pp":
        from most_jax.demo_u2pp import DEFAULT_CONFIG, U2ppDemo as job, mode_names

        demo_class, out = U2ppDemoConfig, args.out or "runs/u2pp_demo"
    else:
        from most_jax.config import DemoConfig
        from most_jax.demo import DEFAULT_CONFIG, Demo as job

        demo_class, out = DemoConfig, args.out or "runs/demo"
    config = args.config or DEFAULT_CONFIG
    name = "most demo u2pp" if args.job == "u2pp" else "most demo"
    if args.full and args.job == "u2pp":
        raise UsageError("--full is an option of the MoST job (most demo --full)")
    overrides = [*args.overrides, *(["demo.full=true"] if args.full else [])]
    try:
        cfg, demo = load_demo_config(config, overrides, demo_class)
        summary = job(cfg, demo, out, config_name=config, overrides=tuple(overrides)).run()
    except DemoInterrupted as stop:
        print(f"{name}: {stop}", file=sys.stderr)
        return 128 + int(signal.Signals[stop.signal_name])
    if args.job == "u2pp":
        print(wer_table(summary, mode_names(demo)))
        print(f"{summary['total_seconds'] / 60:.1f} min end to end")
        return 0
    print(f"held-out ASR WER {100 * summary['wer']:.2f}% ({summary['word_errors']} errors / {summary['words']} "
          f"words, {summary['test_utterances']} utterances); {summary['total_seconds'] / 60:.1f} min end to end")
    if "speech" in summary:
        speech, floors = summary["speech"], summary["speech"]["floors"]
        print(f"TTS WER {100 * speech['tts_wer']['wer']:.2f}% over {speech['utterances']} held-out sentences (floors: "
              f"original audio {100 * floors['original']['wer']:.2f}%, vocoder resynthesis "
              f"{100 * floors['resynthesis']['wer']:.2f}%); waveforms: "
              + ", ".join(w["file"] for w in speech["wavs"]))
        print("audio-LM pair accuracy (summed / length-normalised log-likelihood): " + ", ".join(
            f"{name} {100 * acc['sum']:.1f}% / {100 * acc['mean']:.1f}%" for name, acc in summary["audio_lm"].items()))
    return 0


def wer_table(summary: dict, modes: tuple[str, ...]) -> str:
    """The U2++ job's WERs, one row per mode, one column per split."""
    splits = list(summary["wer"])
    width = max(len(m) for m in modes)
    heads = [f"{s} ({summary['utterances'][s]} utt)" for s in splits]
    lines = [f"{'WER %':<{width}}  " + "  ".join(f"{h:>16}" for h in heads)]
    for mode in modes:
        lines.append(f"{mode:<{width}}  " + "  ".join(f"{100 * summary['wer'][s][mode]:>16.2f}" for s in splits))
    return "\n".join(lines)
