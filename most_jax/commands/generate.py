"""`most generate asr|tts`: transcribe audio files or speak text with a trained MoST."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from most_jax.atomic import atomic_file
from most_jax.commands import UsageError
from most_jax.commands.speech_args import add_model_args, load_model_and_assets
from most_jax.data.records import CONTINUOUS_FILE
from most_jax.infer.speech import synthesize_units, transcribe, transcribe_features
from most_jax.speech.audio import load_audio

TTS_DESCRIPTION = """\
Generates the speech units of each TEXT (all texts in batches of --batch-size). Without --vocoder
the deduplicated unit ids are written as int32 .npy; with --vocoder V (a vocoder checkpoint whose
num_units is the checkpoint's unit count) they are re-expanded by its duration predictor and
synthesised. One TEXT writes OUT; several write OUT's stem with _1, _2, ... (speech_1.wav, ...).
Every file is written to a temporary name and renamed when complete.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="ASR or TTS by generation with a checkpoint")
    sub = parser.add_subparsers(dest="generate_command", required=True, metavar="TASK")
    asr = sub.add_parser("asr", help="print the transcript of each audio file",
                         description="Prints each AUDIO's transcript. A MoST-C checkpoint (model.continuous_input_dim "
                                     "> 0) whose assets hold continuous features (continuous.json) hears the audio "
                                     "as those continuous frames; any other hears the assets' speech units.")
    add_model_args(asr, max_new_tokens=128)
    asr.add_argument("audio", nargs="+", metavar="AUDIO", help="wav/flac files (any rate or channel count)")
    asr.set_defaults(handler=run_asr)
    tts = sub.add_parser("tts", help="speak texts: speech units (.npy), or a waveform through a vocoder",
                         description=TTS_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(tts, max_new_tokens=512)
    tts.add_argument("text", nargs="+", metavar="TEXT", help="the texts to speak (one batch)")
    tts.add_argument("--out", required=True, metavar="OUT",
                     help="UNITS.npy without --vocoder; SPEECH.wav (16-bit PCM) or SPEECH.npy (float32 samples) "
                          "with it; several texts write OUT's stem + _1, _2, ...")
    tts.add_argument("--vocoder", default=None, metavar="V", help="vocoder checkpoint: write waveforms, not units")
    tts.add_argument("--speaker", type=int, default=None, metavar="N", help="the vocoder's speaker id")
    tts.add_argument("--lang", type=int, default=None, metavar="N", help="the vocoder's language id")
    tts.set_defaults(handler=run_tts)


def run_asr(args: argparse.Namespace) -> int:
    model, data, sampling = load_model_and_assets(args)
    continuous = bool(model.cfg.continuous_input_dim) and (data.directory / CONTINUOUS_FILE).is_file()
    extract = data.continuous_features() if continuous else data.unit_extractor().extract
    inputs = []
    for path in args.audio:
        wave, _ = load_audio(path)
        inputs.append(np.asarray(extract(wave), np.float32 if continuous else np.int32))
        if len(inputs[-1]) == 0:
            raise UsageError(f"{path}: too short to yield any {'continuous frames' if continuous else 'speech units'}")
    run = transcribe_features if continuous else transcribe
    texts = run(model, data, inputs, sampling=sampling, batch_size=args.batch_size, seed=args.seed)
    for path, text in zip(args.audio, texts):
        print(f"{path}\t{text}")
    return 0


def output_paths(out: str, count: int) -> list[Path]:
    """OUT itself for one output, else OUT's stem + _1 .. _count with OUT's suffix."""
    path = Path(out)
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}_{i}{path.suffix}") for i in range(1, count + 1)]


def run_tts(args: argparse.Namespace) -> int:
    from most_jax.infer.vocoder import load_vocoder, synthesize_batch, write_waveform

    suffixes = (".wav", ".npy") if args.vocoder else (".npy",)
    if Path(args.out).suffix not in suffixes:
        raise UsageError(f"--out {args.out}: the name must end in {' or '.join(suffixes)}"
                         + ("" if args.vocoder else " (units; pass --vocoder for a waveform)"))
    if not args.vocoder and (args.speaker is not None or args.lang is not None):
        raise UsageError("--speaker and --lang choose the vocoder's embeddings: they need --vocoder")
    model, data, sampling = load_model_and_assets(args)
    vocoder = load_vocoder(args.vocoder) if args.vocoder else None
    if vocoder is not None and vocoder.cfg.num_units != data.layout.config.num_audio_units:
        raise UsageError(f"--vocoder {args.vocoder}: {vocoder.cfg.num_units} units, the checkpoint speaks "
                         f"{data.layout.config.num_audio_units}")
    units = synthesize_units(model, data, args.text, sampling=sampling, batch_size=args.batch_size,
                             seed=args.seed)
    empty = [i + 1 for i, u in enumerate(units) if u.size == 0]
    if vocoder is not None and empty:
        raise UsageError(f"text {empty[0]} ({args.text[empty[0] - 1]!r}): the model wrote no speech units")
    waves = synthesize_batch(vocoder, units, args.speaker, args.lang) if vocoder is not None else None
    for i, path in enumerate(output_paths(args.out, len(args.text))):
        if waves is None:
            with atomic_file(path) as tmp, open(tmp, "wb") as f:
                np.save(f, units[i].astype(np.int32))  # through a handle: np.save appends .npy to other names
            print(f"wrote {path}: {len(units[i])} units", file=sys.stderr)
        else:
            write_waveform(path, waves[i], vocoder.cfg.sample_rate)
            print(f"wrote {path}: {len(units[i])} units, {waves[i].size / vocoder.cfg.sample_rate:.2f} s",
                  file=sys.stderr)
    return 0
