"""CTC search over per-frame log-probabilities: greedy and prefix beam (WeNet's search.py semantics).

Both run on the host in numpy: the prefix beam is a data-dependent set of prefixes that cannot be
batched, and the greedy decode is a per-utterance merge of an argmax that is already computed.
Ids follow WeNet: `blank_id` (0) is the CTC blank.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class NBest:
    """The prefix beam's n-best of one utterance, best first; score = log P(prefix | frames)."""

    hyps: tuple[tuple[int, ...], ...]
    scores: tuple[float, ...]


def _check_log_probs(log_probs_BTV: np.ndarray, lengths_B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    log_probs_BTV = np.asarray(log_probs_BTV)
    lengths_B = np.asarray(lengths_B)
    if log_probs_BTV.ndim != 3:
        raise ValueError(f"ctc log-probs must be [B, T, V], got shape {log_probs_BTV.shape}")
    if lengths_B.shape != log_probs_BTV.shape[:1]:
        raise ValueError(f"lengths must be [B]={log_probs_BTV.shape[:1]}, got shape {lengths_B.shape}")
    if lengths_B.size and (lengths_B.min() < 0 or lengths_B.max() > log_probs_BTV.shape[1]):
        raise ValueError(f"lengths must lie in [0, T={log_probs_BTV.shape[1]}], got {lengths_B.tolist()}")
    return log_probs_BTV, lengths_B


def collapse(path: np.ndarray | list[int], blank_id: int = 0) -> tuple[int, ...]:
    """The CTC label of one frame path: merge repeats, then drop blanks."""
    out: list[int] = []
    prev = None
    for u in (int(v) for v in path):
        if u != prev and u != blank_id:
            out.append(u)
        prev = u
    return tuple(out)


def ctc_greedy(log_probs_BTV: np.ndarray, lengths_B: np.ndarray, blank_id: int = 0) -> list[tuple[int, ...]]:
    """Best path per utterance (argmax per frame over its first `length` frames), collapsed."""
    log_probs_BTV, lengths_B = _check_log_probs(log_probs_BTV, lengths_B)
    best_BT = log_probs_BTV.argmax(axis=-1)
    return [collapse(best_BT[b, : int(lengths_B[b])], blank_id) for b in range(best_BT.shape[0])]


def log_add(*xs: float) -> float:
    """log(sum(exp(xs))) that stays exact when every term is -inf."""
    top = max(xs)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(x - top) for x in xs))


class PrefixBeam:
    """WeNet's CTC prefix beam search over frames fed in any number of pieces (streaming decodes
    chunk by chunk); the state is the beam: prefix -> (log P ending in blank, log P ending in its
    last label)."""

    def __init__(self, beam_size: int, blank_id: int = 0):
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        self.beam_size, self.blank_id = beam_size, blank_id
        self.beam: list[tuple[tuple[int, ...], list[float]]] = [((), [0.0, -math.inf])]

    def advance(self, log_probs_TV: np.ndarray) -> None:
        neg_inf = -math.inf
        for logp_V in np.asarray(log_probs_TV, np.float64):
            nxt: dict[tuple[int, ...], list[float]] = {}
            # Per-frame pruning: only the beam_size likeliest labels extend (best first, as torch.topk).
            for u in (int(v) for v in np.argsort(-logp_V, kind="stable")[: self.beam_size]):
                p = float(logp_V[u])
                for prefix, (s, ns) in self.beam:
                    last = prefix[-1] if prefix else None
                    if u == self.blank_id:
                        entry = nxt.setdefault(prefix, [neg_inf, neg_inf])
                        entry[0] = log_add(entry[0], log_add(s, ns) + p)
                    elif u == last:
                        # *u + u stays *u; *u + blank + u becomes *uu.
                        entry = nxt.setdefault(prefix, [neg_inf, neg_inf])
                        entry[1] = log_add(entry[1], ns + p)
                        entry = nxt.setdefault(prefix + (u,), [neg_inf, neg_inf])
                        entry[1] = log_add(entry[1], s + p)
                    else:
                        entry = nxt.setdefault(prefix + (u,), [neg_inf, neg_inf])
                        entry[1] = log_add(entry[1], log_add(s, ns) + p)
            self.beam = sorted(nxt.items(), key=lambda item: log_add(*item[1]), reverse=True)[: self.beam_size]

    def result(self) -> NBest:
        return NBest(hyps=tuple(p for p, _ in self.beam), scores=tuple(log_add(*sc) for _, sc in self.beam))


def ctc_prefix_beam(log_probs_BTV: np.ndarray, lengths_B: np.ndarray, beam_size: int,
                    blank_id: int = 0) -> list[NBest]:
    """CTC prefix beam search per utterance; the n-best holds at most `beam_size` prefixes.

    With beam_size >= V no label is ever pruned per frame, and while fewer than beam_size prefixes
    exist none is dropped, so the scores are then the exact marginals sum over paths of P(path)."""
    log_probs_BTV, lengths_B = _check_log_probs(log_probs_BTV, lengths_B)
    out = []
    for b in range(log_probs_BTV.shape[0]):
        search = PrefixBeam(beam_size, blank_id)
        search.advance(log_probs_BTV[b, : int(lengths_B[b])])
        out.append(search.result())
    return out
