"""MoE layer vs a dense SwiGLU FFN of equal active parameters: forward+backward tokens/s.

The dense baseline has width (top_k + shared) x ffn, so it does the same matmul FLOPs per token as
the MoE layer's routed and shared experts: the ratio shows what routing, dispatch and combine cost.
Each step is one jitted gradient w.r.t. all parameters and the input; the figure is the median of
`repeats` timed steps after `warmup` untimed ones (the first of which compiles). Wall-clock time is
the headline; the process CPU time of each step is reported too, because on a shared machine it
varies much less than wall-clock time with the load of other processes.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from most_jax.bench import BenchArgumentError
from most_jax.bench.timing import time_interleaved
from most_jax.config import ModelConfig, MoEConfig
from most_jax.nn.mlp import SwiGLU
from most_jax.nn.moe import MoE
from most_jax.nn.moe.dispatch import DISPATCH


@dataclasses.dataclass(frozen=True)
class MoEBenchShape:
    tokens: int = 4096
    dim: int = 1024
    experts: int = 16
    ffn: int = 704
    top_k: int = 2
    shared: int = 0
    seq_len: int = 1024
    capacity_factor: float = 1.25
    dtype: str = "float32"

    def model_config(self, dispatch: str) -> ModelConfig:
        """Validated config of one MoE layer (no modality groups: every token may use every expert)."""
        if self.seq_len <= 0 or self.tokens % self.seq_len:
            raise BenchArgumentError(f"--tokens {self.tokens} must be a positive multiple of --seq-len {self.seq_len}")
        moe = MoEConfig(num_experts=self.experts, top_k=self.top_k, expert_ffn_dim=self.ffn,
                        num_shared_experts=self.shared, dispatch=dispatch, capacity_factor=self.capacity_factor)
        cfg = ModelConfig(hidden_size=self.dim, moe=moe, dtype=self.dtype, param_dtype="float32")
        cfg.validate("bench")
        return cfg

    @property
    def dense_ffn(self) -> int:
        return (self.top_k + self.shared) * self.ffn


def _grad_step(module: nnx.Module, apply: Callable, x_BTD: jax.Array) -> Callable[[], object]:
    """A no-argument callable running one jitted gradient of <apply(module, x), cotangent> + losses."""
    graphdef, params = nnx.split(module)
    cot_BTD = jax.random.normal(jax.random.PRNGKey(2), x_BTD.shape, jnp.float32)

    @jax.jit
    def grads(params, x_BTD):
        def loss(params, x_BTD):
            y_BTD, extra = apply(nnx.merge(graphdef, params), x_BTD)
            return jnp.sum(y_BTD.astype(jnp.float32) * cot_BTD) + extra

        return jax.grad(loss, argnums=(0, 1))(params, x_BTD)

    return lambda: grads(params, x_BTD)


def run(shape: MoEBenchShape, paths: tuple[str, ...], warmup: int = 1, repeats: int = 3) -> dict:
    unknown = [p for p in paths if p not in DISPATCH]
    if unknown or not paths:
        raise BenchArgumentError(f"--paths: unknown dispatch {unknown or paths}; choose from {', '.join(DISPATCH)}")
    if warmup < 1 or repeats < 1:
        raise BenchArgumentError("--warmup and --repeats must be at least 1 (the first warm-up compiles)")
    cfg = shape.model_config(paths[0])
    b, t = shape.tokens // shape.seq_len, shape.seq_len
    x_BTD = jax.random.normal(jax.random.PRNGKey(1), (b, t, shape.dim), jnp.float32).astype(cfg.dtype)
    valid_BT = jnp.ones((b, t), bool)

    dense = SwiGLU(shape.dim, shape.dense_ffn, rngs=nnx.Rngs(0), std=cfg.init_std, param_dtype="float32",
                   dtype=cfg.dtype)
    # The baseline gets 2-D [N, D] rows like the experts inside the MoE layer: XLA:CPU runs the
    # weight-gradient dot of a 3-D input about 25% slower, which would flatter the MoE.
    steps = {"dense": _grad_step(dense, lambda m, x: (m(x.reshape(-1, shape.dim)).reshape(x.shape), 0.0), x_BTD)}
    dropped = {}
    for path in paths:
        moe = _moe_layer(shape.model_config(path))
        steps[path] = _grad_step(moe, lambda m, x: _moe_apply(m, x, valid_BT), x_BTD)
        _, stats = nnx.jit(lambda m, x: m(x, valid_BT))(moe, x_BTD)
        dropped[path] = float(jnp.sum(stats.dropped_G)) / (shape.tokens * shape.top_k)
    times = time_interleaved(steps, warmup, repeats)
    wall = {name: statistics.median(t.wall) for name, t in times.items()}
    cpu = {name: statistics.median(t.cpu) for name, t in times.items()}
    tokens_per_s = {path: shape.tokens / wall[path] for path in paths}
    best = max(tokens_per_s, key=tokens_per_s.get)
    return {
        "shape": dataclasses.asdict(shape),
        "device": f"{jax.default_backend()} x{jax.device_count()} ({jax.devices()[0].device_kind})",
        "warmup": warmup,
        "repeats": repeats,
        "dense_ffn": shape.dense_ffn,
        "dense_tokens_per_s": shape.tokens / wall["dense"],
        "paths": tokens_per_s,
        "best_path": best,
        "ratio": wall["dense"] / wall[best],
        "cpu_ratio": cpu["dense"] / cpu[best],
        "dropped_fraction": dropped,
        "wall_seconds": {name: t.wall for name, t in times.items()},
        "cpu_seconds": {name: t.cpu for name, t in times.items()},
    }


def _moe_layer(cfg: ModelConfig) -> MoE:
    return MoE(cfg.hidden_size, cfg.moe, init_std=cfg.init_std, param_dtype=cfg.param_dtype, dtype=cfg.dtype,
               rngs=nnx.Rngs(0))


def _moe_apply(moe: MoE, x_BTD, valid_BT):
    y_BTD, stats = moe(x_BTD, valid_BT)
    return y_BTD, stats.aux_loss + stats.z_loss


def format_report(result: dict) -> str:
    s = result["shape"]
    lines = [
        f"MoE fwd+bwd: {s['tokens']} tokens, D={s['dim']}, {s['experts']} experts of F={s['ffn']}, top-{s['top_k']}, "
        f"{s['shared']} shared, {s['dtype']}, capacity factor {s['capacity_factor']}; {result['device']}; "
        f"median of {result['repeats']}",
        f"  {'dense F=' + str(result['dense_ffn']):<20} {result['dense_tokens_per_s']:>10.0f} tokens/s",
    ]
    for path, tps in result["paths"].items():
        lines.append(f"  {'moe ' + path:<20} {tps:>10.0f} tokens/s  ({tps / result['dense_tokens_per_s']:.2f}x dense, "
                     f"{100 * result['dropped_fraction'][path]:.1f}% assignments dropped)")
    lines.append(f"  best: {result['best_path']}, MoE/dense ratio {result['ratio']:.2f} "
                 f"(by process CPU time: {result['cpu_ratio']:.2f})")
    return "\n".join(lines)
