"""Power-law fits of a scaling study, with bootstrap intervals.

Two laws, both fitted on the log of the loss (Hoffmann et al. 2022, "Chinchilla"):

    L(C)    = E + A C^-alpha                 compute C (training FLOPs)
    L(N, D) = E + A N^-alpha + B D^-beta     active parameters N, training tokens D

as log L = logsumexp(e, a_1 - s_1 log x_1, ...), E = exp(e), A_k = exp(a_k), minimising the Huber
loss of the log-residuals with L-BFGS from a grid of starting points (the best one wins). The
features are centred on their mean log before fitting (the optimiser then sees terms of order one)
and the constants are mapped back after. Intervals come from a bootstrap over runs: resample the
runs with replacement, refit (from the point estimate and a few grid starts), take percentiles.

From those: the compute-optimal frontier of L(N, D) under C = k N D (k measured from the runs,
about 6 for a dense transformer): N_opt = G (C/k)^(beta/(alpha+beta)), G = (alpha A / (beta
B))^(1/(alpha+beta)); the compute multiplier of a variant over the baseline (the baseline's compute
that reaches the variant's fitted loss, divided by the variant's compute) at each of its sizes; and
the L(C) exponents of the text and the audio losses.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Callable, Sequence

import numpy as np
import scipy.optimize

from most_jax.scaling.results import MODALITY_FIELDS, Run

CONFIDENCE = 0.95
HUBER_DELTA = 1e-3  # Chinchilla's, on log-residuals
BOOTSTRAP_STARTS = 2  # grid starts tried per resample, besides the point estimate


class FitError(ValueError):
    """Too few or degenerate runs for a fit: the message says which and why."""


@dataclasses.dataclass(frozen=True)
class Law:
    """A sum of power laws: E + sum_k coef_k x_k^-exponent_k, with named constants."""

    names: tuple[str, ...]  # the constants in order: E, then (coefficient, exponent) per feature
    values: tuple[float, ...]

    @property
    def E(self) -> float:
        return self.values[0]

    def terms(self) -> list[tuple[float, float]]:
        v = self.values[1:]
        return [(v[i], v[i + 1]) for i in range(0, len(v), 2)]

    def __call__(self, *features: np.ndarray | float) -> np.ndarray:
        out = np.full(np.shape(features[0]), self.E, dtype=np.float64)
        for (coef, exponent), x in zip(self.terms(), features, strict=True):
            out = out + coef * np.asarray(x, np.float64) ** -exponent
        return out

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.names, self.values))


COMPUTE_NAMES = ("E", "A", "alpha")
PARAMS_DATA_NAMES = ("E", "A", "alpha", "B", "beta")


def fit_law(features: Sequence[np.ndarray], loss: np.ndarray, names: tuple[str, ...], *,
            delta: float = HUBER_DELTA, starts: Sequence[np.ndarray] | None = None) -> tuple[Law, float]:
    """The law of len(features) power-law terms best fitting `loss`, and its mean Huber loss.

    `starts` are starting points in the fitting coordinates (see `_coordinates`); by default a grid.
    """
    logx = np.stack([np.log(np.asarray(f, np.float64)) for f in features])
    centre = logx.mean(axis=1)
    logx = logx - centre[:, None]
    logl = np.log(np.asarray(loss, np.float64))
    objective = _objective(logx, logl, delta)
    best = None
    for start in (starts if starts is not None else _grid(len(features), logl)):
        res = scipy.optimize.minimize(objective, start, jac=True, method="L-BFGS-B")
        if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
            best = res
    if best is None:
        raise FitError("no starting point gave a finite fit")
    return _law(best.x, centre, names), float(best.fun)


def _objective(logx: np.ndarray, logl: np.ndarray, delta: float) -> Callable:
    """Mean Huber loss of the log-residuals and its gradient, in the fitting coordinates
    theta = (e, a_1, s_1, a_2, s_2, ...): log L_hat = logsumexp(e, a_k - s_k x_k)."""
    n = logl.size

    def f(theta):
        a, s = theta[1::2], theta[2::2]
        terms = np.concatenate([np.full((1, n), theta[0]), a[:, None] - s[:, None] * logx])
        top = terms.max(axis=0)
        weights = np.exp(terms - top)
        total = weights.sum(axis=0)
        r = top + np.log(total) - logl
        soft = weights / total  # d log L_hat / d term
        small = np.abs(r) <= delta
        value = np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).mean()
        dr = np.clip(r, -delta, delta) / n
        grad = np.empty_like(theta)
        grad[0] = (dr * soft[0]).sum()
        grad[1::2] = (dr * soft[1:]).sum(axis=1)
        grad[2::2] = -(dr * soft[1:] * logx).sum(axis=1)
        return value, grad

    return f


def _grid(n_terms: int, logl: np.ndarray) -> list[np.ndarray]:
    """Starting points: E and each term at a few fractions of the smallest loss, a few exponents."""
    floor = logl.min()
    e_starts = floor + np.log([0.1, 0.5, 0.9])
    a_starts = floor + np.log([0.1, 0.5])
    s_starts = [0.15, 0.5]
    per_term = list(itertools.product(a_starts, s_starts))
    return [np.array([e, *itertools.chain.from_iterable(terms)])
            for e in e_starts for terms in itertools.product(per_term, repeat=n_terms)]


def _coordinates(law: Law, centre: np.ndarray) -> np.ndarray:
    """The fitting coordinates of `law` (the inverse of `_law`)."""
    theta = [math.log(law.E)]
    for (coef, exponent), c in zip(law.terms(), centre, strict=True):
        theta += [math.log(coef) - exponent * c, exponent]
    return np.array(theta)


def _law(theta: np.ndarray, centre: np.ndarray, names: tuple[str, ...]) -> Law:
    values = [math.exp(theta[0])]
    for k, c in enumerate(centre):
        exponent = float(theta[2 + 2 * k])
        # a_k - s_k (log x - c) = (a_k + s_k c) - s_k log x
        values += [math.exp(min(theta[1 + 2 * k] + exponent * c, 700.0)), exponent]
    return Law(names, tuple(values))


@dataclasses.dataclass(frozen=True)
class Fit:
    """A point estimate with its bootstrap fits (resamples whose fit failed are left out)."""

    law: Law
    huber: float
    runs: int
    samples: tuple[Law, ...]

    def interval(self, get: Callable[[Law], float | None]) -> dict[str, float | None]:
        """{"value", "low", "high"} of a quantity of the law, over the bootstrap fits."""
        return interval(get(self.law), [get(s) for s in self.samples])

    def constants(self) -> dict[str, dict[str, float | None]]:
        return {name: self.interval(lambda law, i=i: law.values[i]) for i, name in enumerate(self.law.names)}


def interval(value: float | None, samples: Sequence[float | None]) -> dict[str, float | None]:
    """{"value", "low", "high"}: the percentile interval of the defined samples (no interval when
    the quantity is undefined in most of them, e.g. a loss below a resample's irreducible E)."""
    got = np.array([x for x in samples if x is not None and math.isfinite(x)])
    if len(got) < max(2, len(samples) // 2):
        return {"value": _finite(value), "low": None, "high": None}
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(got, [tail, 100 - tail])
    return {"value": _finite(value), "low": float(low), "high": float(high)}


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def fit_with_bootstrap(features: Sequence[np.ndarray], loss: np.ndarray, names: tuple[str, ...], *,
                       bootstrap: int, rng: np.random.Generator, delta: float = HUBER_DELTA) -> Fit:
    """`fit_law` on all runs, then on `bootstrap` resamples of the runs."""
    features = [np.asarray(f, np.float64) for f in features]
    loss = np.asarray(loss, np.float64)
    law, huber = fit_law(features, loss, names, delta=delta)
    grid = _grid(len(features), np.log(loss))
    samples = []
    for _ in range(bootstrap):
        pick = rng.integers(0, loss.size, loss.size)
        sub = [f[pick] for f in features]
        centre = np.array([np.log(f).mean() for f in sub])
        starts = [_coordinates(law, centre)] + [grid[i] for i in rng.choice(len(grid), BOOTSTRAP_STARTS, replace=False)]
        try:
            samples.append(fit_law(sub, loss[pick], names, delta=delta, starts=starts)[0])
        except FitError:
            continue
    return Fit(law, huber, int(loss.size), tuple(samples))


# ---------------------------------------------------------------------------------------------
# The analyses of a results table


def need(runs: Sequence[Run], count: int, what: str, distinct: dict[str, Callable[[Run], float]]) -> None:
    """Raises FitError unless there are `count` runs with at least two values of each feature."""
    if len(runs) < count:
        raise FitError(f"{what}: {len(runs)} runs, need at least {count}")
    for name, get in distinct.items():
        if len({get(r) for r in runs}) < 2:
            raise FitError(f"{what}: every run has the same {name}, need at least two values")


def fit_compute(runs: Sequence[Run], loss: Callable[[Run], float], *, bootstrap: int,
                rng: np.random.Generator, delta: float, what: str = "L(C)") -> Fit:
    need(runs, 4, what, {"flops": lambda r: r.flops})
    return fit_with_bootstrap([[r.flops for r in runs]], np.array([loss(r) for r in runs]), COMPUTE_NAMES,
                              bootstrap=bootstrap, rng=rng, delta=delta)


def fit_params_data(runs: Sequence[Run], *, bootstrap: int, rng: np.random.Generator, delta: float) -> Fit:
    need(runs, 6, "L(N, D)", {"params_active": lambda r: r.params_active, "tokens": lambda r: r.tokens})
    return fit_with_bootstrap([[r.params_active for r in runs], [r.tokens for r in runs]],
                              np.array([r.loss for r in runs]), PARAMS_DATA_NAMES,
                              bootstrap=bootstrap, rng=rng, delta=delta)


def flops_per_param_token(runs: Sequence[Run]) -> float:
    """k in C = k N D: the geometric mean over the runs of flops / (params_active tokens)."""
    return float(np.exp(np.mean([math.log(r.flops / (r.params_active * r.tokens)) for r in runs])))


def optimal_params(law: Law, compute: np.ndarray | float, k: float) -> np.ndarray:
    """N_opt(C) minimising L(N, D) subject to k N D = C; NaN where the fitted law has no such
    minimum (a non-positive coefficient or exponent, as a fit of degenerate runs can give)."""
    (a, alpha), (b, beta) = law.terms()
    compute = np.asarray(compute, np.float64)
    if min(a, alpha, b, beta) <= 0:
        return np.full(compute.shape, np.nan)
    g = (alpha * a / (beta * b)) ** (1 / (alpha + beta))
    return g * (compute / k) ** (beta / (alpha + beta))


def frontier_loss(law: Law, compute: np.ndarray | float, k: float) -> np.ndarray:
    """The loss of L(N, D) along the compute-optimal allocation."""
    n = optimal_params(law, compute, k)
    return law(n, np.asarray(compute, np.float64) / (k * n))


def frontier(fit: Fit, k: float) -> dict:
    """Exponents of the compute-optimal allocation N_opt ~ C^a, D_opt ~ C^b (a + b = 1)."""
    def a_of(law):
        (_, alpha), (_, beta) = law.terms()
        return beta / (alpha + beta)

    return {"flops_per_param_token": k, "params_exponent": fit.interval(a_of),
            "tokens_exponent": fit.interval(lambda law: 1 - a_of(law)),
            "params_coefficient": fit.interval(lambda law: float(optimal_params(law, k, k)))}


def compute_to_reach(law: Law, loss: float) -> float | None:
    """The compute at which L(C) reaches `loss` (None at or below its irreducible E)."""
    (a, alpha), = law.terms()
    if loss <= law.E:
        return None
    return (a / (loss - law.E)) ** (1 / alpha)


def multiplier(variant: Fit, baseline: Fit, compute: float, rng: np.random.Generator) -> dict:
    """Baseline compute reaching the variant's fitted loss at `compute`, over `compute`.

    The interval pairs the two fits' bootstrap samples at random (they resample different runs).
    """
    def ratio(v: Law, b: Law) -> float | None:
        reach = compute_to_reach(b, float(v(compute)))
        return None if reach is None else reach / compute

    count = min(len(variant.samples), len(baseline.samples))
    pairs = zip(rng.permutation(len(variant.samples))[:count], rng.permutation(len(baseline.samples))[:count])
    return interval(ratio(variant.law, baseline.law),
                    [ratio(variant.samples[i], baseline.samples[j]) for i, j in pairs])


def analyse(runs: Sequence[Run], *, baseline: str = "dense", bootstrap: int = 200, seed: int = 0,
            delta: float = HUBER_DELTA) -> dict:
    """Every fit of a results table, as one JSON-ready object (see `summary_table` for a reading).

    Top level: the runs pooled (`compute`, `params_data`, `frontier`, `modalities`); `variants`:
    the same per variant; `multiplier`: per non-baseline variant, per size (params_active), the
    compute multiplier over the baseline variant. A fit that the runs cannot support is listed in
    `skipped` with the reason instead.
    """
    rng = np.random.default_rng(seed)
    skipped: list[str] = []
    fits: dict[str, dict[str, Fit]] = {}
    variants = sorted({r.variant for r in runs})
    out = _group(runs, "all runs", rng, bootstrap, delta, skipped, fits, required=True)
    out["runs"] = len(runs)
    out["variants"] = {}
    for v in variants:
        members = [r for r in runs if r.variant == v]
        if len(variants) == 1:  # the variant is all the runs: same fits
            fits[v] = fits["all runs"]
            out["variants"][v] = {k: out[k] for k in ("compute", "params_data", "frontier", "modalities", "runs")
                                  if k in out}
            continue
        out["variants"][v] = _group(members, v, rng, bootstrap, delta, skipped, fits) | {"runs": len(members)}
    out["multiplier"] = {}
    base = fits.get(baseline, {}).get("compute")
    if base is None:
        skipped.append(f"multiplier: no L(C) fit of the baseline variant {baseline!r} (variants: {', '.join(variants)})")
    else:
        for v in variants:
            if v == baseline or "compute" not in fits.get(v, {}):
                continue
            out["multiplier"][v] = [
                {"params_active": size, "flops": c, **multiplier(fits[v]["compute"], base, c, rng)}
                for size, c in _sizes([r for r in runs if r.variant == v])]
    out["baseline"] = baseline
    out["bootstrap"] = bootstrap
    out["confidence"] = CONFIDENCE
    out["skipped"] = skipped
    out["_fits"] = fits  # for the plots; removed by `json_ready`
    return out


def _sizes(runs: Sequence[Run]) -> list[tuple[float, float]]:
    """(params_active, geometric-mean flops of its runs) per distinct size, smallest first."""
    sizes = sorted({r.params_active for r in runs})
    return [(n, float(np.exp(np.mean([math.log(r.flops) for r in runs if r.params_active == n])))) for n in sizes]


def _group(runs, name, rng, bootstrap, delta, skipped, fits, *, required=False) -> dict:
    out: dict = {}
    mine = fits.setdefault(name, {})
    try:
        mine["compute"] = fit_compute(runs, lambda r: r.loss, bootstrap=bootstrap, rng=rng, delta=delta)
        out["compute"] = _report(mine["compute"])
    except FitError as err:
        if required:
            raise
        skipped.append(f"{name}: {err}")
    try:
        mine["params_data"] = fit_params_data(runs, bootstrap=bootstrap, rng=rng, delta=delta)
        out["params_data"] = _report(mine["params_data"])
        out["frontier"] = frontier(mine["params_data"], flops_per_param_token(runs))
    except FitError as err:
        skipped.append(f"{name}: {err}")
    out["modalities"] = {}
    for modality in MODALITY_FIELDS:
        having = [r for r in runs if modality in r.modality_loss]
        if not having:
            continue
        try:
            mine[modality] = fit_compute(having, lambda r, m=modality: r.modality_loss[m], bootstrap=bootstrap,
                                         rng=rng, delta=delta, what=f"L(C) of the {modality} loss")
            out["modalities"][modality] = _report(mine[modality])
        except FitError as err:
            skipped.append(f"{name}: {err}")
    return out


def _report(fit: Fit) -> dict:
    return {**fit.constants(), "runs": fit.runs, "huber": fit.huber, "bootstrap_fits": len(fit.samples)}


def json_ready(analysis: dict) -> dict:
    """The analysis without the fit objects kept for plotting."""
    return {k: v for k, v in analysis.items() if k != "_fits"}


def summary_table(analysis: dict) -> str:
    """A plain-text reading of `analyse`'s result."""
    pct = round(analysis["confidence"] * 100)
    lines = [f"{analysis['runs']} runs, {analysis['bootstrap']} bootstrap resamples, {pct}% intervals", ""]
    header = f"{'group':<14} {'law':<14} {'constant':<9} {'value':>12} {'low':>12} {'high':>12}"
    lines += [header, "-" * len(header)]
    groups = [("all runs", analysis)] + list(analysis["variants"].items())
    for name, group in groups:
        for label, key in (("L(C)", "compute"), ("L(N,D)", "params_data")):
            if key in group:
                lines += _rows(name, label, group[key])
        for modality, fit in group.get("modalities", {}).items():
            lines += _rows(name, f"L(C) {modality}", fit)
        if "frontier" in group:
            lines += [_row(name, "N_opt~C^a", "a", group["frontier"]["params_exponent"]),
                      _row(name, "D_opt~C^b", "b", group["frontier"]["tokens_exponent"])]
    for variant, points in analysis["multiplier"].items():
        lines += ["", f"compute multiplier of {variant} over {analysis['baseline']} "
                      f"(baseline compute reaching {variant}'s loss / {variant}'s compute):"]
        lines += [_row(variant, f"N={p['params_active']:.3g}", "x", p) for p in points]
    if analysis["skipped"]:
        lines += ["", "not fitted:"] + [f"  {s}" for s in analysis["skipped"]]
    return "\n".join(lines)


def _rows(group: str, law: str, constants: dict) -> list[str]:
    return [_row(group, law, name, constants[name]) for name in constants
            if isinstance(constants[name], dict)]


def _row(group: str, law: str, name: str, c: dict) -> str:
    def num(x):
        return f"{x:>12.4g}" if x is not None else f"{'-':>12}"

    return f"{group:<14} {law:<14} {name:<9} {num(c['value'])} {num(c['low'])} {num(c['high'])}"
