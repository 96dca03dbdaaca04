"""Streaming conversion: peak memory of import-hf / export-hf on a synthetic checkpoint of a few
hundred MB stays far below its size (measured in a subprocess), and a conversion killed half-way
leaves nothing that looks like a checkpoint."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys

import pytest

from most_jax.bench.convert import write_synthetic_hf
from most_jax.checkpoint.params_io import CheckpointError, load_config, step_dir
from most_jax.config import AttentionConfig, ModelConfig, MoEConfig

# 16 layers (15 MoE) of 32 experts 384 x 384 in bf16: about 28 MB of stacked experts per layer and
# projection-triple, about 0.45 GB in all.
SYNTHETIC = ModelConfig(
    vocab_size=1024, hidden_size=384, num_layers=16, dense_ffn_dim=512, first_k_dense_replace=1,
    attention=AttentionConfig(num_heads=4, q_lora_rank=None, kv_lora_rank=64, qk_nope_head_dim=32,
                              qk_rope_head_dim=16, v_head_dim=32),
    moe=MoEConfig(num_experts=32, top_k=4, expert_ffn_dim=384, num_shared_experts=1))
LAYER_EXPERT_BYTES = 3 * 32 * 384 * 384 * 2

_MEASURE = """
import resource, sys
from most_jax.checkpoint import hf_export, hf_import
from most_jax.checkpoint.param_tree import abstract_params
from most_jax.config import ModelConfig
abstract_params(ModelConfig())  # JAX and the model code warmed up: the fixed overhead
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if sys.argv[1] == "import":
    hf_import.import_hf(sys.argv[2], sys.argv[3], "bfloat16")
else:
    hf_export.export_hf(sys.argv[2], sys.argv[3], max_shard_size=100 * 10**6)
print(base * 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("streaming")
    size = write_synthetic_hf(root / "hf", SYNTHETIC, max_shard_size=100 * 10**6)
    return root, size


def _peak_above_base(*argv) -> int:
    out = subprocess.run([sys.executable, "-c", _MEASURE, *map(str, argv)], check=True, capture_output=True, text=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    base, peak = map(int, out.stdout.split())
    return peak - base


def test_import_and_export_memory_stays_near_one_layer(synthetic):
    root, size = synthetic
    assert size > 400 * 10**6
    grown = _peak_above_base("import", root / "hf", root / "ck")
    # Bounded by about one layer's stacked experts (a slice being read, one being written), not by
    # the model: a sixth of the checkpoint is already a couple of layers.
    bound = LAYER_EXPERT_BYTES + 32 * 2**20
    assert bound < size / 6
    assert grown < bound, (grown, size)
    grown = _peak_above_base("export", root / "ck", root / "out")
    assert grown < bound, (grown, size)
    index = json.loads((root / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 4
    # written as a transformers deepseek_v2 checkpoint, so imported with transformers' top-k reading
    moe = dataclasses.replace(SYNTHETIC.moe, norm_topk_reading="scale_only")
    assert load_config(root / "ck").model == dataclasses.replace(SYNTHETIC, dtype="bfloat16", param_dtype="bfloat16",
                                                                 moe=moe)


def _kill_after(argv: list[str], marker: str) -> None:
    """Runs `most argv`, SIGKILLs it as soon as a stderr line contains `marker`."""
    child = subprocess.Popen([sys.executable, "-m", "most_jax.cli", *argv], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    seen = []
    for line in child.stderr:
        seen.append(line)
        if marker in line:
            child.send_signal(signal.SIGKILL)
            break
    child.wait()
    assert child.returncode == -signal.SIGKILL, "".join(seen[-20:])


def test_interrupted_conversions_leave_no_checkpoint(synthetic, tmp_path):
    root, _ = synthetic
    _kill_after(["import-hf", str(root / "hf"), str(tmp_path / "ck"), "--dtype", "bfloat16"], "wrote layer slice 2/")
    assert not (tmp_path / "ck").exists()
    assert all(p.name.startswith(".ck.partial-") for p in tmp_path.iterdir())
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        step_dir(tmp_path / "ck")
    # The leftover does not block a new attempt.
    from most_jax.checkpoint.hf_import import import_hf
    import_hf(root / "hf", tmp_path / "ck", "bfloat16")
    assert (tmp_path / "ck" / "params").is_dir()

    _kill_after(["export-hf", str(tmp_path / "ck"), str(tmp_path / "out"), "--max-shard-size", "60MB"],
                "wrote model-00001-of-")
    assert not (tmp_path / "out").exists()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial-")]
    assert leftovers and not any((p / "config.json").exists() for p in leftovers)
