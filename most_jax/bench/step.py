"""Train-step time of one config under several sets of overrides, on batches of its own pipeline.

Each variant is the config with its overrides applied: the same state initialisation and jitted
step that `most train` builds (one device), fed batches that the family's training pipeline
(`Family.batches`, over `data.records`) produced. The variants are timed in interleaved rounds
(bench/timing.py), so their ratios hold on a shared machine. Real tokens are what the family's
`count_tokens` counts (for MoST the non-padding ones), so a variant that packs rows differently
(another data.seq_len) is compared by real tokens per second, not by steps.
"""

from __future__ import annotations

import collections
import gzip
import itertools
import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from most_jax.bench import BenchArgumentError
from most_jax.bench.timing import cpu_model, time_interleaved
from most_jax.config import Config, load_config


@dataclass(frozen=True)
class StepVariant:
    name: str
    overrides: tuple[str, ...] = ()


def parse_variant(text: str) -> StepVariant:
    """'NAME' or 'NAME:key=value,key=value' (values without commas)."""
    name, _, rest = text.partition(":")
    if not name.strip():
        raise BenchArgumentError(f"--variant {text!r}: give NAME or NAME:key=value,...")
    overrides = tuple(o.strip() for o in rest.split(",") if o.strip())
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise BenchArgumentError(f"--variant {text!r}: {bad} are not key=value")
    return StepVariant(name.strip(), overrides)


class _Stepper:
    """One variant: its compiled step, its state and the batches it cycles through."""

    def __init__(self, cfg: Config, batches: int):
        from most_jax.models.family import frozen_mask, get_family
        from most_jax.train.optimizer import learning_rate_schedule, make_family_optimizer
        from most_jax.train.state import (abstract_state, init_state, model_graphdef, single_device_mesh,
                                          state_shardings)
        from most_jax.train.step import batch_sharding_for, make_train_step, put_batch

        family = get_family(cfg.model)
        if family.batches is None:
            raise BenchArgumentError(f"model.family {family.name!r} has no training data pipeline to draw batches from")
        graphdef, params_shape = model_graphdef(cfg.model)
        optimizer = make_family_optimizer(cfg.train, params_shape, frozen_mask(cfg.model, params_shape), family.phases)
        mesh = single_device_mesh()
        shardings = state_shardings(abstract_state(params_shape, optimizer, cfg.train.seed), mesh)
        self.state = init_state(cfg.model, optimizer, cfg.train.seed, shardings)
        sharding = batch_sharding_for(mesh)
        self.batches = [put_batch(b, sharding) for b in itertools.islice(iter(family.batches(cfg)), batches)]
        # Compiled once, as the training loop does; the profile reads the same executable's HLO.
        self.step = make_train_step(graphdef, cfg, optimizer, learning_rate_schedule(cfg.train),
                                    state_shardings=shardings, batch_sharding=sharding
                                    ).lower(self.state, self.batches[0]).compile()
        self.rows_x_len = int(np.prod(next(iter(self.batches[0].values())).shape[:2]))
        self.real_tokens: list[float] = []
        self._next = itertools.cycle(self.batches)

    def __call__(self):
        self.state, metrics = self.step(self.state, next(self._next))
        self.real_tokens.append(float(metrics["tokens"]))
        return metrics


def run(config: str | None, variants: list[StepVariant], *, base_overrides: tuple[str, ...] = (),
        warmup: int = 2, repeats: int = 10, batches: int = 4, profile_dir: str | Path | None = None) -> dict:
    """Median wall seconds per step and real tokens per second of each variant, with ratios to the first."""
    if not variants:
        variants = [StepVariant("config")]
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise BenchArgumentError(f"variant names must differ, got {names}")
    if repeats < 1 or warmup < 1 or batches < 1:
        raise BenchArgumentError("--repeats, --warmup and --batches must be >= 1")
    steppers = {v.name: _Stepper(load_config(config, [*base_overrides, *v.overrides]), batches) for v in variants}
    times = time_interleaved(steppers, warmup=warmup, repeats=repeats)
    rows = {}
    for v in variants:
        s = steppers[v.name]
        seconds = statistics.median(times[v.name].wall)
        real = statistics.mean(s.real_tokens[warmup:])
        rows[v.name] = {"overrides": list(v.overrides), "seconds_per_step": round(seconds, 4),
                        "tokens_per_step": s.rows_x_len, "real_tokens_per_step": round(real, 1),
                        "real_fraction": round(real / s.rows_x_len, 4),
                        "real_tokens_per_s": round(real / seconds, 1),
                        "cpu_seconds_per_step": round(statistics.median(times[v.name].cpu), 4)}
    first = rows[names[0]]["real_tokens_per_s"]
    for row in rows.values():
        row["speed_vs_first"] = round(row["real_tokens_per_s"] / first, 3)
    result = {"config": config, "base_overrides": list(base_overrides), "repeats": repeats, "variants": rows,
              "machine": {"cpu_model": cpu_model(), "devices": str(jax.devices()[0])}}
    if profile_dir is not None:
        result["profile_dir"] = str(profile_dir)
        result["profile"] = profile_ops(steppers[names[0]], profile_dir)
    return result


def profile_ops(stepper: _Stepper, out_dir: str | Path, steps: int = 3, top: int = 20) -> list[dict]:
    """The XLA:CPU ops that take the most time in `steps` calls of one variant's step: a jax.profiler
    trace (kept in out_dir, for TensorBoard or Perfetto), its op events summed per op name, each
    op with its output shape and the JAX operation it came from (the compiled HLO's op_name)."""
    out_dir = Path(out_dir)
    hlo = stepper.step.as_text()
    jax.block_until_ready(stepper())  # warm before the trace starts
    with jax.profiler.trace(str(out_dir), create_perfetto_trace=True):
        for _ in range(steps):
            jax.block_until_ready(stepper())
    traces = sorted(out_dir.glob("**/*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not traces:
        raise RuntimeError(f"jax.profiler wrote no trace under {out_dir}")
    events = json.load(gzip.open(traces[-1]))["traceEvents"]
    instructions = set(re.findall(r"^\s*%?([\w.\-]+) = ", hlo, re.M))
    totals: collections.Counter = collections.Counter()
    for e in events:
        # complete events of the compiled step's instructions only (no runtime or Python frames)
        if e.get("ph") == "X" and e["name"] in instructions:
            totals[e["name"]] += e["dur"]
    rows = []
    for name, micros in totals.most_common(top):
        line = re.search(r"^\s*%?" + re.escape(name) + r" = (\S+)(.*)$", hlo, re.M)
        origin = re.search(r'op_name="([^"]*)"', line.group(2)) if line else None
        rows.append({"op": name, "ms_per_step": round(micros / 1e3 / steps, 2),
                     "shape": line.group(1).split("{")[0] if line else "", "from": origin.group(1) if origin else ""})
    total = sum(totals.values()) / 1e3 / steps
    return [{"op": "(all ops)", "ms_per_step": round(total, 1), "shape": "", "from": ""}, *rows]


def format_report(result: dict) -> str:
    lines = []
    if result.get("profile"):
        lines.append(f"most expensive XLA ops of {next(iter(result['variants']))} (ms per step; trace in "
                     f"{result['profile_dir']}):")
        lines += [f"  {r['ms_per_step']:8.2f}  {r['op']:<30} {r['shape']:<22} {r['from'][-70:]}" for r in result["profile"]]
    lines += [f"train step of {result['config']} ({result['repeats']} interleaved rounds, medians)",
             f"  {'variant':<14} {'s/step':>8} {'tokens':>7} {'real':>7} {'real tok/s':>11} {'vs first':>9}"]
    for name, r in result["variants"].items():
        lines.append(f"  {name:<14} {r['seconds_per_step']:>8.3f} {r['tokens_per_step']:>7} "
                     f"{100 * r['real_fraction']:>6.1f}% {r['real_tokens_per_s']:>11,.0f} {r['speed_vs_first']:>8.2f}x")
    return "\n".join(lines)
