"""Exact resume on the real data pipeline: an uninterrupted run against one stopped and resumed
(in process), one stopped by SIGTERM (`most train` subprocess) and one killed by SIGKILL while
saving checkpoints every step. Losses must be identical, bitwise (CPU)."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import yaml
from data_corpus import make_prepared, make_tokenizer, tiny_model_config

from most_jax.checkpoint.params_io import load_checkpoint, step_dir
from most_jax.config import load_config
from most_jax.data.pipeline import build_dataset
from most_jax.train.loop import CHECKPOINT_DIR, run_training

# The schedule spans STEPS; the comparisons stop at COMPARE (runs end there with stop_after), and
# STEPS leaves a subprocess enough steps that a signal surely arrives mid-run.
STEPS, COMPARE = 400, 10


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    prepared = make_prepared(root / "prepared", make_tokenizer(root / "tok"))
    cfg_dict = tiny_model_config(prepared)
    cfg_dict["data"] = {"records": str(prepared), "seq_len": 48, "batch_size": 4,
                        "mixture": {"asr": 0.4, "tts": 0.4, "text_lm": 0.2}}
    cfg_dict["train"] = {"steps": STEPS, "warmup_steps": 3, "lr": 3e-3, "log_every": 1, "checkpoint_every": 4,
                         "micro_batches": 2}
    config_path = root / "train.yaml"
    config_path.write_text(yaml.safe_dump(cfg_dict))
    cfg = load_config(config_path)
    straight = root / "straight"
    run_training(cfg, straight, iter(build_dataset(cfg.data)), stop_after=COMPARE, console=io.StringIO())
    return cfg, config_path, _losses(straight), root


def _losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps)), f"metrics.jsonl steps are not one history: {steps}"
    return {r["step"]: r["loss"] for r in records}


def _latest_step(run_dir):
    # Read from the directory names: opening a second CheckpointManager here would start a second
    # background cleanup of the killed run's temporary directories next to the one of the resume.
    return int(step_dir(run_dir / CHECKPOINT_DIR).name)


def _params(run_dir):
    return jax.tree.leaves(load_checkpoint(run_dir / CHECKPOINT_DIR)[1])


def _most_train(config_path, run_dir, *extra):
    log = open(run_dir.parent / f"{run_dir.name}.log", "ab")
    # One CPU device, so `most train`'s default mesh is the single device the in-process runs use
    # (conftest simulates 8). The subprocesses compile the same step: a shared persistent cache
    # saves all but the first compile.
    xla_flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                         if not f.startswith("--xla_force_host_platform_device_count"))
    env = {**os.environ, "XLA_FLAGS": xla_flags, "JAX_COMPILATION_CACHE_DIR": str(run_dir.parent / "jax_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    return subprocess.Popen([sys.executable, "-m", "most_jax.cli", "train", "--config", str(config_path),
                             "--run-dir", str(run_dir), *extra], stdout=log, stderr=log, env=env)


def _wait_for_steps(run_dir, proc, count, timeout=300):
    deadline = time.time() + timeout
    metrics = run_dir / "metrics.jsonl"
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= count:
            return
        assert proc.poll() is None, f"most train exited early ({proc.returncode}); see {run_dir}.log"
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no {count} logged steps in {timeout} s")


def test_stop_and_resume_equals_straight_run(setup):
    cfg, _, straight, root = setup
    run_dir = root / "split"
    first = run_training(cfg, run_dir, iter(build_dataset(cfg.data)), stop_after=4, console=io.StringIO())
    assert first.stopped_by == "stop_after" and first.step == 4
    resumed = run_training(cfg, run_dir, iter(build_dataset(cfg.data)), resume=True, stop_after=COMPARE,
                           console=io.StringIO())
    assert resumed.step == COMPARE
    assert _losses(run_dir) == straight
    for a, b in zip(_params(run_dir), _params(root / "straight")):
        np.testing.assert_array_equal(a, b)


def test_sigterm_saves_and_resume_continues_exactly(setup):
    cfg, config_path, straight, root = setup
    run_dir = root / "sigterm"
    proc = _most_train(config_path, run_dir)
    _wait_for_steps(run_dir, proc, 2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, (root / "sigterm.log").read_text()[-3000:]
    stopped_at = _latest_step(run_dir)
    assert 2 <= stopped_at < STEPS, "SIGTERM should stop the run mid-way with a checkpoint"
    assert f"stopped by SIGTERM at step {stopped_at}" in (root / "sigterm.log").read_text()
    resumed = _most_train(config_path, run_dir, "--resume", "--stop-after", str(max(COMPARE, stopped_at + 2)))
    assert resumed.wait(timeout=300) == 0, (root / "sigterm.log").read_text()[-3000:]
    losses = _losses(run_dir)
    assert {s: losses[s] for s in straight} == straight


def test_sigkill_during_checkpointing_leaves_a_resumable_latest(setup):
    cfg, config_path, straight, root = setup
    run_dir = root / "sigkill"
    # A checkpoint every step: the asynchronous writer is busy almost all the time, so the kill
    # most likely lands in the middle of a save.
    proc = _most_train(config_path, run_dir, "--set", "train.checkpoint_every=1", "--set", "train.keep=2")
    _wait_for_steps(run_dir, proc, 4)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    end = max(COMPARE, _latest_step(run_dir) + 2)
    resumed = run_training(cfg, run_dir, iter(build_dataset(cfg.data)), resume=True, stop_after=end,
                           console=io.StringIO())
    assert resumed.step == end
    leftovers = [p.name for p in (run_dir / CHECKPOINT_DIR).iterdir() if not p.name.isdigit()]
    assert not [name for name in leftovers if "tmp" in name], f"unfinished saves left behind: {leftovers}"
    losses = _losses(run_dir)
    assert {s: losses[s] for s in straight} == straight
