"""U2++ real-time factor: encoder + CTC greedy at batch 1, dense vs MoE vs dense of equal parameters.

RTF = decode seconds / audio seconds, WeNet's definition: features are not computed (random
fbank-shaped input of the frames `audio_seconds` of 16 kHz audio gives), one utterance, after
warm-up (every jitted shape compiled). Two decodes per model:

- streaming: `decode.transcribe_streaming` in ctc_greedy mode, exactly what `most u2pp transcribe
  --chunk N` runs: the encoder chunk by chunk with its attention and conv caches (all history), the
  CTC head after every chunk, each chunk's output brought to the host;
- full: `decode.decode` in ctc_greedy mode, full-context attention over the whole utterance.

Three models of one encoder shape: `dense` (FFN width `ffn`), `moe` (every FFN an MoE of
`experts` experts of width `ffn`, top `top_k`, WeNet's MoEFFNLayer) and `dense_wide` (dense with
the FFN width that gives the MoE's parameter count). The models are timed in interleaved rounds
(A B C A B C ...) and the medians reported, so ratios survive a shared machine's changing load.
Weights are random (the router's near-balanced); decode time does not depend on their values
except through the MoE's routing.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Callable, NamedTuple

import jax
import numpy as np
from flax import nnx

from most_jax.bench import BenchArgumentError
from most_jax.bench.timing import time_interleaved
from most_jax.config import U2ppConfig, U2ppDecoderConfig, U2ppEncoderConfig
from most_jax.speech.features import FrameOptions, num_frames

MODELS = ("dense", "moe", "dense_wide")
MODES = ("streaming", "full")


@dataclasses.dataclass(frozen=True)
class U2ppBenchShape:
    dim: int = 256
    blocks: int = 12
    ffn: int = 2048
    experts: int = 8
    top_k: int = 2
    audio_seconds: float = 10.0
    chunk: int = 16
    vocab: int = 5000
    dispatch: str = "auto"

    @property
    def heads(self) -> int:
        """WeNet's recipes keep 64 channels per head (4 heads at d=256)."""
        return max(self.dim // 64, 1)

    @property
    def frames(self) -> int:
        """fbank frames of audio_seconds of 16 kHz audio (25 ms windows every 10 ms)."""
        return num_frames(int(round(self.audio_seconds * 16000)), FrameOptions())

    def validate(self) -> None:
        for name in ("dim", "blocks", "ffn", "experts", "top_k", "chunk", "vocab"):
            if getattr(self, name) <= 0:
                raise BenchArgumentError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.dim % 64:
            raise BenchArgumentError(f"--dim {self.dim} must be a multiple of 64 (64 channels per attention head)")
        if self.top_k > self.experts:
            raise BenchArgumentError(f"--top-k {self.top_k} exceeds --experts {self.experts}")
        if self.audio_seconds <= 0:
            raise BenchArgumentError(f"--audio-seconds must be positive, got {self.audio_seconds}")

    def configs(self) -> dict[str, U2ppConfig]:
        """The three models' configs (validated). The attention decoder, unused here, is one small
        dense layer."""
        self.validate()
        base = U2ppEncoderConfig()
        moe = dataclasses.replace(base.moe, num_experts=self.experts, top_k=self.top_k, expert_ffn_dim=self.ffn,
                                  dispatch=self.dispatch)
        enc = dataclasses.replace(base, output_size=self.dim, attention_heads=self.heads, linear_units=self.ffn,
                                  num_blocks=self.blocks, moe=moe, mlp_type="position_wise_feed_forward")
        dec = U2ppDecoderConfig(attention_heads=self.heads, linear_units=self.dim, num_blocks=1, r_num_blocks=0,
                                mlp_type="position_wise_feed_forward")
        dense = U2ppConfig(vocab_size=self.vocab, encoder=enc, decoder=dec, reverse_weight=0.0)
        cfgs = {
            "dense": dense,
            "moe": dataclasses.replace(dense, encoder=dataclasses.replace(enc, mlp_type="moe")),
            "dense_wide": dataclasses.replace(dense, encoder=dataclasses.replace(
                enc, linear_units=equal_params_ffn(self.dim, self.ffn, self.experts, moe.expert_bias))),
        }
        for cfg in cfgs.values():
            cfg.validate()
        return cfgs


def equal_params_ffn(dim: int, ffn: int, experts: int, bias: bool) -> int:
    """The dense FFN width F' whose parameters (2 D F' + biases F' + D) are nearest an MoE layer's
    (E experts of width F with the same biases, plus the bias-free [D, E] router)."""
    moe = experts * (2 * dim * ffn + bias * (ffn + dim)) + dim * experts
    return max(1, round((moe - bias * dim) / (2 * dim + bias)))


class BenchModel(NamedTuple):
    """One model under test: its parameter count and a no-argument call per decode mode."""

    params: int
    streaming: Callable[[], object]
    full: Callable[[], object]


def encoder_ctc_params(model) -> int:
    """Trainable parameters of the timed part (encoder and CTC head; the CMVN statistics are not
    parameters in WeNet either). Works on an abstract model (nnx.eval_shape) too."""
    total = 0
    for part in (model.encoder, model.ctc):
        for path, leaf in nnx.to_flat_state(nnx.state(part, nnx.Param)):
            if "global_cmvn" not in (str(p) for p in path):
                total += int(np.prod(leaf.shape))
    return total


def feats(shape: U2ppBenchShape, input_dim: int = 80) -> np.ndarray:
    """[U, I] float32 standing in for CMVN-normalised fbank (the CMVN is the identity here)."""
    return np.random.default_rng(0).standard_normal((shape.frames, input_dim)).astype(np.float32)


def jax_models(shape: U2ppBenchShape) -> dict[str, BenchModel]:
    from most_jax.models.u2pp import decode
    from most_jax.models.u2pp.model import U2pp

    x_UI = feats(shape)
    lengths_B = np.array([x_UI.shape[0]], np.int32)
    streaming = decode.DecodeOptions(mode="ctc_greedy", chunk=shape.chunk)
    full = decode.DecodeOptions(mode="ctc_greedy")
    out = {}
    for name, cfg in shape.configs().items():
        model = U2pp(cfg, rngs=nnx.Rngs(0))
        out[name] = BenchModel(
            encoder_ctc_params(model),
            lambda model=model: decode.transcribe_streaming(model, x_UI, streaming),
            lambda model=model: decode.decode(model, x_UI[None], lengths_B, full))
    return out


def measure(groups: dict[str, dict[str, BenchModel]], shape: U2ppBenchShape, warmup: int,
            repeats: int) -> dict:
    """Times every group's models (a group: one implementation's MODELS) in interleaved rounds.

    Returns the common fields and, per group, `models` (name -> params, RTFs from the median wall
    time, and from the median process CPU time) and `moe_over_dense` (the RTF ratios)."""
    if warmup < 1 or repeats < 1:
        raise BenchArgumentError("--warmup and --repeats must be at least 1 (the first warm-up compiles)")
    steps = {f"{group}/{name} {mode}": getattr(m, mode)
             for mode in MODES for group, models in groups.items() for name, m in models.items()}
    times = time_interleaved(steps, warmup, repeats)
    out = {
        "shape": {**dataclasses.asdict(shape), "heads": shape.heads, "frames": shape.frames,
                  "dense_wide_ffn": shape.configs()["dense_wide"].encoder.linear_units},
        "warmup": warmup,
        "repeats": repeats,
        "wall_seconds": {name: t.wall for name, t in times.items()},
    }
    for group, models in groups.items():
        rows = {}
        for name, m in models.items():
            rows[name] = {"params": m.params}
            for mode in MODES:
                t = times[f"{group}/{name} {mode}"]
                rows[name][f"rtf_{mode}"] = statistics.median(t.wall) / shape.audio_seconds
                rows[name][f"cpu_rtf_{mode}"] = statistics.median(t.cpu) / shape.audio_seconds
        out[group] = {"models": rows, **{f"moe_over_{base}": {
            mode: rows["moe"][f"rtf_{mode}"] / rows[base][f"rtf_{mode}"] for mode in MODES}
            for base in ("dense", "dense_wide")}}
    return out


def run(shape: U2ppBenchShape, warmup: int = 2, repeats: int = 5) -> dict:
    """`most bench u2pp`: the JAX models' figures (one group, flattened into the top level)."""
    result = measure({"jax": jax_models(shape)}, shape, warmup, repeats)
    return {**result.pop("jax"), **result,
            "device": f"{jax.default_backend()} ({jax.devices()[0].device_kind})"}


def format_report(result: dict) -> str:
    s = result["shape"]
    lines = [
        f"U2++ encoder + CTC greedy, batch 1, {s['audio_seconds']} s of audio ({s['frames']} frames): d={s['dim']}, "
        f"{s['blocks']} blocks, {s['heads']} heads, FFN {s['ffn']}, MoE {s['experts']} experts top-{s['top_k']}, "
        f"dense_wide FFN {s['dense_wide_ffn']}; streaming chunk {s['chunk']}; {result.get('device', '')}; median of "
        f"{result['repeats']} interleaved rounds",
        f"  {'model':<20} {'params':>12} {'RTF streaming':>14} {'RTF full':>10}",
    ]
    for name, row in result["models"].items():
        lines.append(f"  {name:<20} {row['params']:>12,} {row['rtf_streaming']:>14.4f} {row['rtf_full']:>10.4f}")
    for base in ("dense", "dense_wide"):
        r = result[f"moe_over_{base}"]
        lines.append(f"  RTF moe / {base}: streaming {r['streaming']:.2f}x, full {r['full']:.2f}x")
    return "\n".join(lines)
