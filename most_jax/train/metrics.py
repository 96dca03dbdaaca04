"""Training metrics: per-window aggregation, console progress bar, metrics.jsonl and TensorBoard.

The train step returns sums (loss sums, token counts, expert assignments); a window of `log_every`
steps adds them up on the host, so per-task and per-modality losses are token-weighted over the
window rather than averages of noisy per-step means. Skipped (non-finite) steps are counted but
left out of the loss and load figures.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from most_jax.atomic import atomic_file
from most_jax.config import Config
from most_jax.train.loss import MODALITY_NAMES

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"

_SUMMED = ("loss", "ce_sum", "loss_tokens", "task_ce_sum", "task_tokens", "modality_ce_sum", "modality_tokens",
           "aux_loss", "z_loss", "grad_norm", "load_LGE", "dropped_LG")


def expert_groups(cfg: Config) -> list[tuple[str, int, int]]:
    """(name, first expert, expert count) per row of the MoE load statistics' G axis."""
    moe = cfg.model.moe
    if not moe.modality_groups:
        return [("all", 0, moe.num_experts)]
    return [(g.name, g.first_expert, g.num_experts) for g in moe.modality_groups]


def load_balance(tokens_per_expert: np.ndarray) -> tuple[float, float]:
    """(max/mean, entropy / log(#experts)) of one layer's assignments over one group's experts;
    both are 1 when perfectly balanced. The caller skips groups that had nothing routed."""
    mean = tokens_per_expert.mean()
    p = tokens_per_expert / tokens_per_expert.sum()
    nz = p[p > 0]
    entropy = float(-(nz * np.log(nz)).sum())
    return float(tokens_per_expert.max() / mean), entropy / math.log(len(p)) if len(p) > 1 else 1.0


class MetricsWindow:
    """Accumulates host copies of step metrics between two log lines."""

    def __init__(self, cfg: Config, task_names: tuple[str, ...]):
        self.cfg = cfg
        self.task_names = task_names
        self.groups = expert_groups(cfg)
        self.reset(time.perf_counter())

    def reset(self, now: float) -> None:
        self.start = now
        self.steps = 0
        self.finite_steps = 0
        self.tokens = 0.0
        self.sums: dict[str, Any] = {}
        self.last: dict[str, Any] = {}

    def add(self, metrics: dict[str, Any]) -> None:
        self.steps += 1
        self.tokens += float(metrics["tokens"])
        self.last = metrics
        if not bool(metrics["finite"]):
            return
        self.finite_steps += 1
        for key in _SUMMED:
            if key in metrics:
                value = np.asarray(metrics[key], np.float64)
                self.sums[key] = self.sums[key] + value if key in self.sums else value

    def record(self, step: int, now: float) -> dict[str, Any]:
        """The log record of the window ending at `step` (JSON-ready: NaN-free, None when unknown)."""
        elapsed = max(now - self.start, 1e-9)
        s, n = self.sums, self.finite_steps
        rec: dict[str, Any] = {"step": step}
        rec["loss"] = float(s["loss"]) / n if n else None
        rec["ce_loss"] = _ratio(s.get("ce_sum"), s.get("loss_tokens"))
        for key in ("aux_loss", "z_loss", "grad_norm"):
            rec[key] = float(s[key]) / n if n else None
        for i, name in enumerate(self.task_names):
            if n and s["task_tokens"][i] > 0:
                rec[f"loss_task/{name}"] = float(s["task_ce_sum"][i] / s["task_tokens"][i])
        for i, name in enumerate(MODALITY_NAMES):
            if n and s["modality_tokens"][i] > 0:
                rec[f"loss_modality/{name}"] = float(s["modality_ce_sum"][i] / s["modality_tokens"][i])
        rec["lr"] = float(self.last["lr"])
        rec["tokens_per_s"] = self.tokens / elapsed
        rec["step_time_s"] = elapsed / self.steps
        rec["skipped_steps"] = int(self.last["skipped"])
        rec["nonfinite_in_window"] = self.steps - n
        if n and "load_LGE" in s:
            rec.update(self._load_record(s["load_LGE"], s["dropped_LG"]))
        return rec

    def _load_record(self, load_LGE: np.ndarray, dropped_LG: np.ndarray) -> dict[str, Any]:
        first_moe_layer = self.cfg.model.first_k_dense_replace
        out: dict[str, Any] = {}
        for g, (name, first, count) in enumerate(self.groups):
            per_layer = load_LGE[:, g, first:first + count]
            routed = per_layer.sum()
            if routed == 0:
                continue
            balance = [load_balance(row) for row in per_layer]
            out[f"load/{name}/layers"] = [first_moe_layer + i for i in range(len(per_layer))]
            out[f"load/{name}/tokens_per_expert"] = per_layer.round().astype(int).tolist()
            out[f"load/{name}/max_over_mean"] = [b[0] for b in balance]
            out[f"load/{name}/entropy"] = [b[1] for b in balance]
            out[f"dropped/{name}"] = float(dropped_LG[:, g].sum() / routed)
        return out


def _ratio(num, den) -> float | None:
    if num is None or den is None or float(den) == 0:
        return None
    return float(num) / float(den)


class ProgressBar:
    """One console line per log record: progress, loss by task, throughput and ETA. On a terminal
    the line is redrawn in place; in a log file each record is its own line."""

    def __init__(self, total_steps: int, stream: TextIO | None = None, width: int = 20):
        self.total = total_steps
        self.stream = stream or sys.stderr  # resolved per call: a default bound at import goes stale under capture
        self.width = width
        self.in_place = self.stream.isatty()

    def update(self, rec: dict[str, Any]) -> None:
        step = rec["step"]
        frac = min(step / self.total, 1.0)
        filled = int(round(frac * self.width))
        parts = [f"step {step}/{self.total} [{'#' * filled}{'.' * (self.width - filled)}] {frac:4.0%}"]
        if rec["loss"] is not None:
            parts.append(f"loss {rec['loss']:.4f}")
        for prefix in ("loss_task/", "loss_modality/"):
            detail = [f"{k[len(prefix):]} {v:.3f}" for k, v in rec.items() if k.startswith(prefix)]
            if detail:
                parts.append("(" + ", ".join(detail) + ")")
        if rec["grad_norm"] is not None:
            parts.append(f"gnorm {rec['grad_norm']:.3f}")
        parts.append(f"lr {rec['lr']:.2e}")
        parts.append(f"{rec['tokens_per_s']:,.0f} tok/s")
        parts.append(f"{rec['step_time_s']:.3f} s/step")
        if rec["nonfinite_in_window"]:
            parts.append(f"SKIPPED {rec['nonfinite_in_window']} non-finite")
        parts.append(f"ETA {_duration((self.total - step) * rec['step_time_s'])}")
        line = "  ".join(parts)
        if self.in_place:
            self.stream.write("\r\x1b[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.in_place:
            self.stream.write("\n")
            self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class MetricsLogger:
    """Writes each record to RUN_DIR/metrics.jsonl, TensorBoard (RUN_DIR/tensorboard) and the console.

    `start_step` > 0 means a resumed run: records after it (written by the interrupted run past its
    last checkpoint) are removed from metrics.jsonl and purged from TensorBoard, so the files
    describe one consistent history."""

    def __init__(self, run_dir: str | Path, *, total_steps: int, start_step: int, stream: TextIO | None = None):
        from tensorboardX import SummaryWriter  # heavy import, only where metrics are written

        import jax

        run_dir = Path(run_dir)
        self.path = run_dir / METRICS_FILE
        self.progress = ProgressBar(total_steps, stream)
        # Metrics are replicated, so every process of a multi-process run holds the same records; only
        # process 0 writes the shared run directory's files.
        self._file = self._tb = None
        if jax.process_index() == 0:
            _truncate_jsonl(self.path, start_step)
            self._file = self.path.open("a", encoding="utf-8")
            self._tb = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=start_step + 1 if start_step else None)

    def write(self, rec: dict[str, Any]) -> None:
        if self._file is None:
            self.progress.update(rec)
            return
        self._file.write(json.dumps(rec) + "\n")
        self._file.flush()
        step = rec["step"]
        for key, value in rec.items():
            if key == "step" or value is None or key.endswith(("/tokens_per_expert", "/layers")):
                continue
            if isinstance(value, list):
                layers = rec[key.rsplit("/", 1)[0] + "/layers"]
                for layer, v in zip(layers, value):
                    self._tb.add_scalar(f"{key}/layer_{layer}", v, step)
            else:
                self._tb.add_scalar(key, value, step)
        self.progress.update(rec)

    def close(self) -> None:
        self.progress.close()
        if self._file is not None:
            self._file.close()
            self._tb.close()


def _truncate_jsonl(path: Path, last_step: int) -> None:
    """Keeps the records with step <= last_step, and drops a line torn by a killed writer."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    with atomic_file(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
