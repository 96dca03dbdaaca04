"""Interleaved timing of several no-argument steps, for benchmarks on a shared machine, and the
CPU model that every timing is reported with (machines of one size differ by CPU kind)."""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import jax


class StepTimes(NamedTuple):
    wall: list[float]
    cpu: list[float]  # process CPU seconds (all threads)


def time_interleaved(steps: dict[str, Callable[[], object]], warmup: int, repeats: int) -> dict[str, StepTimes]:
    """Wall and CPU seconds per call of each step, timed in interleaved rounds.

    Interleaving keeps the ratio between entries meaningful on a machine whose load changes while
    the benchmark runs (a shared CPU): every round times each entry once, back to back. A step's
    result is waited for with jax.block_until_ready (a no-op for host values), so asynchronous
    dispatch is inside the time. The first warm-up call of a jitted step compiles."""
    for name, step in steps.items():
        for i in range(warmup):
            print(f"[{name}] warm-up {i + 1}/{warmup}", file=sys.stderr, flush=True)
            jax.block_until_ready(step())
    times = {name: StepTimes([], []) for name in steps}
    for r in range(repeats):
        for name, step in steps.items():
            wall, cpu = time.perf_counter(), time.process_time()
            jax.block_until_ready(step())
            times[name].wall.append(time.perf_counter() - wall)
            times[name].cpu.append(time.process_time() - cpu)
        report = ", ".join(f"{name} {t.wall[-1]:.3f} s" for name, t in times.items())
        print(f"round {r + 1}/{repeats}: {report}", file=sys.stderr, flush=True)
    return times


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux; the platform's processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
