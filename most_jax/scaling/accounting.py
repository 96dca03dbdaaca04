"""The accounting of a whole Config, whatever its model family: the Budget of its step batch's
shape (flops.py for MoST, u2pp_flops.py for U2++) and the units (tokens or frames) of one step."""

from __future__ import annotations

from most_jax.config import Config, ConfigError
from most_jax.scaling.flops import Budget, most_budget

COUNTED_FAMILIES = ("most", "u2pp")


def config_budget(cfg: Config, seq_len: int | None = None, frames: int | None = None) -> tuple[Budget, int]:
    """(budget, units per step). MoST: rows of `seq_len` tokens (default data.seq_len). U2++:
    utterances of `frames` input frames (default the longest length bucket) and `seq_len` target
    tokens (default data.seq_len)."""
    family = cfg.model.family
    if family not in COUNTED_FAMILIES:
        raise ConfigError(f"model.family: FLOPs are counted for {' and '.join(COUNTED_FAMILIES)} configs, "
                          f"got {family!r}")
    seq_len = cfg.data.seq_len if seq_len is None else seq_len
    if seq_len <= 0:
        raise ConfigError(f"--seq-len: must be positive, got {seq_len}")
    if family == "most":
        if frames is not None:
            raise ConfigError("--frames: applies to U2++ configs (a MoST row is data.seq_len tokens)")
        return most_budget(cfg.model, seq_len), cfg.data.batch_size * seq_len
    from most_jax.data.buckets import bucket_frames
    from most_jax.scaling.u2pp_flops import u2pp_budget

    frames = bucket_frames(cfg.data)[-1] if frames is None else frames
    try:
        budget = u2pp_budget(cfg.model, frames, seq_len)
    except ValueError as e:
        raise ConfigError(f"--frames: {e}") from None
    return budget, cfg.data.batch_size * frames


def train_flops_per_step(cfg: Config) -> float:
    """Analytic FLOPs of one training step (forward + backward) at the step batch's shape (U2++:
    the longest length bucket, the batch the AOT compile builds)."""
    budget, units = config_budget(cfg)
    return units * budget.train_flops_per_token
