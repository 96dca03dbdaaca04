"""Model-size ladders for scaling studies, expanded from one compact spec (configs/scaling/*.yaml).

A spec names a base config (data, training, vocabulary: every run starts from it), a list of sizes
(width, depth, heads) and the variants each size is trained in:

- dense: every FFN a dense SwiGLU of ffn_ratio x hidden_size;
- moe: the first `experts.first_dense_layers` layers dense, the others MoE layers whose top_k routed
  plus shared experts add up to the dense width (expert_ffn_dim = dense_ffn_dim / (top_k + shared)),
  so a token uses the dense variant's parameters plus its router's (hidden_size x num_experts per
  layer, well under 1% of the active parameters at the shipped sizes);
- mamoe: the moe variant with its routed experts split in two modality groups (text, audio).

Each size gets a token budget of `tokens_per_param` x its dense variant's active parameters (a
Chinchilla-style multiple, 20 by default), the same for its three variants, rounded up to whole
steps of data.batch_size x data.seq_len tokens; train.steps, the warmup and the log cadence
(`evals_per_run` log windows, the results' per-eval losses) follow from it. When the base config
names held-out records (data.eval_records), each log window also scores `eval_batches` held-out
batches (train.eval_every), and those losses are the results' losses.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import yaml

from most_jax.config import (Config, ConfigError, config_from_dict, from_dict, merge_dicts, resolve_config_path,
                             shipped_configs_dir, to_dict)
from most_jax.scaling.flops import Budget, most_budget

VARIANTS = ("dense", "moe", "mamoe")


@dataclasses.dataclass(frozen=True)
class SizeSpec:
    name: str = ""
    hidden_size: int = 0
    num_layers: int = 0
    num_heads: int = 0
    lr: float | None = None  # None: the base config's train.lr


@dataclasses.dataclass(frozen=True)
class ExpertSpec:
    num_experts: int = 8
    top_k: int = 2
    num_shared_experts: int = 1
    first_dense_layers: int = 1


@dataclasses.dataclass(frozen=True)
class LadderSpec:
    config: str = "demo.yaml"  # base config, relative to the spec's directory or a shipped name
    tokens_per_param: float = 20.0
    variants: tuple[str, ...] = VARIANTS
    ffn_ratio: int = 3
    experts: ExpertSpec = ExpertSpec()
    warmup_fraction: float = 0.05
    evals_per_run: int = 10
    eval_batches: int = 8  # held-out batches per evaluation, when the base config has data.eval_records
    checkpoints_per_run: int = 4
    sizes: tuple[SizeSpec, ...] = ()


@dataclasses.dataclass(frozen=True)
class LadderRun:
    name: str  # <size>-<variant>
    size: str
    variant: str
    config: Config
    tokens: int  # planned training tokens: train.steps x data.batch_size x data.seq_len

    @property
    def budget(self) -> Budget:
        return most_budget(self.config.model, self.config.data.seq_len)


def read_spec(path: str | Path) -> tuple[LadderSpec, Path]:
    """The spec of a ladder file (a path, or one under the shipped configs/) and its file."""
    file = Path(path)
    if not file.is_file() and (shipped_configs_dir() / path).is_file():
        file = shipped_configs_dir() / path
    if not file.is_file():
        raise ConfigError(f"ladder {path}: no such file")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"ladder {file}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"ladder {file}: the top level must be a mapping")
    sizes = data.pop("sizes", None)
    if not isinstance(sizes, list) or not sizes:
        raise ConfigError(f"ladder {file}: sizes: expected a non-empty list of sizes")
    try:
        spec = from_dict(LadderSpec, data)
        spec = dataclasses.replace(spec, sizes=tuple(
            from_dict(SizeSpec, s, f"sizes[{i}].") if isinstance(s, dict) else _bad_size(i, s)
            for i, s in enumerate(sizes)))
        _validate(spec)
    except ConfigError as e:
        raise ConfigError(f"ladder {file}: {e}") from None
    return spec, file


def _bad_size(i: int, value: Any):
    raise ConfigError(f"sizes[{i}]: expected a mapping (name, hidden_size, num_layers, num_heads), got {value!r}")


def _validate(spec: LadderSpec) -> None:
    def check(ok: bool, field: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"{field}: {message}")

    check(spec.tokens_per_param > 0, "tokens_per_param", f"must be positive, got {spec.tokens_per_param}")
    check(bool(spec.variants) and all(v in VARIANTS for v in spec.variants), "variants",
          f"must be a non-empty list of {', '.join(VARIANTS)}, got {list(spec.variants)}")
    check(spec.ffn_ratio > 0, "ffn_ratio", "must be positive")
    check(0 <= spec.warmup_fraction < 1, "warmup_fraction", "must be in [0, 1)")
    check(spec.evals_per_run > 0 and spec.checkpoints_per_run > 0 and spec.eval_batches > 0, "evals_per_run",
          "evals_per_run, eval_batches and checkpoints_per_run must be positive")
    e = spec.experts
    check((e.top_k + e.num_shared_experts) > 0 and spec.ffn_ratio % (e.top_k + e.num_shared_experts) == 0,
          "experts", f"top_k + num_shared_experts = {e.top_k + e.num_shared_experts} must divide ffn_ratio "
          f"{spec.ffn_ratio} (the experts a token uses add up to the dense FFN)")
    check("mamoe" not in spec.variants or (e.num_experts % 2 == 0 and e.top_k <= e.num_experts // 2),
          "experts", "the mamoe variant needs an even num_experts with top_k <= num_experts / 2")
    names = set()
    for i, s in enumerate(spec.sizes):
        check(bool(s.name) and s.name not in names, f"sizes[{i}].name", f"must be a new non-empty name, got {s.name!r}")
        names.add(s.name)
        for field in ("hidden_size", "num_layers", "num_heads"):
            check(getattr(s, field) > 0, f"sizes[{i}].{field}", "must be positive")
        check(s.hidden_size % (4 * s.num_heads) == 0, f"sizes[{i}].num_heads",
              f"4 x num_heads must divide hidden_size {s.hidden_size} (head dim d/h, rope dim d/2h even)")
        check(s.num_layers > e.first_dense_layers or spec.variants == ("dense",), f"sizes[{i}].num_layers",
              f"must exceed experts.first_dense_layers={e.first_dense_layers} for the MoE variants")
        check(s.lr is None or s.lr > 0, f"sizes[{i}].lr", "must be positive")


def _model(size: SizeSpec, variant: str, spec: LadderSpec) -> dict[str, Any]:
    d, h = size.hidden_size, size.num_heads
    ffn = spec.ffn_ratio * d
    e = spec.experts
    model: dict[str, Any] = {
        "hidden_size": d, "num_layers": size.num_layers, "dense_ffn_dim": ffn,
        "attention": {"num_heads": h, "q_lora_rank": None, "kv_lora_rank": d // 2, "qk_nope_head_dim": d // h,
                      "qk_rope_head_dim": d // (2 * h), "v_head_dim": d // h}}
    if variant == "dense":
        model["first_k_dense_replace"] = size.num_layers
        return model
    half = e.num_experts // 2
    groups = [] if variant == "moe" else [
        {"name": "text", "modality": 0, "first_expert": 0, "num_experts": half},
        {"name": "audio", "modality": 1, "first_expert": half, "num_experts": half}]
    model["first_k_dense_replace"] = e.first_dense_layers
    model["moe"] = {"num_experts": e.num_experts, "top_k": e.top_k, "num_shared_experts": e.num_shared_experts,
                    "expert_ffn_dim": ffn // (e.top_k + e.num_shared_experts), "modality_groups": groups}
    return model


def expand(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
           base_edit=None) -> tuple[LadderSpec, list[LadderRun]]:
    """The runs of a ladder, sizes in order, each in the spec's variants. `overrides` (key=value,
    as `--set`) apply to the base config before the ladder's own settings; `base_edit(dict) -> dict`
    may change the base config too (the sweep sets the vocabulary of the records there)."""
    spec, file = read_spec(path)
    base_path = file.parent / spec.config
    base = _read_base(base_path if base_path.is_file() else resolve_config_path(spec.config), overrides)
    if base_edit is not None:
        base = base_edit(base)
    runs = []
    for size in spec.sizes:
        dense = _config(base, _model(size, "dense", spec), f"size {size.name}")
        tokens_per_step = dense.data.batch_size * dense.data.seq_len
        target = spec.tokens_per_param * most_budget(dense.model, dense.data.seq_len).params_active
        steps = max(1, math.ceil(target / tokens_per_step))
        every = max(1, steps // spec.evals_per_run)
        train = {"steps": steps, "warmup_steps": round(spec.warmup_fraction * steps), "log_every": every,
                 "checkpoint_every": max(1, steps // spec.checkpoints_per_run)}
        if base["data"].get("eval_records"):
            train |= {"eval_every": every, "eval_batches": spec.eval_batches}
        if size.lr is not None:
            train["lr"] = size.lr
        for variant in spec.variants:
            data = merge_dicts(base, {"train": train})
            runs.append(LadderRun(f"{size.name}-{variant}", size.name, variant,
                                  _config(data, _model(size, variant, spec), f"{size.name}-{variant}"),
                                  steps * tokens_per_step))
    return spec, runs


def _read_base(path: Path, overrides) -> dict[str, Any]:
    from most_jax.config import DEMO_SECTION, load_config

    cfg = load_config(path, overrides)  # validates the base with the caller's overrides
    if cfg.model.family != "most":
        raise ConfigError(f"ladder base config {path}: model.family must be most, got {cfg.model.family!r}")
    data = to_dict(cfg)
    data.pop(DEMO_SECTION, None)
    return data


def _config(base: dict, model: dict, what: str) -> Config:
    data = dict(base)
    data["model"] = merge_dicts(base.get("model", {}), model)
    try:
        return config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{what}: {e}") from None
