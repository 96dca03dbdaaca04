"""AdamW (or torch-style Adam) with warmup + decay, global-norm clipping and a weight-decay mask, built from
TrainConfig; one per phase for a family that updates its parameters in phases (models/family.py)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from most_jax.config import TrainConfig

# Parameter leaf names that are never decayed: RMSNorm scales pull towards 1, not 0, and biases
# only shift activations; decaying either just fights the data.
_NO_DECAY_LEAVES = frozenset({"scale", "bias"})
_EMBEDDING_LEAVES = frozenset({"embedding"})


def learning_rate_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Linear warmup lr/warmup_steps, 2 lr/warmup_steps, ..., lr over the first `warmup_steps`
    updates (starting at 0 would waste the first update), then cosine/linear decay to
    lr x min_lr_ratio at `steps` (or a constant lr); or WeNet's WarmupLR (`warmuplr_schedule`)."""
    if cfg.schedule == "warmuplr":
        return warmuplr_schedule(cfg.lr, cfg.warmup_steps)
    warmup = optax.linear_schedule(cfg.lr / max(cfg.warmup_steps, 1), cfg.lr, max(cfg.warmup_steps - 1, 0))
    decay_steps = max(cfg.steps - cfg.warmup_steps, 1)
    end = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.min_lr_ratio)
    elif cfg.schedule == "linear":
        decay = optax.linear_schedule(cfg.lr, end, decay_steps)
    else:
        decay = optax.constant_schedule(cfg.lr)
    if cfg.warmup_steps == 0:
        return decay
    return optax.join_schedules([warmup, decay], [cfg.warmup_steps])


def warmuplr_schedule(lr: float, warmup_steps: int) -> optax.Schedule:
    """WeNet's WarmupLR: update n (1 for the first; optax counts from 0) uses
    lr x warmup^0.5 x min(n^-0.5, n x warmup^-1.5): rising linearly to lr at n = warmup, then
    decaying as n^-0.5, with no horizon."""

    def schedule(count):
        n = jnp.asarray(count, jnp.float32) + 1
        return lr * warmup_steps ** 0.5 * jnp.minimum(n ** -0.5, n * warmup_steps ** -1.5)

    return schedule


def weight_decay_mask(params: Any, *, decay_embeddings: bool) -> Any:
    """Same tree as `params` with True where weight decay applies (matrices), False on norm
    scales, biases and (unless `decay_embeddings`) the token embedding table."""

    def decays(path, _leaf) -> bool:
        name = _leaf_name(path)
        if name in _NO_DECAY_LEAVES:
            return False
        return decay_embeddings or name not in _EMBEDDING_LEAVES

    return jax.tree_util.tree_map_with_path(decays, params)


def _leaf_name(path) -> str:
    last = path[-1]
    for attr in ("key", "name", "idx"):
        if hasattr(last, attr):
            return str(getattr(last, attr))
    return str(last)


def make_optimizer(cfg: TrainConfig, params: Any, frozen: Any | None = None) -> optax.GradientTransformation:
    """Clip by global norm (if clip_norm > 0), then AdamW (or Adam, `cfg.optimizer`) with the
    schedule and decay mask.

    `params` (arrays or shape structs) only fixes the decay mask's tree. `frozen` (same tree, True
    on leaves the model family freezes; models/family.frozen_mask) zeroes those gradients before
    anything else, so frozen leaves neither move nor decay nor count in the clipping norm; without
    it the optimizer state has exactly the unfrozen layout."""
    mask = weight_decay_mask(params, decay_embeddings=cfg.decay_embeddings)
    if frozen is not None:
        mask = jax.tree.map(lambda decays, is_frozen: decays and not is_frozen, mask, frozen)
    if cfg.optimizer == "adam":  # torch.optim.Adam: the L2 term joins the gradient before the moments
        adamw = optax.chain(optax.add_decayed_weights(cfg.weight_decay, mask),
                            optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
                            optax.scale_by_learning_rate(learning_rate_schedule(cfg)))
    else:
        adamw = optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                            weight_decay=cfg.weight_decay, mask=mask)
    parts = [] if frozen is None else [optax.masked(optax.set_to_zero(), frozen)]
    if cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    if not parts:
        return adamw
    return optax.chain(*parts, adamw)


class PhasedOptimizer(NamedTuple):
    """One optimizer per top-level parameter subtree of a phased family (Family.phases): each has
    its own moments, clipping norm and update count; the step applies them one after another."""

    parts: dict[str, optax.GradientTransformation]

    def init(self, params: Any) -> dict[str, Any]:
        return {name: part.init(params[name]) for name, part in self.parts.items()}


def make_family_optimizer(cfg: TrainConfig, params: Any, frozen: Any | None,
                          phases: tuple[str, ...]) -> optax.GradientTransformation | PhasedOptimizer:
    """`make_optimizer` for the whole tree, or with `phases` one per named subtree of `params`."""
    if not phases:
        return make_optimizer(cfg, params, frozen)
    missing = [name for name in phases if name not in params]
    if missing or set(params) != set(phases):
        raise ValueError(f"phases {list(phases)} must name exactly the top-level parameter subtrees {sorted(params)}")
    return PhasedOptimizer({name: make_optimizer(cfg, params[name], None if frozen is None else frozen[name])
                            for name in phases})
