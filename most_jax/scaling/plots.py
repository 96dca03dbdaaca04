"""PNG plots of a scaling study's fits (`most scaling fit`): loss vs compute with the L(C) fits and
the compute-optimal frontier, the per-modality losses, and the compute multiplier vs size."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from most_jax.atomic import atomic_file
from most_jax.scaling.fit import flops_per_param_token, frontier_loss
from most_jax.scaling.results import MODALITY_FIELDS, Run

COMPUTE_PNG = "loss_vs_compute.png"
MODALITIES_PNG = "loss_by_modality.png"
MULTIPLIER_PNG = "multiplier_vs_size.png"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # plots are files; there may be no display
    import matplotlib.pyplot as plt

    return plt


def write_plots(runs: Sequence[Run], analysis: dict, out_dir: str | Path) -> list[Path]:
    """Writes the plots that the analysis supports into out_dir; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [_compute_plot(runs, analysis, out_dir / COMPUTE_PNG)]
    if any(r.modality_loss for r in runs):
        written.append(_modality_plot(runs, analysis, out_dir / MODALITIES_PNG))
    if analysis["multiplier"]:
        written.append(_multiplier_plot(analysis, out_dir / MULTIPLIER_PNG))
    return written


def _span(runs: Sequence[Run]) -> np.ndarray:
    flops = [r.flops for r in runs]
    return np.geomspace(min(flops) / 2, max(flops) * 2, 200)


def _compute_plot(runs, analysis, path: Path) -> Path:
    plt = _pyplot()
    fits = analysis["_fits"]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for i, variant in enumerate(analysis["variants"]):
        members = [r for r in runs if r.variant == variant]
        color = f"C{i}"
        ax.scatter([r.flops for r in members], [r.loss for r in members], color=color, s=18, label=f"{variant} runs")
        mine = fits.get(variant, {})
        c = _span(members)
        if "compute" in mine:
            law = mine["compute"].law
            ax.plot(c, law(c), color=color, label=f"{variant} L(C): alpha={law.values[2]:.3f}")
        if "params_data" in mine:
            ax.plot(c, frontier_loss(mine["params_data"].law, c, flops_per_param_token(members)), color=color,
                    linestyle="--", linewidth=1, label=f"{variant} compute-optimal L(N,D)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel("final loss (nats per token)")
    ax.set_title("loss vs compute: L(C) fits (solid), compute-optimal frontier of L(N,D) (dashed)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def _modality_plot(runs, analysis, path: Path) -> Path:
    plt = _pyplot()
    fits = analysis["_fits"]["all runs"]
    fig, axes = plt.subplots(1, len(MODALITY_FIELDS), figsize=(11, 4.5), sharey=True)
    for ax, modality in zip(axes, MODALITY_FIELDS):
        having = [r for r in runs if modality in r.modality_loss]
        for i, variant in enumerate(analysis["variants"]):
            members = [r for r in having if r.variant == variant]
            ax.scatter([r.flops for r in members], [r.modality_loss[modality] for r in members], color=f"C{i}",
                       s=18, label=variant)
        if modality in fits:
            c = _span(having)
            law = fits[modality].law
            ax.plot(c, law(c), color="black", label=f"all runs: alpha={law.values[2]:.3f}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training compute C (FLOPs)")
        ax.set_title(f"{modality} loss")
        ax.grid(True, which="both", alpha=0.3)
        if having:
            ax.legend(fontsize=8)
    axes[0].set_ylabel("loss (nats per token)")
    return _save(fig, plt, path)


def _multiplier_plot(analysis, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (variant, points) in enumerate(analysis["multiplier"].items()):
        shown = [p for p in points if p["value"] is not None]
        sizes = np.array([p["params_active"] for p in shown])
        value = np.array([p["value"] for p in shown])
        low = np.array([p["low"] if p["low"] is not None else p["value"] for p in shown])
        high = np.array([p["high"] if p["high"] is not None else p["value"] for p in shown])
        ax.errorbar(sizes, value, yerr=[value - low, high - value], color=f"C{i + 1}", marker="o", capsize=3,
                    label=variant)
    ax.axhline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("active parameters N")
    ax.set_ylabel(f"compute multiplier over {analysis['baseline']}")
    ax.set_title(f"{analysis['baseline']} compute reaching the variant's loss / the variant's compute")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def _save(fig, plt, path: Path) -> Path:
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
