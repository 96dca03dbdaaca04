"""Training metrics: per-window aggregation, console progress bar, metrics.jsonl and TensorBoard.

The train step returns sums (the model family's loss sums, token counts, expert assignments); a
window of `log_every` steps adds them up on the host and the family turns the totals into its
record entries, so e.g. MoST's per-task losses are token-weighted over the window rather than
averages of noisy per-step means. Skipped (non-finite) steps are counted but left out of the
summed figures.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from most_jax.atomic import atomic_file
from most_jax.config import Config
from most_jax.models.family import get_family

METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.jsonl"
TENSORBOARD_DIR = "tensorboard"

# Step metrics that are not sums over a window: read from the window's last step, or counted.
_NOT_SUMMED = frozenset({"tokens", "lr", "finite", "skipped", "nonfinite_streak"})


class MetricsWindow:
    """Accumulates host copies of step metrics between two log lines."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.family = get_family(cfg.model)
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
        for key, value in metrics.items():
            if key not in _NOT_SUMMED:
                value = np.asarray(value, np.float64)
                self.sums[key] = self.sums[key] + value if key in self.sums else value

    def record(self, step: int, now: float) -> dict[str, Any]:
        """The log record of the window ending at `step` (JSON-ready: NaN-free, None when unknown)."""
        elapsed = max(now - self.start, 1e-9)
        s, n = self.sums, self.finite_steps
        rec: dict[str, Any] = {"step": step}
        rec["loss"] = float(s["loss"]) / n if n else None
        family_part = self.family.summarise(self.cfg, {k: v for k, v in s.items() if k not in ("loss", "grad_norm")}, n)
        clash = sorted(set(family_part) & {"step", "loss", "grad_norm", "lr", "tokens_per_s", "step_time_s",
                                           "skipped_steps", "nonfinite_in_window"})
        if clash:
            raise ValueError(f"model family {self.family.name!r}: summary entries {clash} clash with the trainer's")
        rec.update(family_part)
        rec["grad_norm"] = float(s["grad_norm"]) / n if n else None
        rec["lr"] = float(self.last["lr"])
        rec["tokens_per_s"] = self.tokens / elapsed
        rec["step_time_s"] = elapsed / self.steps
        rec["skipped_steps"] = int(self.last["skipped"])
        rec["nonfinite_in_window"] = self.steps - n
        return rec


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
        parts += _loss_details(rec)
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

    def note(self, line: str) -> None:
        """A line of its own between progress lines (an in-place bar is redrawn by the next update)."""
        self.stream.write(("\r\x1b[K" if self.in_place else "") + line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.in_place:
            self.stream.write("\n")
            self.stream.flush()


def _loss_details(rec: dict[str, Any]) -> list[str]:
    """"(asr 1.234, tts 2.345)"-style groups of a record's per-task and per-modality losses."""
    parts = []
    for prefix in ("loss_task/", "loss_modality/"):
        detail = [f"{k[len(prefix):]} {v:.3f}" for k, v in rec.items() if k.startswith(prefix) and v is not None]
        if detail:
            parts.append("(" + ", ".join(detail) + ")")
    return parts


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class MetricsLogger:
    """Writes each record to RUN_DIR/metrics.jsonl, TensorBoard (RUN_DIR/tensorboard) and the console,
    and each held-out evaluation (train/evaluation.py) to RUN_DIR/eval.jsonl and TensorBoard's eval/.

    `start_step` > 0 means a resumed run: records after it (written by the interrupted run past its
    last checkpoint) are removed from both files and purged from TensorBoard, so the files
    describe one consistent history."""

    def __init__(self, run_dir: str | Path, *, total_steps: int, start_step: int, stream: TextIO | None = None):
        from tensorboardX import SummaryWriter  # heavy import, only where metrics are written

        import jax

        run_dir = Path(run_dir)
        self.path = run_dir / METRICS_FILE
        self.eval_path = run_dir / EVAL_FILE
        self.progress = ProgressBar(total_steps, stream)
        # Metrics are replicated, so every process of a multi-process run holds the same records; only
        # process 0 writes the shared run directory's files.
        self._files: dict[Path, TextIO] = {}
        self._tb = None
        if jax.process_index() == 0:
            for path in (self.path, self.eval_path):
                _truncate_jsonl(path, start_step)
            self._tb = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=start_step + 1 if start_step else None)

    def write(self, rec: dict[str, Any]) -> None:
        self._record(self.path, rec, "")
        self.progress.update(rec)

    def write_eval(self, rec: dict[str, Any]) -> None:
        self._record(self.eval_path, rec, "eval/")
        head = [f"ce_loss {rec['ce_loss']:.4f}"] if rec.get("ce_loss") is not None else []
        self.progress.note(f"[eval] step {rec['step']}: held-out " + "  ".join(head + _loss_details(rec)))

    def _record(self, path: Path, rec: dict[str, Any], prefix: str) -> None:
        if self._tb is None:
            return
        if path not in self._files:
            self._files[path] = path.open("a", encoding="utf-8")
        self._files[path].write(json.dumps(rec) + "\n")
        self._files[path].flush()
        step = rec["step"]
        for key, value in rec.items():
            if key == "step" or value is None or key.endswith(("/tokens_per_expert", "/layers")):
                continue
            if isinstance(value, list):
                layers = rec[key.rsplit("/", 1)[0] + "/layers"]
                for layer, v in zip(layers, value):
                    self._tb.add_scalar(f"{prefix}{key}/layer_{layer}", v, step)
            else:
                self._tb.add_scalar(prefix + key, value, step)

    def close(self) -> None:
        self.progress.close()
        for file in self._files.values():
            file.close()
        if self._tb is not None:
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
