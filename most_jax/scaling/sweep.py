"""The sweep runner of a ladder (ladder.py): its runs one after another through the common trainer,
each appending one object to OUT/results.jsonl (the table `most scaling fit` reads).

Layout of OUT: configs/<run>.yaml (each run's full config, also what a cluster launch trains),
runs/<run>/ (the trainer's run directory: checkpoints, metrics.jsonl, wall.json), results.jsonl.
Idempotent and resumable: a run already in results.jsonl is skipped (with the same config; another
config for that name is an error), any other run resumes from its latest checkpoint (a run
stopped by SIGINT/SIGTERM saved one) or starts afresh, and a finished run whose result was not
yet appended (a crash in between) is only collected. results.jsonl is rewritten atomically
(temporary file, then rename) after every run, so an interruption never leaves half a line.

A result holds run, size, variant, params_active / params_total / params_embedding (most flops),
tokens (train.steps x data.batch_size x data.seq_len: what the model computed, padding included),
flops (tokens x the exact training FLOPs per token), flops_6n (6 x active params x tokens), steps,
wall_s (training wall time summed over the sessions of the run), loss / loss_text / loss_audio (the
cross-entropy at the last step, overall, on text and on audio target tokens: on held-out records
when the base config has data.eval_records (`--eval-records`; loss_source "held_out"), else of the
last log window (train.log_every steps of data the run had not trained on yet when the corpus is
larger than the run's tokens; loss_source "train_window")) and evals (that triple at every
evaluation or log window, with its step and tokens).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, TextIO

import yaml

from most_jax.atomic import atomic_file
from most_jax.config import to_dict
from most_jax.scaling.ladder import LadderRun, expand
from most_jax.scaling.results import RESULTS_FILE
from most_jax.train.metrics import EVAL_FILE, METRICS_FILE

CONFIGS_DIR, RUNS_DIR, WALL_FILE = "configs", "runs", "wall.json"
LAUNCH_KINDS = ("tpu_pod", "slurm")


class SweepError(RuntimeError):
    """A sweep that cannot go on: the message names the run, file or argument."""


def plan(ladder: str | Path, overrides: list[str] | tuple[str, ...] = (), records: str | Path | None = None,
         sizes: list[str] | None = None, variants: list[str] | None = None,
         eval_records: str | Path | None = None) -> list[LadderRun]:
    """The ladder's runs, filtered to `sizes` and `variants` (None: all). `records`: a prepared
    directory to train on; the model's vocabulary comes from its layout.json (as `most demo` does).
    `eval_records`: held-out records (the same vocabulary) every run is scored on."""
    if eval_records is not None:
        overrides = [*overrides, f"data.eval_records={eval_records}"]
    base_edit = None if records is None else _on_records(Path(records))
    _, runs = expand(ladder, overrides, base_edit)
    for what, wanted, key in (("--sizes", sizes, "size"), ("--variants", variants, "variant")):
        if wanted is None:
            continue
        known = {getattr(r, key) for r in runs}
        unknown = sorted(set(wanted) - known)
        if unknown:
            raise SweepError(f"{what}: {', '.join(unknown)} not in the ladder (it has {', '.join(sorted(known))})")
        runs = [r for r in runs if getattr(r, key) in wanted]
    return runs


def _on_records(records: Path) -> Callable[[dict], dict]:
    from most_jax.data import records as rec

    layout_file = records / rec.LAYOUT_FILE
    if not layout_file.is_file():
        raise SweepError(f"--records: {records} holds no {rec.LAYOUT_FILE} (expected a `most data prepare` output)")
    layout = json.loads(layout_file.read_text())

    def edit(base: dict) -> dict:
        model = {**base["model"], "vocab_size": layout["vocab_size"], "vocab": layout["vocab"]}
        return {**base, "model": model, "data": {**base["data"], "records": str(records)}}

    return edit


def config_digest(run: LadderRun) -> str:
    return hashlib.sha256(json.dumps(to_dict(run.config), sort_keys=True).encode()).hexdigest()[:16]


def finished(out: Path) -> dict[str, dict[str, Any]]:
    """Run name -> its result object, of OUT/results.jsonl (empty when there is none)."""
    file = out / RESULTS_FILE
    if not file.is_file():
        return {}
    done = {}
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise SweepError(f"{file} line {number}: not JSON ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("run"), str):
            raise SweepError(f"{file} line {number}: expected an object with a 'run' name")
        done[record["run"]] = record
    return done


def write_configs(runs: list[LadderRun], out: Path) -> dict[str, Path]:
    """OUT/configs/<run>.yaml of every run (rewritten only when it changed)."""
    paths = {}
    for run in runs:
        path = out / CONFIGS_DIR / f"{run.name}.yaml"
        text = yaml.safe_dump(to_dict(run.config), sort_keys=False)
        if not path.is_file() or path.read_text() != text:
            with atomic_file(path) as tmp:
                tmp.write_text(text)
        paths[run.name] = path
    return paths


def launch_commands(runs: list[LadderRun], out: Path, kind: str) -> list[str]:
    """One shell command per run not yet in results.jsonl that trains it on a cluster (`most train
    --resume` on the run's config); `most sweep ... --collect` then appends their results."""
    if kind not in LAUNCH_KINDS:
        raise SweepError(f"--emit-launch: must be one of {', '.join(LAUNCH_KINDS)}, got {kind!r}")
    configs = write_configs(runs, out)
    done = finished(out)
    commands = []
    for run in runs:
        if run.name in done:
            continue
        train = (f"most train --config {configs[run.name]} --run-dir {out / RUNS_DIR / run.name} --resume")
        if kind == "tpu_pod":  # every host of the pod runs the same command (JAX multi-process)
            commands.append(f"gcloud compute tpus tpu-vm ssh \"$TPU_NAME\" --zone \"$ZONE\" --worker=all "
                            f"--command 'cd \"$REPO\" && {train}'")
        else:
            commands.append(f"sbatch --job-name={run.name} --nodes=1 --wrap '{train}'")
    return commands


def run_sweep(runs: list[LadderRun], out: Path, *, console: TextIO, collect_only: bool = False,
              stop_after: int | None = None) -> dict[str, list[str]]:
    """Trains (or with collect_only, only collects) every run not in OUT/results.jsonl, in order.
    Returns {"skipped", "trained", "collected", "pending"} run names; stops at the first run
    stopped by a signal (or by `stop_after` steps, for tests), leaving it resumable."""
    out.mkdir(parents=True, exist_ok=True)
    write_configs(runs, out)
    summary: dict[str, list[str]] = {"skipped": [], "trained": [], "collected": [], "pending": []}
    for i, run in enumerate(runs):
        done = finished(out)
        if run.name in done:
            if done[run.name].get("config_digest") != config_digest(run):
                raise SweepError(f"run {run.name}: {out / RESULTS_FILE} holds a result made with another config; "
                                 f"remove its line to rerun it, or sweep into another --out")
            console.write(f"[sweep] {run.name}: done, skipped\n")
            summary["skipped"].append(run.name)
            continue
        run_dir = out / RUNS_DIR / run.name
        if collect_only:
            if _final_step(run_dir) != run.config.train.steps:
                summary["pending"].append(run.name)
                continue
        else:
            console.write(f"[sweep] {run.name} ({i + 1}/{len(runs)}): {run.config.train.steps} steps, "
                          f"{run.tokens:,} tokens, {run.budget.params_active:,} active parameters\n")
            console.flush()
            stopped_by = _train(run, run_dir, console, stop_after)
            if stopped_by is not None:
                console.write(f"[sweep] {run.name}: stopped by {stopped_by}; rerun the same command to resume it\n")
                summary["pending"] += [r.name for r in runs[i:]]
                return summary
        _append(out, result(run, run_dir))
        summary["collected" if collect_only else "trained"].append(run.name)
    return summary


def _train(run: LadderRun, run_dir: Path, console: TextIO, stop_after: int | None) -> str | None:
    from most_jax.models.family import get_family
    from most_jax.train.loop import run_training

    batches = get_family(run.config.model).batches(run.config)
    started = time.perf_counter()
    try:
        outcome = run_training(run.config, run_dir, batches, resume=True, stop_after=stop_after, console=console)
    finally:
        wall = _wall(run_dir) + time.perf_counter() - started
        with atomic_file(run_dir / WALL_FILE) as tmp:
            tmp.write_text(json.dumps({"wall_s": wall}))
    return outcome.stopped_by


def _wall(run_dir: Path) -> float:
    file = run_dir / WALL_FILE
    return float(json.loads(file.read_text())["wall_s"]) if file.is_file() else 0.0


def _final_step(run_dir: Path) -> int | None:
    evals = _evals(run_dir / METRICS_FILE, 1) if (run_dir / METRICS_FILE).is_file() else []
    return evals[-1]["step"] if evals else None


def _evals(file: Path, tokens_per_step: int) -> list[dict[str, Any]]:
    """The records of metrics.jsonl or eval.jsonl, one per step (a resumed run's repeated steps: the last)."""
    by_step = {}
    for line in file.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            by_step[rec["step"]] = {"step": rec["step"], "tokens": rec["step"] * tokens_per_step,
                                    "loss": rec.get("ce_loss"), "loss_text": rec.get("loss_modality/text"),
                                    "loss_audio": rec.get("loss_modality/audio")}
    return [by_step[s] for s in sorted(by_step)]


def result(run: LadderRun, run_dir: Path) -> dict[str, Any]:
    """The results-table object of a finished run: its losses are the held-out ones (eval.jsonl)
    when the run was evaluated, else those of its training log windows (metrics.jsonl)."""
    cfg = run.config
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    held_out = cfg.train.eval_every > 0
    file = run_dir / (EVAL_FILE if held_out else METRICS_FILE)
    if not file.is_file():
        raise SweepError(f"run {run.name}: {file} missing; the run never logged")
    evals = _evals(file, tokens_per_step)
    last = evals[-1]
    if last["step"] != cfg.train.steps:
        raise SweepError(f"run {run.name}: {file} holds records up to step {last['step']} of {cfg.train.steps}")
    if last["loss"] is None:
        raise SweepError(f"run {run.name}: the last record of {file} has no finite loss")
    budget = run.budget
    tokens = cfg.train.steps * tokens_per_step
    return {"run": run.name, "size": run.size, "variant": run.variant, "params_active": budget.params_active,
            "params_total": budget.params, "params_embedding": budget.embedding_params, "tokens": tokens,
            "flops": tokens * budget.train_flops_per_token, "flops_6n": 6.0 * budget.params_active * tokens,
            "steps": cfg.train.steps, "wall_s": _wall(run_dir), "loss": last["loss"], "loss_text": last["loss_text"],
            "loss_audio": last["loss_audio"], "loss_source": "held_out" if held_out else "train_window",
            "evals": evals, "config_digest": config_digest(run)}


def _append(out: Path, record: dict[str, Any]) -> None:
    file = out / RESULTS_FILE
    old = file.read_text(encoding="utf-8") if file.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    with atomic_file(file) as tmp:
        tmp.write_text(old + json.dumps(record) + "\n", encoding="utf-8")

