"""How much speech units depend on the voice: the same sentences spoken by two voices, each
extractor's units compared by normalised edit distance (Levenshtein / the longer sequence).

`same` is the mean distance between the two voices' units of one sentence; `different` the mean
between the first voice's units of a sentence and the second voice's units of the next sentence
(a baseline: what unrelated speech scores). Units that carry what was said and not who said it
have `same` far below `different`; `same_over_different` is their ratio (lower is better).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from most_jax.eval.wer import edit_distance
from most_jax.speech.audio import SAMPLE_RATE, resample


def normalised_distance(a: Sequence, b: Sequence) -> float:
    longest = max(len(a), len(b))
    return edit_distance(a, b) / longest if longest else 0.0


def unit_consistency(extract: Callable[[np.ndarray], np.ndarray], waves_a: Sequence[np.ndarray],
                     waves_b: Sequence[np.ndarray]) -> dict:
    """`waves_a[i]` and `waves_b[i]` are sentence i in voices A and B (16 kHz); at least 2 sentences."""
    if len(waves_a) != len(waves_b) or len(waves_a) < 2:
        raise ValueError(f"need the same sentences (at least 2) in both voices, got {len(waves_a)} and {len(waves_b)}")
    units_a = [np.asarray(extract(w)).tolist() for w in waves_a]
    units_b = [np.asarray(extract(w)).tolist() for w in waves_b]
    n = len(units_a)
    same = [normalised_distance(units_a[i], units_b[i]) for i in range(n)]
    different = [normalised_distance(units_a[i], units_b[(i + 1) % n]) for i in range(n)]
    seconds = sum(len(w) for w in (*waves_a, *waves_b)) / SAMPLE_RATE
    return {"sentences": n, "same": float(np.mean(same)), "different": float(np.mean(different)),
            "same_over_different": float(np.mean(same) / np.mean(different)) if np.mean(different) else None,
            "units_per_second": sum(len(u) for u in (*units_a, *units_b)) / seconds}


def spoken(texts: Sequence[str], voice: str, rate_wpm: int) -> list[np.ndarray]:
    """`texts` spoken by one eSpeak voice, 16 kHz (ValueError / ESpeakError for a bad voice or rate)."""
    from most_jax.corpus import espeak

    waves = [espeak.synthesize(text, voice=voice, rate=rate_wpm, seed=i) for i, text in enumerate(texts)]
    return [resample(wave, rate, SAMPLE_RATE) for wave, rate in waves]
