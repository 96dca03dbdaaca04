"""Training curves: a PNG of the losses in a run's metrics.jsonl (overall and per task)."""

from __future__ import annotations

import json
from pathlib import Path

from most_jax.atomic import atomic_file
from most_jax.train.metrics import METRICS_FILE

TASK_PREFIX = "loss_task/"


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of RUN_DIR/metrics.jsonl; a line torn by a killed writer is left out."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics file (has the run logged a step?)")
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def loss_series(records: list[dict], names: tuple[str, ...] = ("loss",)) -> dict[str, tuple[list[int], list[float]]]:
    """{"loss", another of `names` (e.g. U2++'s loss_ctc) or a task name: (steps, values)}, skipping
    windows where the value is unknown."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for rec in records:
        for key, value in rec.items():
            if value is None or not (key in names or key.startswith(TASK_PREFIX)):
                continue
            steps, values = series.setdefault(key.removeprefix(TASK_PREFIX), ([], []))
            steps.append(rec["step"])
            values.append(float(value))
    return series


def plot_losses(records: list[dict], out_png: str | Path, title: str = "training loss", names: tuple[str, ...] = ("loss",),
                ylabel: str = "cross-entropy (nats per loss token)") -> None:
    """Writes the curves of `loss`, the other `names` and the per-task losses to out_png (through a
    temporary file renamed into place)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a training machine
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    series = loss_series(records, names)
    if not series:
        raise ValueError("no loss values in the metrics records")
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, (steps, values) in series.items():
        style = {"color": "black", "linewidth": 2.0} if name == "loss" else {"linewidth": 1.2}
        ax.plot(steps, values, label="total (incl. aux)" if name == "loss" else name, **style)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:g}"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.StrMethodFormatter("{x:g}"))
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        with atomic_file(out_png) as tmp:  # same suffix, so savefig writes a PNG
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)
