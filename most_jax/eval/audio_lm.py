"""Audio-LM scoring, ZeroSpeech 2021 style: which item of a (real, fake) spoken pair does the model
find more likely?

An item is scored by the log-likelihood of its units under the model, in the unit-LM format the
model trained on (data/tasks.py: BOS BOA units EOA EOS): log p(unit_1 .. unit_n, EOA | BOS BOA),
summed, and that sum divided by its n + 1 tokens (length-normalised). A pair counts 1 when the
real item scores higher, 0.5 on a tie, 0 otherwise; accuracy is the mean, over all pairs and per
category, for both scores.

Sequences are batched right-padded: attention is causal, so a position never sees the padding
after it, and the padded positions are not scored.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from most_jax.data.tasks import Formatter
from most_jax.models.most import MoST

LENGTH_BUCKET = 32  # batches are padded to a multiple of this many tokens (fewer compiled shapes)
SCORES = ("sum", "mean")  # summed and length-normalised log-likelihood


@dataclasses.dataclass(frozen=True)
class SpokenPair:
    id: str
    category: str
    real: np.ndarray  # unit ids 0..K-1 of the real item (a word, a grammatical sentence)
    fake: np.ndarray  # of its fake (a non-word, the minimally changed ungrammatical sentence)


def unit_lm_tokens(formatter: Formatter, units: np.ndarray) -> tuple[np.ndarray, int]:
    """(tokens BOS BOA units EOA EOS, index of the first scored token: the first unit)."""
    return formatter.unit_lm(units).tokens, 2


@nnx.jit
def _token_log_probs(model: MoST, tokens_BT: jax.Array) -> jax.Array:
    """[B, T - 1]: log p(tokens[:, t + 1] | tokens[:, :t + 1])."""
    logits, _ = model(tokens_BT)
    log_probs = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(log_probs, tokens_BT[:, 1:, None], axis=-1)[..., 0]


def log_likelihoods(model: MoST, formatter: Formatter, unit_seqs: Sequence[np.ndarray], *, batch_size: int = 16,
                    bucket: int = LENGTH_BUCKET) -> np.ndarray:
    """float64 [N, 2]: per unit sequence, its summed log-likelihood and the number of scored tokens
    (units + EOA). Sequences of similar length share a batch; a short batch is filled with copies
    of its first row, whose scores are dropped."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    encoded = [unit_lm_tokens(formatter, np.asarray(u, np.int32)) for u in unit_seqs]
    out = np.zeros((len(encoded), 2), np.float64)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    pad = model.cfg.vocab.pad_id
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        rows = chunk + [chunk[0]] * (batch_size - len(chunk))
        width = -(-max(len(encoded[i][0]) for i in rows) // bucket) * bucket
        tokens = np.full((batch_size, width), pad, np.int32)
        for r, i in enumerate(rows):
            tokens[r, :len(encoded[i][0])] = encoded[i][0]
        log_probs = np.asarray(_token_log_probs(model, jnp.asarray(tokens)), np.float64)
        for r, i in enumerate(chunk):
            seq, first = encoded[i]
            # targets first .. len - 2 (the units and EOA, not the closing EOS) are predicted at t - 1
            scored = log_probs[r, first - 1:len(seq) - 2]
            out[i] = scored.sum(), scored.size
    return out


def pair_credit(real: float, fake: float) -> float:
    """1 when the real item scores higher, 0.5 on a tie, 0 when the fake one does."""
    return 1.0 if real > fake else 0.5 if real == fake else 0.0


def pair_accuracy(pairs: Sequence[SpokenPair], real_scores: Sequence[float], fake_scores: Sequence[float]) -> dict:
    """{"accuracy", "pairs", "by_category": {category: {"accuracy", "pairs"}}} of one score."""
    credits: dict[str, list[float]] = {}
    for pair, r, f in zip(pairs, real_scores, fake_scores, strict=True):
        credits.setdefault(pair.category, []).append(pair_credit(r, f))
    every = [c for cs in credits.values() for c in cs]
    return {"accuracy": float(np.mean(every)) if every else None, "pairs": len(every),
            "by_category": {k: {"accuracy": float(np.mean(v)), "pairs": len(v)} for k, v in sorted(credits.items())}}


def score_pairs(model: MoST, formatter: Formatter, pairs: Sequence[SpokenPair], *, batch_size: int = 16) -> dict:
    """Both accuracies ("sum", "mean") and each pair's scores."""
    if not pairs:
        raise ValueError("no pairs to score")
    ll = log_likelihoods(model, formatter, [p.real for p in pairs] + [p.fake for p in pairs], batch_size=batch_size)
    real, fake = ll[:len(pairs)], ll[len(pairs):]
    scores = {"sum": (real[:, 0], fake[:, 0]), "mean": (real[:, 0] / real[:, 1], fake[:, 0] / fake[:, 1])}
    result = {name: pair_accuracy(pairs, *scores[name]) for name in SCORES}
    result["examples"] = [{"id": p.id, "category": p.category, "real_sum": float(real[i, 0]),
                           "fake_sum": float(fake[i, 0]), "real_tokens": int(real[i, 1]),
                           "fake_tokens": int(fake[i, 1])} for i, p in enumerate(pairs)]
    return result
