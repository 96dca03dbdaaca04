"""U2++ decoding: CTC search against exhaustive path sums, and every decoding mode against WeNet."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from most_jax.models.u2pp import ctc_search


def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _random_log_probs(seed, b, t, v, sharp=2.0):
    rng = np.random.default_rng(seed)
    return _log_softmax(sharp * rng.normal(size=(b, t, v))).astype(np.float32)


def _exhaustive_marginals(log_probs_TV):
    """label sequence -> log sum over every frame path collapsing to it (V^T paths)."""
    totals: dict[tuple[int, ...], float] = {}
    t, v = log_probs_TV.shape
    lp = log_probs_TV.astype(np.float64)
    for path in itertools.product(range(v), repeat=t):
        label = ctc_search.collapse(path)
        score = float(sum(lp[i, u] for i, u in enumerate(path)))
        totals[label] = ctc_search.log_add(totals.get(label, -math.inf), score)
    return totals


def test_collapse_merges_repeats_then_drops_blanks():
    assert ctc_search.collapse([0, 1, 1, 0, 1, 2, 2, 0]) == (1, 1, 2)
    assert ctc_search.collapse([3, 3, 3]) == (3,)
    assert ctc_search.collapse([0, 0]) == ()


def test_greedy_is_the_collapsed_argmax_path_and_respects_lengths():
    lp = _random_log_probs(0, 3, 7, 5)
    lengths = np.array([7, 4, 0])
    hyps = ctc_search.ctc_greedy(lp, lengths)
    for b, n in enumerate(lengths):
        best = lp[b, :n].argmax(-1)
        assert hyps[b] == ctc_search.collapse(best)
        # The argmax path is the most likely path, and its label is at least as likely as that path.
        totals = _exhaustive_marginals(lp[b, :n]) if n <= 5 and n > 0 else None
        if totals is not None:
            assert totals[hyps[b]] >= float(lp[b, np.arange(n), best].astype(np.float64).sum()) - 1e-9
    assert hyps[2] == ()
    # Padding beyond the length never reaches the result.
    padded = lp.copy()
    padded[1, 4:] = _random_log_probs(9, 1, 3, 5)[0]
    assert ctc_search.ctc_greedy(padded, lengths) == hyps


@pytest.mark.parametrize("seed,t,v", [(1, 4, 3), (2, 5, 3), (3, 3, 4)])
def test_prefix_beam_wide_enough_gives_exact_marginals(seed, t, v):
    lp = _random_log_probs(seed, 1, t, v, sharp=1.0)
    totals = _exhaustive_marginals(lp[0])
    # A beam that holds every prefix and every label: nothing is pruned.
    nbest = ctc_search.ctc_prefix_beam(lp, np.array([t]), beam_size=len(totals) + v)[0]
    # As in WeNet, a prefix that no path of this length reaches can stay in the beam at -inf.
    reached = {h: s for h, s in zip(nbest.hyps, nbest.scores) if s > -math.inf}
    assert set(reached) == set(totals)
    for hyp, score in reached.items():
        assert score == pytest.approx(totals[hyp], abs=1e-9)
    assert list(nbest.scores) == sorted(nbest.scores, reverse=True)
    # Probabilities of all labels sum to one.
    assert ctc_search.log_add(*nbest.scores) == pytest.approx(0.0, abs=1e-5)  # float32 inputs


def test_prefix_beam_narrow_beam_is_a_best_first_subset():
    lp = _random_log_probs(4, 2, 6, 4)
    lengths = np.array([6, 3])
    results = ctc_search.ctc_prefix_beam(lp, lengths, beam_size=2)
    for b, res in enumerate(results):
        assert len(res.hyps) <= 2 and len(set(res.hyps)) == len(res.hyps)
        assert list(res.scores) == sorted(res.scores, reverse=True)
        totals = _exhaustive_marginals(lp[b, : lengths[b]])
        # Pruned scores only ever lose paths: each is at most the exact marginal.
        for hyp, score in zip(res.hyps, res.scores):
            assert score <= totals[hyp] + 1e-9


def test_ctc_search_rejects_bad_input():
    lp = _random_log_probs(5, 2, 4, 3)
    with pytest.raises(ValueError, match="lengths must lie in"):
        ctc_search.ctc_greedy(lp, np.array([5, 1]))
    with pytest.raises(ValueError, match=r"\[B, T, V\]"):
        ctc_search.ctc_greedy(lp[0], np.array([4]))
    with pytest.raises(ValueError, match="lengths must be"):
        ctc_search.ctc_prefix_beam(lp, np.array([4]), beam_size=2)
    with pytest.raises(ValueError, match="beam_size"):
        ctc_search.ctc_prefix_beam(lp, np.array([4, 4]), beam_size=0)
