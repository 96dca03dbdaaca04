"""Conversion benchmark: a synthetic DeepSeek-V2-shaped Hugging Face checkpoint, imported and exported.

The checkpoint has DeepSeek-V2-Lite's widths (vocab 102400, hidden 2048, 64 routed experts of 1408,
2 shared, MLA 512/64, first layer dense) and as many MoE layers as reach the requested parameter
count, in bf16, per-expert release layout, sharded at 5 GB. Each direction runs in its own
subprocess (`most import-hf`, `most export-hf`) so its peak RSS (from wait4) is its own; the plain
copy of the same bytes is timed alongside as the disk's ceiling on this machine. Every time runs
until the data is on the disk: the child (or the copy) plus a `sync` of what it left in the page
cache. The export reads what the import wrote, which bypassed the page cache: it reads from the disk.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import ml_dtypes
import numpy as np

from most_jax.checkpoint.hf_config import hf_config_from_model
from most_jax.checkpoint.hf_export import MAX_SHARD_BYTES, write_hf_dir
from most_jax.checkpoint.hf_layout import release_layout
from most_jax.checkpoint.param_tree import abstract_params
from most_jax.checkpoint.safetensors_file import TensorSpec
from most_jax.config import AttentionConfig, ModelConfig, MoEConfig, RopeConfig
from most_jax.models.most import count_params

LITE = ModelConfig(
    vocab_size=102400, hidden_size=2048, num_layers=27, dense_ffn_dim=10944, first_k_dense_replace=1,
    attention=AttentionConfig(num_heads=16, q_lora_rank=None, kv_lora_rank=512, qk_nope_head_dim=128,
                              qk_rope_head_dim=64, v_head_dim=128),
    rope=RopeConfig(theta=10000.0, type="yarn", factor=40.0, original_max_position_embeddings=4096, mscale=0.707,
                    mscale_all_dim=0.707),
    moe=MoEConfig(num_experts=64, top_k=6, expert_ffn_dim=1408, num_shared_experts=2))


def synthetic_config(params: float) -> ModelConfig:
    """DeepSeek-V2-Lite widths with the number of MoE layers whose total is closest to `params`."""
    one = count_params(dataclasses.replace(LITE, num_layers=2))
    two = count_params(dataclasses.replace(LITE, num_layers=3))
    moe_layers = max(1, round((params - one) / (two - one)) + 1)
    return dataclasses.replace(LITE, num_layers=1 + moe_layers)


def write_synthetic_hf(out_dir: str | Path, cfg: ModelConfig, max_shard_size: int = MAX_SHARD_BYTES, seed: int = 0,
                       progress: Callable[[str], None] | None = None) -> int:
    """Writes a bf16 release-layout checkpoint of `cfg` with random N(0, 0.02) weights (norms 1);
    returns its tensor bytes. Values are windows of one random pool, so generation costs little."""
    pool = (np.random.default_rng(seed).standard_normal(1 << 24, np.float32) * 0.02).astype(ml_dtypes.bfloat16)
    maps = release_layout(cfg, abstract_params(cfg))
    specs = [TensorSpec(m.hf, pool.dtype, m.hf_shape) for m in maps]
    rng = np.random.default_rng(seed + 1)

    def tensor(i: int) -> np.ndarray:
        spec = specs[i]
        if spec.name.endswith("norm.weight"):
            return np.ones(spec.shape, pool.dtype)
        size = int(np.prod(spec.shape))
        if size > pool.size:
            return np.resize(pool, size).reshape(spec.shape)  # the pool repeated
        start = int(rng.integers(0, pool.size - size + 1))
        return pool[start:start + size].reshape(spec.shape)

    write_hf_dir(Path(out_dir), specs, tensor, hf_config_from_model(cfg, "deepseek_v2"), max_shard_size, progress)
    return sum(s.nbytes for s in specs)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def timed_subprocess(argv: list[str]) -> tuple[float, int]:
    """(seconds, peak RSS in bytes) of one child process; raises if it fails."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({child.returncode}): {child.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss * 1024  # Linux reports kilobytes


def _sync_seconds() -> float:
    start = time.perf_counter()
    os.sync()
    return time.perf_counter() - start


def _copy_seconds(src: Path, dst: Path) -> float:
    start = time.perf_counter()
    shutil.copytree(src, dst)
    return time.perf_counter() - start + _sync_seconds()


def run(params: float, work_dir: str | None, keep: bool, say: Callable[[str], None]) -> dict:
    cfg = synthetic_config(params)
    root = Path(tempfile.mkdtemp(prefix="most-bench-convert-", dir=work_dir))
    most = [sys.executable, "-m", "most_jax.cli"]
    try:
        say(f"generating {count_params(cfg) / 1e9:.2f}B parameters ({cfg.num_layers} layers) in {root}")
        hf_bytes = write_synthetic_hf(root / "hf", cfg)
        os.sync()
        copy_s = _copy_seconds(root / "hf", root / "copy")
        shutil.rmtree(root / "copy")
        say("import-hf")
        import_s, import_rss = timed_subprocess(most + ["import-hf", str(root / "hf"), str(root / "ckpt"),
                                                        "--dtype", "bfloat16"])
        import_s += _sync_seconds()
        say("export-hf")
        export_s, export_rss = timed_subprocess(most + ["export-hf", str(root / "ckpt"), str(root / "out")])
        export_s += _sync_seconds()
        exact = _same_tensors(root / "hf", root / "out")
        result = {
            "params": count_params(cfg), "layers": cfg.num_layers, "hf_bytes": hf_bytes,
            "orbax_bytes": _dir_bytes(root / "ckpt"),
            "import": {"seconds": import_s, "gb_per_s": hf_bytes / import_s / 1e9, "peak_rss_bytes": import_rss},
            "export": {"seconds": export_s, "gb_per_s": hf_bytes / export_s / 1e9, "peak_rss_bytes": export_rss},
            "copy": {"seconds": copy_s, "gb_per_s": hf_bytes / copy_s / 1e9},
            "round_trip_byte_exact": exact, "dir": str(root),
        }
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    return result


def _same_tensors(a: Path, b: Path) -> bool:
    """Every tensor of HF directory `a` is in `b` with equal bytes (read one tensor at a time)."""
    from most_jax.checkpoint.hf_import import HFTensors

    left, right = HFTensors(a), HFTensors(b)
    try:
        return left.names() == right.names() and all(
            left.read(n).tobytes() == right.read(n).tobytes() for n in left.names())
    finally:
        left.close()
        right.close()


def format_report(r: dict) -> str:
    gb = 1e9
    lines = [f"convert bench: {r['params'] / 1e9:.2f}B params ({r['layers']} layers), "
             f"{r['hf_bytes'] / gb:.2f} GB bf16 safetensors, Orbax checkpoint {r['orbax_bytes'] / gb:.2f} GB"]
    for name in ("import", "export"):
        d = r[name]
        lines.append(f"  {name}-hf: {d['seconds']:.1f} s, {d['gb_per_s']:.2f} GB/s, "
                     f"peak RSS {d['peak_rss_bytes'] / gb:.2f} GB")
    lines.append(f"  plain copy of the same files: {r['copy']['seconds']:.1f} s, {r['copy']['gb_per_s']:.2f} GB/s")
    lines.append(f"  import -> export byte-exact: {r['round_trip_byte_exact']}")
    return "\n".join(lines)
