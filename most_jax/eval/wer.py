"""Word, character and unit error rates.

Text normalisation, the one every evaluation uses (applied to reference and hypothesis alike):
lowercase; every character other than a-z, 0-9 and the apostrophe becomes a space; words are the
whitespace-separated pieces. Characters (for CER) are those of the words joined by single spaces,
the spaces included (as jiwer counts them).
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

_NOT_WORD = re.compile(r"[^a-z0-9']+")


def normalize(text: str) -> list[str]:
    return _NOT_WORD.sub(" ", text.lower()).split()


def normalized_text(text: str) -> str:
    return " ".join(normalize(text))


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1)."""
    ref, hyp = list(ref), list(hyp)
    row = np.arange(len(hyp) + 1)
    for i, r in enumerate(ref, start=1):
        prev, row = row, np.empty_like(row)
        row[0] = i
        for j, h in enumerate(hyp, start=1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (r != h))
    return int(row[-1])


def error_rate(refs: Sequence[Sequence], hyps: Sequence[Sequence]) -> dict:
    """Corpus-level rate: total edits / total reference length."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    errors = sum(edit_distance(r, h) for r, h in zip(refs, hyps))
    length = sum(len(r) for r in refs)
    return {"errors": errors, "reference_length": length, "rate": errors / max(length, 1)}


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> dict:
    result = error_rate([normalize(r) for r in references], [normalize(h) for h in hypotheses])
    return {"wer": result["rate"], "word_errors": result["errors"], "words": result["reference_length"]}


def character_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> dict:
    result = error_rate([normalized_text(r) for r in references], [normalized_text(h) for h in hypotheses])
    return {"cer": result["rate"], "char_errors": result["errors"], "chars": result["reference_length"]}
