"""The built-in speech corpus: generated sentences spoken by eSpeak NG with several speakers.

Layout of a corpus directory (audio paths in the manifests are relative to this directory):

    audio/<id>.wav                16 kHz mono 16-bit PCM
    train.jsonl dev.jsonl test.jsonl   {"id", "audio", "text", "speaker", "duration"} per line
    text_lm.txt                   text-only sentences (disjoint from every spoken sentence)
    corpus.json                   seed, counts, hours and the speaker table

A speaker is an eSpeak voice (with a variant) at a pitch; each utterance also gets its own speaking
rate and eSpeak random seed. `SpeakerSet` chooses the voices, pitches and rate range (the default is
every voice at three pitches; fewer speakers make an easier corpus). Everything is decided up front
from the seed. eSpeak's output also depends on state its earlier utterances left in the process
(oscillator phase, pitch flutter), which no API call resets, so utterances are rendered in fixed
blocks of BLOCK_SIZE, each in a fresh process: the same seed then gives identical audio and
byte-identical manifests whatever the number of worker processes.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import random
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from most_jax.atomic import atomic_directory
from most_jax.corpus import sentences
from most_jax.speech.manifest import write_manifest

SAMPLE_RATE = 16000
VOICES = ("en-us", "en-us+f3", "en-gb-x-rp", "en-gb-x-rp+f2", "en-gb-scotland+m3", "en-029+f4",
          "en-us-nyc+m7", "en+f5")
PITCHES = (35, 50, 65)
RATE_WPM = (135, 205)
SPLITS = ("train", "dev", "test")
# Utterances per fresh synthesis process; part of the corpus definition (changing it changes the audio).
BLOCK_SIZE = 128


@dataclasses.dataclass(frozen=True)
class Speaker:
    name: str
    voice: str
    pitch: int


@dataclasses.dataclass(frozen=True)
class SpeakerSet:
    """Who speaks the corpus: every voice at every pitch, at a rate drawn per utterance (words/min)."""

    voices: tuple[str, ...] = VOICES
    pitches: tuple[int, ...] = PITCHES
    rate_wpm: tuple[int, int] = RATE_WPM

    def __post_init__(self):
        from most_jax.corpus.espeak import RATE_RANGE

        if not self.voices or len(set(self.voices)) != len(self.voices):
            raise ValueError(f"voices must be a non-empty list without repeats, got {list(self.voices)}")
        if not self.pitches or any(not 0 <= p <= 100 for p in self.pitches) or len(set(self.pitches)) != len(self.pitches):
            raise ValueError(f"pitches must be distinct values in 0..100, got {list(self.pitches)}")
        if len(self.rate_wpm) != 2 or not RATE_RANGE[0] <= self.rate_wpm[0] <= self.rate_wpm[1] <= RATE_RANGE[1]:
            raise ValueError(f"rate_wpm must be [low, high] within {list(RATE_RANGE)} words per minute, "
                             f"got {list(self.rate_wpm)}")

    @property
    def speakers(self) -> tuple[Speaker, ...]:
        return tuple(Speaker(f"{voice}-p{pitch}", voice, pitch) for voice in self.voices for pitch in self.pitches)


@dataclasses.dataclass(frozen=True)
class Utterance:
    id: str
    split: str
    text: str
    speaker: Speaker
    rate: int
    seed: int


def plan_corpus(num: int, seed: int, dev_fraction: float = 0.05, test_fraction: float = 0.05,
                num_text_lm: int = 0, speaker_set: SpeakerSet = SpeakerSet(),
                vocabulary_limit: int | None = None) -> tuple[list[Utterance], list[str]]:
    """(utterances in split order, text-LM sentences). Every utterance has its own sentence; with a
    `vocabulary_limit`, sentences use only the generator's that many most frequent words."""
    if num < 1:
        raise ValueError(f"--num must be at least 1, got {num}")
    for name, value in (("dev_fraction", dev_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 0.5:
            raise ValueError(f"{name} must be in [0, 0.5), got {value}")
    num_dev, num_test = round(num * dev_fraction), round(num * test_fraction)
    splits = sentences.make_splits(seed, num - num_dev - num_test, num_dev, num_test, num_text_lm, vocabulary_limit)
    rng = random.Random(f"synth-{seed}")
    utterances = []
    speakers = speaker_set.speakers
    for split in SPLITS:
        for index, text in enumerate(getattr(splits, split)):
            utterances.append(Utterance(f"{split}-{index:06d}", split, text, rng.choice(speakers),
                                        rng.randint(*speaker_set.rate_wpm), rng.randrange(2 ** 31)))
    return utterances, splits.text_lm


def render(utterance: Utterance, audio_dir: str) -> float:
    """Speaks one utterance into audio_dir/<id>.wav; returns its duration in seconds."""
    from most_jax.corpus import espeak  # imported here: each worker process loads its own engine

    wave, rate = espeak.synthesize(utterance.text, voice=utterance.speaker.voice, rate=utterance.rate,
                                   pitch=utterance.speaker.pitch, seed=utterance.seed)
    if wave.size == 0:
        raise RuntimeError(f"eSpeak produced no audio for {utterance.id}: {utterance.text!r}")
    wave = soxr.resample(wave, rate, SAMPLE_RATE, quality="HQ")
    # The resampler can overshoot full scale slightly; PCM conversion would wrap around instead of clipping.
    wave = np.clip(wave, -1.0, 32767 / 32768)
    sf.write(os.path.join(audio_dir, f"{utterance.id}.wav"), wave, SAMPLE_RATE, subtype="PCM_16")
    return round(len(wave) / SAMPLE_RATE, 4)


def _render_block(job: tuple[list[Utterance], str]) -> list[float]:
    utterances, audio_dir = job
    return [render(u, audio_dir) for u in utterances]


def synthesize_corpus(out_dir: str | os.PathLike, num: int, seed: int = 0, workers: int = 1,
                      dev_fraction: float = 0.05, test_fraction: float = 0.05, num_text_lm: int = 20000,
                      speaker_set: SpeakerSet = SpeakerSet(), vocabulary_limit: int | None = None,
                      overwrite: bool = False, log=print) -> dict:
    """Writes the corpus to out_dir (through a temporary sibling directory); returns corpus.json's content."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True (--overwrite) to replace it")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    utterances, text_lm = plan_corpus(num, seed, dev_fraction, test_fraction, num_text_lm, speaker_set,
                                      vocabulary_limit)
    words = sentences.vocabulary() if vocabulary_limit is None else sentences.frequent_words(vocabulary_limit)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        audio_dir = tmp / "audio"
        audio_dir.mkdir()
        blocks = [(utterances[i:i + BLOCK_SIZE], str(audio_dir)) for i in range(0, len(utterances), BLOCK_SIZE)]
        durations: list[float] = []
        start = time.perf_counter()
        # One block per process, so every block starts from a freshly loaded eSpeak (see above). The
        # processes are forked from a server that has imported this module (but not eSpeak, which
        # render loads): a spawned process spent ~0.26 s importing it again, per block.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        with context.Pool(min(workers, len(blocks)), maxtasksperchild=1) as pool:
            for block_durations in pool.imap(_render_block, blocks, chunksize=1):
                durations.extend(block_durations)
                elapsed = time.perf_counter() - start
                log(f"synth: {len(durations)}/{len(utterances)} utterances, {sum(durations) / 3600:.2f} h of "
                    f"audio, {len(durations) / max(elapsed, 1e-9):.0f} utt/s")
        info = {"seed": seed, "sample_rate": SAMPLE_RATE, "utterances": {}, "hours": {},
                "text_lm_sentences": len(text_lm), "vocabulary_size": len(words),
                "vocabulary_limit": vocabulary_limit,
                "speakers": [dataclasses.asdict(s) for s in speaker_set.speakers],
                "rate_wpm": list(speaker_set.rate_wpm)}
        for split in SPLITS:
            rows = [{"id": u.id, "audio": f"audio/{u.id}.wav", "text": u.text, "speaker": u.speaker.name,
                     "duration": d} for u, d in zip(utterances, durations) if u.split == split]
            write_manifest(tmp / f"{split}.jsonl", rows)
            info["utterances"][split] = len(rows)
            info["hours"][split] = round(sum(r["duration"] for r in rows) / 3600, 4)
        (tmp / "text_lm.txt").write_text("".join(line + "\n" for line in text_lm))
        (tmp / "corpus.json").write_text(json.dumps(info, indent=1) + "\n")
    log(f"synth: wrote {out_dir} ({sum(info['utterances'].values())} utterances, "
        f"{sum(info['hours'].values()):.2f} h)")
    return info
