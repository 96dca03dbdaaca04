"""Who speaks the built-in sets: the --voices / --pitches / --rate-wpm arguments of `most data synth`,
`most data sqa` and `most data audio-lm-pairs`, and the SpeakerSet they make."""

from __future__ import annotations

import argparse

from most_jax.commands import UsageError
from most_jax.corpus import synth


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in _names(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_voice_args(parser: argparse.ArgumentParser, rate_wpm: tuple[int, int] = synth.RATE_WPM) -> None:
    parser.add_argument("--voices", type=_names, default=synth.VOICES, metavar="V1,V2,...",
                        help=f"eSpeak voices (default: {','.join(synth.VOICES)})")
    parser.add_argument("--pitches", type=_ints, default=synth.PITCHES, metavar="P1,P2,...",
                        help=f"pitches 0..100, each voice at each (default: {','.join(map(str, synth.PITCHES))})")
    parser.add_argument("--rate-wpm", type=_ints, default=rate_wpm, metavar="LOW,HIGH",
                        help="speaking-rate range in words per minute, drawn per utterance "
                             f"(default: {','.join(map(str, rate_wpm))})")


def speaker_set(args: argparse.Namespace) -> synth.SpeakerSet:
    try:
        return synth.SpeakerSet(args.voices, args.pitches, args.rate_wpm)
    except (ValueError, TypeError) as exc:  # "pitches must be ...": SpeakerSet names the field, the flag's name
        raise UsageError(f"--{str(exc).split()[0].replace('_', '-')}: {exc}") from None
