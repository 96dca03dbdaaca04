"""Multi-process training through launch/local.sh: 2 JAX processes (expert parallelism across them,
CPU collectives) give the losses of 1 process on the same global batches, checkpoints are written
and restored by all processes, and a failing process stops the launch instead of hanging it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ROOT / "launch" / "local.sh"


def _launch(processes: int, *args: str, devices: int = 1, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    return subprocess.run(["bash", str(LOCAL), str(processes), "--devices-per-process", str(devices), "--",
                           sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records}


def test_two_processes_match_one_and_resume_together(tmp_path):
    worker = str(ROOT / "tests" / "multihost_worker.py")
    one = _launch(1, worker, str(tmp_path / "one"), "data=1", "4", "4")
    assert one.returncode == 0, one.stderr[-3000:]
    first = _launch(2, worker, str(tmp_path / "two"), "data=1,expert=2", "4", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]
    second = _launch(2, worker, str(tmp_path / "two"), "data=1,expert=2", "4", "4", "--resume")
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("resumed from") == 2  # both processes restored the checkpoint
    want, got = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(want) == sorted(got) == [1, 2, 3, 4]
    np.testing.assert_allclose([got[s] for s in range(1, 5)], [want[s] for s in range(1, 5)], rtol=2e-5)


def test_a_failing_process_stops_the_launch(tmp_path):
    script = ("import os, sys, time\n"
              "from most_jax import sharding\n"
              "sharding.initialize_distributed()\n"
              "if os.environ['MOST_PROCESS_ID'] == '1':\n"
              "    os._exit(7)  # dies without saying goodbye to the coordinator\n"
              "import jax, jax.numpy as jnp\n"
              "from jax.experimental import multihost_utils\n"
              "multihost_utils.sync_global_devices('never reached by process 1')\n")
    result = _launch(2, "-c", script, timeout=120)
    assert result.returncode == 7
    assert "exited with status 7; stopping the others" in result.stderr
