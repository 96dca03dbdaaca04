"""Synthetic scaling-study results drawn from known constants (for the fit tests and the committed
notebooks/data/results.jsonl: `PYTHONPATH=tests python -m scaling_synth notebooks/data/results.jsonl`)."""

from __future__ import annotations

import json
import sys

import numpy as np

# Hoffmann et al. 2022's L(N, D) constants.
CHINCHILLA = {"E": 1.69, "A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28}
SIZES = tuple(np.geomspace(1e6, 1e9, 5))
TOKEN_MULTIPLES = (5, 10, 20, 40)  # tokens per active parameter


def loss_nd(n, d, c=CHINCHILLA):
    return c["E"] + c["A"] * n ** -c["alpha"] + c["B"] * d ** -c["beta"]


def params_data_runs(rng: np.random.Generator, *, variant: str = "dense", noise: float = 0.005,
                     compute_saving: float = 1.0, constants: dict = CHINCHILLA) -> list[dict]:
    """Runs of every size x token multiple, loss from L(N, D) times log-normal noise; the variant
    spends 6 N D / compute_saving FLOPs (an MoE reaching the dense loss with less compute)."""
    runs = []
    for n in SIZES:
        for m in TOKEN_MULTIPLES:
            d = n * m
            runs.append({"run": f"{variant}-{n:.3g}-x{m}", "variant": variant, "params_active": n, "tokens": d,
                         "flops": 6 * n * d / compute_saving,
                         "loss": float(loss_nd(n, d, constants) * np.exp(rng.normal(0, noise)))})
    return runs


def notebook_table(rng: np.random.Generator) -> list[dict]:
    """Dense and MoE runs (the MoE needing half the compute), with text and audio losses whose
    L(N, D) differ from the overall one (audio: larger irreducible loss, slower in N)."""
    runs = params_data_runs(rng, variant="dense") + params_data_runs(rng, variant="moe", compute_saving=2.0)
    text = dict(CHINCHILLA, E=1.5)
    audio = dict(CHINCHILLA, E=2.2, alpha=0.25)
    for r in runs:
        r["loss_text"] = float(loss_nd(r["params_active"], r["tokens"], text) * np.exp(rng.normal(0, 0.005)))
        r["loss_audio"] = float(loss_nd(r["params_active"], r["tokens"], audio) * np.exp(rng.normal(0, 0.005)))
    return runs


if __name__ == "__main__":
    with open(sys.argv[1], "w", encoding="utf-8") as f:
        for record in notebook_table(np.random.default_rng(2026)):
            f.write(json.dumps(record) + "\n")
