"""Data pipeline throughput: packed tokens per second of one process, and packing efficiency."""

from __future__ import annotations

import dataclasses
import time

from most_jax.config import DataConfig
from most_jax.data.pipeline import PreparedData, build_dataset


@dataclasses.dataclass(frozen=True)
class DataBenchResult:
    batches: int
    seconds: float
    tokens_per_second: float  # row slots (padding included) delivered per second
    real_tokens_per_second: float  # non-padding tokens per second
    packing_efficiency: float  # non-padding fraction of the row slots
    loss_token_fraction: float
    sequences_per_row: float


def bench_data(cfg: DataConfig, seconds: float = 10.0, warmup_batches: int = 5) -> DataBenchResult:
    """Iterates this process's pipeline for `seconds` after `warmup_batches` (worker start-up, file open)."""
    it = iter(build_dataset(cfg, PreparedData(cfg.records), process_index=0, process_count=1))
    try:
        for _ in range(warmup_batches):
            next(it)
        slots = real = loss = segments = rows = batches = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            batch = next(it)
            segment_ids = batch["segment_ids"]
            slots += segment_ids.size
            real += int((segment_ids > 0).sum())
            loss += int(batch["loss_mask"].sum())
            segments += int(segment_ids.max(axis=1).sum())
            rows += segment_ids.shape[0]
            batches += 1
        elapsed = time.perf_counter() - start
    finally:
        it.close()  # stops worker processes and frees their shared memory
    return DataBenchResult(batches, elapsed, slots / elapsed, real / elapsed, real / slots,
                           loss / max(real, 1), segments / rows)


def format_result(cfg: DataConfig, result: DataBenchResult) -> str:
    weights = {k: v for k, v in dataclasses.asdict(cfg.mixture).items() if v > 0}
    return (f"data bench: {cfg.records}, seq_len {cfg.seq_len}, {cfg.batch_size} rows/batch, "
            f"{cfg.num_workers} workers, mixture {weights}\n"
            f"  {result.batches} batches in {result.seconds:.1f} s: {result.tokens_per_second:,.0f} packed tokens/s "
            f"per process ({result.real_tokens_per_second:,.0f} non-padding)\n"
            f"  packing efficiency {100 * result.packing_efficiency:.2f}% non-padding, "
            f"{result.sequences_per_row:.1f} sequences per row, {100 * result.loss_token_fraction:.1f}% of tokens "
            f"carry loss")
