"""`most generate asr|tts`: transcribe audio files or speak text with a trained MoST."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from most_jax.atomic import atomic_file
from most_jax.checkpoint.params_io import CheckpointError
from most_jax.commands.speech_args import add_model_args, load_model_and_assets
from most_jax.config import ConfigError
from most_jax.data.pipeline import PipelineError
from most_jax.infer.speech import AssetsMismatch, synthesize_units, transcribe
from most_jax.speech.audio import AudioError, load_audio

ERRORS = (CheckpointError, ConfigError, PipelineError, AssetsMismatch, AudioError, ValueError)


def register(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="ASR or TTS by generation with a checkpoint")
    sub = parser.add_subparsers(dest="generate_command", required=True, metavar="TASK")
    asr = sub.add_parser("asr", help="print the transcript of each audio file")
    add_model_args(asr, max_new_tokens=128)
    asr.add_argument("audio", nargs="+", metavar="AUDIO", help="wav/flac files (any rate or channel count)")
    asr.set_defaults(handler=run_asr)
    tts = sub.add_parser("tts", help="write the speech units of a text to a .npy file")
    add_model_args(tts, max_new_tokens=512)
    tts.add_argument("text", help="the text to speak")
    tts.add_argument("--out", required=True, metavar="UNITS.npy", help="where to write the unit ids (int32)")
    tts.set_defaults(handler=run_tts)


def run_asr(args: argparse.Namespace) -> int:
    try:
        model, data, sampling = load_model_and_assets(args)
        extractor = data.unit_extractor()
        units = []
        for path in args.audio:
            wave, _ = load_audio(path)
            units.append(np.asarray(extractor.extract(wave), np.int32))
            if units[-1].size == 0:
                raise ValueError(f"{path}: too short to yield any speech units")
        texts = transcribe(model, data, units, sampling=sampling, batch_size=args.batch_size, seed=args.seed)
    except ERRORS as e:
        raise SystemExit(f"most generate asr: error: {e}") from None
    for path, text in zip(args.audio, texts):
        print(f"{path}\t{text}")
    return 0


def run_tts(args: argparse.Namespace) -> int:
    try:
        model, data, sampling = load_model_and_assets(args)
        (units,) = synthesize_units(model, data, [args.text], sampling=sampling, batch_size=1, seed=args.seed)
    except ERRORS as e:
        raise SystemExit(f"most generate tts: error: {e}") from None
    with atomic_file(args.out) as tmp, open(tmp, "wb") as f:
        np.save(f, units.astype(np.int32))  # through a handle: np.save appends .npy to other names
    print(f"wrote {args.out}: {len(units)} units", file=sys.stderr)
    return 0
