"""`most compile`: topology names, analytic FLOPs, errors before compilation, and (with libtpu) a
tiny-config compile for a small TPU slice whose HLO holds the expert all-to-all."""

import json
import os
import subprocess
import sys

import pytest

from most_jax import aot
from most_jax.scaling.accounting import train_flops_per_step
from most_jax.config import load_config


def test_topology_names():
    t = aot.parse_topology("v5p-16")
    assert (t.chips, t.libtpu_name, t.hbm_bytes) == (8, "v5p:2x2x2", 95 * aot.GIB)
    assert aot.parse_topology("v5p-64").libtpu_name == "v5p:4x4x2"
    assert aot.parse_topology("v5e-256").libtpu_name == "v5e:16x16"
    assert aot.parse_topology("v4-32").chips == 16
    for bad, message in (("v9-8", "unknown topology"), ("v5p-7", "TensorCores"), ("v5e-12", "power-of-two")):
        with pytest.raises(aot.TopologyError, match=message):
            aot.parse_topology(bad)


def test_analytic_flops_of_the_16b_model():
    """6 x active params x tokens dominates: about 2.4B active matmul params per token (embedding
    lookup excluded, lm_head included) for 512 x 2048 tokens, plus attention."""
    shape = ["data.seq_len=2048"]
    flops = train_flops_per_step(load_config("configs/most_v2_lite.yaml", [*shape, "data.batch_size=512"]))
    tokens = 512 * 2048
    assert 6 * 2.2e9 * tokens < flops < 6 * 3.2e9 * tokens
    double = train_flops_per_step(load_config("configs/most_v2_lite.yaml", [*shape, "data.batch_size=1024"]))
    assert double == pytest.approx(2 * flops)


def _compile(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", ALLOW_MULTIPLE_LIBTPU_LOAD="1")
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, "-m", "most_jax.cli", "compile", "--config", "configs/most_tiny.yaml",
                           *args], capture_output=True, text=True, env=env, timeout=600)


def test_bad_inputs_fail_before_compiling():
    result = _compile("--topology", "v7x-8")
    assert result.returncode == 2 and "unknown topology 'v7x-8'" in result.stderr


def test_tiny_compile_for_a_tpu_slice(tmp_path):
    pytest.importorskip("libtpu")
    bad = _compile("--topology", "v5p-8", "--mesh", "data=1,expert=3")
    assert bad.returncode == 2 and "multiply to 3 devices, but there are 4" in bad.stderr
    result = _compile("--topology", "v5p-8", "--mesh", "data=2,expert=2", "--set", "data.batch_size=8",
                      "--set", "data.seq_len=32", "--json", "--dump-hlo", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert set(report) == {"topology", "chips", "mesh", "hbm_bytes_per_chip", "per_chip_bytes", "fits",
                           "flops_per_step"}
    assert set(report["per_chip_bytes"]) == {"params", "optimizer", "temp", "total"}
    assert report["chips"] == 4 and report["mesh"]["expert"] == 2 and report["fits"]
    b = report["per_chip_bytes"]
    assert b["optimizer"] == pytest.approx(2 * b["params"], rel=0.01)  # Adam: two moments per param
    assert b["total"] >= b["params"] + b["optimizer"]
    hlo = (tmp_path / "train_step.v5p-8.hlo.txt").read_text()
    assert "all-to-all" in hlo
