"""Configuration: frozen dataclasses, one default per field.

YAML files hold only overrides of these defaults; `--set a.b.c=value` overrides
come last. Every consistency rule lives in a `validate` method and names the
offending field, so a bad config fails at load, not deep inside a jit trace.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config value is missing, malformed or inconsistent."""


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    theta: float = 10000.0
    # "default" (plain RoPE) or "yarn" (DeepSeek-V2 YaRN scaling).
    type: str = "default"
    factor: float = 1.0
    original_max_position_embeddings: int = 4096
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 0.0

    def validate(self, prefix: str) -> None:
        _check(self.type in ("default", "yarn"), f"{prefix}.type", f"must be 'default' or 'yarn', got {self.type!r}")
        _check(self.theta > 0, f"{prefix}.theta", "must be positive")
        if self.type == "yarn":
            _check(self.factor >= 1.0, f"{prefix}.factor", "YaRN factor must be >= 1")
            _check(self.beta_fast > self.beta_slow, f"{prefix}.beta_fast", "must exceed beta_slow")


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    """Multi-head latent attention (DeepSeek-V2 MLA)."""

    num_heads: int = 16
    q_lora_rank: int | None = None  # None: a plain q_proj
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128

    def validate(self, prefix: str) -> None:
        for name in ("num_heads", "kv_lora_rank", "qk_nope_head_dim", "v_head_dim"):
            _check(getattr(self, name) > 0, f"{prefix}.{name}", "must be positive")
        _check(self.qk_rope_head_dim > 0 and self.qk_rope_head_dim % 2 == 0, f"{prefix}.qk_rope_head_dim",
               f"must be a positive even number (rope rotates pairs), got {self.qk_rope_head_dim}")
        if self.q_lora_rank is not None:
            _check(self.q_lora_rank > 0, f"{prefix}.q_lora_rank", "must be positive or null")


@dataclasses.dataclass(frozen=True)
class ModalityGroup:
    """Routed experts [first_expert, first_expert + num_experts) serve tokens of `modality`."""

    name: str = "text"
    modality: int = 0
    first_expert: int = 0
    num_experts: int = 1


NORM_TOPK_READINGS = ("divide_then_scale", "divide_or_scale", "scale_only")


@dataclasses.dataclass(frozen=True)
class MoEConfig:
    num_experts: int = 64
    top_k: int = 6
    expert_ffn_dim: int = 1408
    num_shared_experts: int = 2
    # "softmax" (DeepSeek-V2 / MoST) or "sigmoid".
    scoring: str = "softmax"
    # "greedy" or "group_limited_greedy" (keep the `topk_group` best of `n_group` groups).
    topk_method: str = "greedy"
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = False
    routed_scaling_factor: float = 1.0
    # How the top-k routing weights read norm_topk_prob (they agree when it is false):
    # "divide_then_scale" (MoST, SPEC section 1): w / sum(w) if norm_topk_prob, then * routed_scaling_factor;
    # "divide_or_scale" (DeepSeek-V2's remote code): w / sum(w) if norm_topk_prob, else * routed_scaling_factor;
    # "scale_only" (transformers' deepseek_v2, which ignores the flag): w * routed_scaling_factor.
    norm_topk_reading: str = "divide_then_scale"
    # Empty: every token may use every expert (plain DeepSeek-V2). Otherwise the MAMoE mask.
    modality_groups: tuple[ModalityGroup, ...] = ()
    # Sequence-level (seq_aux=True) or batch-level balance loss weight (DeepSeek `aux_loss_alpha`).
    aux_loss_alpha: float = 0.001
    seq_aux: bool = True
    z_loss_alpha: float = 0.0
    # "auto" picks "expert_parallel" under a mesh whose expert axis is > 1, else "capacity" on CPU and
    # "dropless" elsewhere; "blocked" is exact and fast for few tokens (batch-1 decoding on CPU);
    # "reference" is the slow per-expert loop.
    dispatch: str = "auto"
    capacity_factor: float = 1.25
    # Capacity dispatch under modality groups: True sizes each expert's capacity from its own group's
    # tokens in a blocked buffer (nothing drops at a factor >= 1; on the demo's step 26% slower on
    # CPU, BENCHMARKS.md); False splits capacity_factor x N x K rows evenly over all experts.
    group_capacity: bool = False
    # Expert parallelism (nn/moe/expert_parallel.py). ep_exchange: "auto" (fixed-capacity all-to-all
    # on CPU, ragged all-to-all on TPU/GPU), "capacity" or "ragged". ep_placement: "canonical"
    # (rank r holds experts r*E/EP..) or "balanced" (modality groups interleaved over the ranks).
    ep_exchange: str = "auto"
    ep_placement: str = "canonical"
    # Router mode: "mamoe" (scores over all experts, modality mask, top-k; SPEC section 1) or
    # "topk_softmax" (WeNet's MoEFFNLayer: top-k on the raw logits, softmax over the k chosen, no
    # auxiliary loss, no modality groups).
    router: str = "mamoe"
    # Expert function: "swiglu" (down(silu(gate x) * up x), no biases: DeepSeek-V2 / MoST) or "ffn"
    # (w_2(act(w_1 x + b_1)) + b_2: WeNet's PositionwiseFeedForward; biases iff expert_bias).
    expert: str = "swiglu"
    activation: str = "silu"  # the "ffn" expert's act: "silu" (WeNet's swish) or "relu"
    expert_bias: bool = True  # "ffn" experts only (WeNet's mlp_bias)

    def topk_weight_rule(self) -> tuple[bool, float]:
        """(divide by the sum of the k weights, then multiply by this factor): norm_topk_prob as read
        by `norm_topk_reading`."""
        divide = self.norm_topk_prob and self.norm_topk_reading != "scale_only"
        keep_scale = not (divide and self.norm_topk_reading == "divide_or_scale")
        return divide, self.routed_scaling_factor if keep_scale else 1.0

    def validate(self, prefix: str) -> None:
        _check(self.router in ("mamoe", "topk_softmax"), f"{prefix}.router",
               f"must be 'mamoe' or 'topk_softmax', got {self.router!r}")
        _check(self.expert in ("swiglu", "ffn"), f"{prefix}.expert", f"must be 'swiglu' or 'ffn', got {self.expert!r}")
        _check(self.activation in ("silu", "relu"), f"{prefix}.activation",
               f"must be 'silu' or 'relu', got {self.activation!r}")
        _check(self.expert == "ffn" or self.activation == "silu", f"{prefix}.activation",
               f"applies to 'ffn' experts; 'swiglu' experts gate with silu, got {self.activation!r}")
        if self.router == "topk_softmax":
            _check(not self.modality_groups, f"{prefix}.modality_groups", "router topk_softmax has no modality groups")
            _check(self.num_shared_experts == 0, f"{prefix}.num_shared_experts",
                   "router topk_softmax (WeNet) has no shared experts")
        _check(self.num_experts > 0, f"{prefix}.num_experts", "must be positive")
        _check(self.expert_ffn_dim > 0, f"{prefix}.expert_ffn_dim", "must be positive")
        _check(self.num_shared_experts >= 0, f"{prefix}.num_shared_experts", "must be >= 0")
        _check(0 < self.top_k <= self.num_experts, f"{prefix}.top_k",
               f"must be in 1..num_experts={self.num_experts}, got {self.top_k}")
        _check(self.scoring in ("softmax", "sigmoid"), f"{prefix}.scoring", f"unknown scoring {self.scoring!r}")
        _check(self.norm_topk_reading in NORM_TOPK_READINGS, f"{prefix}.norm_topk_reading",
               f"must be one of {', '.join(map(repr, NORM_TOPK_READINGS))}, got {self.norm_topk_reading!r}")
        _check(self.topk_method in ("greedy", "group_limited_greedy"), f"{prefix}.topk_method",
               f"unknown method {self.topk_method!r}")
        _check(self.dispatch in ("auto", "dropless", "capacity", "blocked", "reference", "expert_parallel"), f"{prefix}.dispatch",
               f"unknown dispatch {self.dispatch!r}")
        _check(self.ep_exchange in ("auto", "capacity", "ragged"), f"{prefix}.ep_exchange",
               f"must be 'auto', 'capacity' or 'ragged', got {self.ep_exchange!r}")
        _check(self.ep_placement in ("canonical", "balanced"), f"{prefix}.ep_placement",
               f"must be 'canonical' or 'balanced', got {self.ep_placement!r}")
        _check(self.capacity_factor > 0, f"{prefix}.capacity_factor", "must be positive")
        if self.topk_method == "group_limited_greedy":
            _check(self.n_group > 0 and self.num_experts % self.n_group == 0, f"{prefix}.n_group",
                   f"must divide num_experts={self.num_experts}, got {self.n_group}")
            _check(0 < self.topk_group <= self.n_group, f"{prefix}.topk_group",
                   f"must be in 1..n_group={self.n_group}, got {self.topk_group}")
            _check(self.top_k <= self.topk_group * (self.num_experts // self.n_group), f"{prefix}.top_k",
                   "exceeds the experts left by group-limited selection (topk_group x experts per group)")
        if not self.modality_groups:
            return
        owner = [None] * self.num_experts
        seen_modalities = set()
        for i, g in enumerate(self.modality_groups):
            gp = f"{prefix}.modality_groups[{i}]"
            _check(g.modality not in seen_modalities, f"{gp}.modality", f"modality {g.modality} has two groups")
            seen_modalities.add(g.modality)
            _check(g.modality >= 0, f"{gp}.modality", "must be >= 0 (negative ids mean 'no group')")
            _check(g.num_experts > 0, f"{gp}.num_experts", "must be positive")
            last = g.first_expert + g.num_experts
            _check(0 <= g.first_expert and last <= self.num_experts, f"{gp}",
                   f"experts {g.first_expert}..{last - 1} fall outside 0..{self.num_experts - 1}")
            for e in range(g.first_expert, last):
                _check(owner[e] is None, f"{gp}", f"expert {e} is also in group {owner[e]!r}")
                owner[e] = g.name
            _check(self.top_k <= g.num_experts, f"{prefix}.top_k",
                   f"top_k={self.top_k} exceeds the {g.num_experts} experts of group {g.name!r}")
            if self.topk_method == "group_limited_greedy":
                per = self.num_experts // self.n_group
                _check(g.first_expert % per == 0 and g.num_experts % per == 0, f"{gp}",
                       f"must align with the routing groups of {per} experts (n_group={self.n_group})")
                _check(self.top_k <= min(self.topk_group, g.num_experts // per) * per, f"{prefix}.top_k",
                       f"exceeds the experts group-limited selection leaves inside group {g.name!r}")
        missing = [e for e, o in enumerate(owner) if o is None]
        _check(not missing, f"{prefix}.modality_groups", f"experts {missing} belong to no modality group")


@dataclasses.dataclass(frozen=True)
class VocabConfig:
    """Where text ids, special tokens and audio units sit in the token id space.

    Defaults reproduce the original MoST layout (DeepSeek text ids, then 500 units).
    Token id -> modality: text ids and the text specials are modality 0; audio units and
    begin/end-of-audio are modality 1; anything else (waveform markers, unused rows) has no
    modality group (-1).
    """

    text_size: int = 100002  # text ids are 0..text_size-1 (bos/eos included)
    bos_id: int = 100000
    eos_id: int = 100001
    pad_id: int = 100001
    audio_unit_offset: int = 100002
    num_audio_units: int = 500
    begin_audio_id: int = 100502
    end_audio_id: int = 100503
    begin_wave_id: int = 100504
    end_wave_id: int = 100505

    def validate(self, prefix: str, vocab_size: int) -> None:
        # Ids at or above vocab_size are allowed: they name tokens this vocabulary lacks. The MoST
        # layout's fixed thresholds then apply to a vocabulary of any size, as in the original
        # (every id of a small vocabulary is text).
        for name in ("text_size", "bos_id", "eos_id", "pad_id", "audio_unit_offset", "num_audio_units",
                     "begin_audio_id", "end_audio_id", "begin_wave_id", "end_wave_id"):
            _check(getattr(self, name) >= 0, f"{prefix}.{name}", "must be >= 0")
        _check(self.text_size <= self.audio_unit_offset, f"{prefix}.audio_unit_offset",
               "audio units overlap the text ids")
        units = range(self.audio_unit_offset, self.audio_unit_offset + self.num_audio_units)
        for name in ("begin_audio_id", "end_audio_id", "begin_wave_id", "end_wave_id"):
            _check(getattr(self, name) not in units, f"{prefix}.{name}", "falls inside the audio unit ids")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The MoST decoder (DeepSeek-V2 with modality-aware routing)."""

    family: str = "most"  # which model family this section configures (models/family.py)
    vocab_size: int = 102400
    hidden_size: int = 2048
    num_layers: int = 27
    dense_ffn_dim: int = 10944
    first_k_dense_replace: int = 1
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 163840
    init_std: float = 0.02
    # Compute and parameter dtypes: "float32" or "bfloat16".
    dtype: str = "float32"
    param_dtype: str = "float32"
    # Rematerialisation of each scanned layer: "none", "full" or "dots" (save matmul outputs).
    remat: str = "none"
    scan_layers: bool = True
    # MoST-C: the width of continuous speech frames (HuBERT's hidden size, 768 for the original),
    # which a Linear(continuous_input_dim -> hidden_size, with bias) puts in place of the token
    # embeddings between the begin/end-of-waveform markers. 0: discrete speech units only.
    continuous_input_dim: int = 0
    attention: AttentionConfig = AttentionConfig()
    rope: RopeConfig = RopeConfig()
    moe: MoEConfig = MoEConfig()
    vocab: VocabConfig = VocabConfig()

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.first_k_dense_replace

    def validate(self, prefix: str = "model") -> None:
        _check(self.family == "most", f"{prefix}.family", f"a MoST section has family 'most', got {self.family!r}")
        for name in ("vocab_size", "hidden_size", "num_layers", "dense_ffn_dim"):
            _check(getattr(self, name) > 0, f"{prefix}.{name}", "must be positive")
        _check(0 <= self.first_k_dense_replace <= self.num_layers, f"{prefix}.first_k_dense_replace",
               f"must be in 0..num_layers={self.num_layers}")
        _check(self.dtype in ("float32", "bfloat16"), f"{prefix}.dtype", f"unknown dtype {self.dtype!r}")
        _check(self.param_dtype in ("float32", "bfloat16"), f"{prefix}.param_dtype",
               f"unknown dtype {self.param_dtype!r}")
        _check(self.remat in ("none", "full", "dots"), f"{prefix}.remat", f"unknown remat policy {self.remat!r}")
        _check(self.continuous_input_dim >= 0, f"{prefix}.continuous_input_dim", "must be >= 0 (0: none)")
        self.attention.validate(f"{prefix}.attention")
        self.rope.validate(f"{prefix}.rope")
        self.moe.validate(f"{prefix}.moe")
        self.vocab.validate(f"{prefix}.vocab", self.vocab_size)


@dataclasses.dataclass(frozen=True)
class MixtureConfig:
    """Sampling weights of the training tasks (0 switches a task off). Defaults: MoST stage 1."""

    asr: float = 0.4
    tts: float = 0.4
    text_lm: float = 0.2
    unit_lm: float = 0.0
    spoken_qa_text: float = 0.0
    spoken_qa_speech: float = 0.0
    instruct: float = 0.0

    def validate(self, prefix: str) -> None:
        weights = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, weight in weights.items():
            _check(weight >= 0, f"{prefix}.{name}", f"weight must be >= 0, got {weight}")
        _check(sum(weights.values()) > 0, prefix, "at least one task weight must be positive")


@dataclasses.dataclass(frozen=True)
class SpeechDataConfig:
    """The U2++ pipeline (data/speech_pipeline.py): length buckets and WeNet's train-time augmentation."""

    # Padded fbank frames of each bucket, ascending; an utterance goes to the first bucket that
    # holds it, longer ones are left out. Empty: one bucket of data.max_audio_seconds.
    bucket_frames: tuple[int, ...] = ()
    speed_perturb: bool = False  # speeds 0.9 / 1.0 / 1.1, drawn per utterance (WeNet's speed_perturb)
    dither: float = 0.1  # Kaldi fbank dither in training (WeNet recipes: 0.1)
    spec_aug: bool = True
    num_t_mask: int = 2
    num_f_mask: int = 2
    max_t: int = 50
    max_f: int = 10
    spec_sub: bool = False
    spec_sub_max_t: int = 20
    num_t_sub: int = 3

    def validate(self, prefix: str) -> None:
        frames = list(self.bucket_frames)
        _check(all(f > 0 for f in frames) and frames == sorted(set(frames)), f"{prefix}.bucket_frames",
               f"must be positive and strictly ascending, got {frames}")
        _check(self.dither >= 0, f"{prefix}.dither", f"must be >= 0, got {self.dither}")
        for name in ("num_t_mask", "num_f_mask", "num_t_sub"):
            _check(getattr(self, name) >= 0, f"{prefix}.{name}", "must be >= 0")
        for name in ("max_t", "max_f", "spec_sub_max_t"):
            _check(getattr(self, name) >= 1, f"{prefix}.{name}", "must be >= 1")


SPEECH_INPUTS = ("units", "features")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Training data: prepared records (`most data prepare`) -> task mixture -> packed batches."""

    records: str = "data/prepared"  # a directory written by `most data prepare`
    # Held-out records (`most data prepare` of other utterances) for the trainer's evaluation
    # every train.eval_every steps; None: no held-out evaluation.
    eval_records: str | None = None
    seq_len: int = 2048  # packed row length (MoST max length)
    batch_size: int = 8  # global rows per step, split evenly over JAX processes
    seed: int = 0
    mixture: MixtureConfig = MixtureConfig()
    # Sequences waiting for a row in the first-fit packer; more bins pack tighter.
    packing_bins: int = 32
    num_workers: int = 0  # Grain worker processes per JAX process (0: in the main process)
    max_audio_seconds: float = 30.0  # longer utterances are skipped by `most data prepare`
    # How MoST prompts hear speech: "units" (discrete units, MoST) or "features" (the continuous
    # frames that `most data prepare --continuous` stored in the records, MoST-C; the model needs
    # model.continuous_input_dim equal to their width). Speech outputs are units either way.
    speech_input: str = "units"
    speech: SpeechDataConfig = SpeechDataConfig()  # U2++ only

    def validate(self, prefix: str = "data") -> None:
        _check(self.seq_len >= 16, f"{prefix}.seq_len", f"must be >= 16, got {self.seq_len}")
        _check(self.batch_size > 0, f"{prefix}.batch_size", f"must be positive, got {self.batch_size}")
        _check(self.packing_bins > 0, f"{prefix}.packing_bins", f"must be positive, got {self.packing_bins}")
        _check(self.num_workers >= 0, f"{prefix}.num_workers", f"must be >= 0, got {self.num_workers}")
        _check(self.max_audio_seconds > 0, f"{prefix}.max_audio_seconds", "must be positive")
        _check(bool(self.records), f"{prefix}.records", "must name a prepared records directory")
        _check(self.speech_input in SPEECH_INPUTS, f"{prefix}.speech_input",
               f"must be one of {', '.join(SPEECH_INPUTS)}, got {self.speech_input!r}")
        self.mixture.validate(f"{prefix}.mixture")
        self.speech.validate(f"{prefix}.speech")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation and run control. The global batch is `data.batch_size` rows of `data.seq_len`
    tokens, split into `micro_batches` equal micro-batches whose gradients are accumulated."""

    steps: int = 1000  # total optimiser steps of the run (the schedule's horizon)
    micro_batches: int = 1
    lr: float = 3e-4  # peak learning rate, reached after warmup
    warmup_steps: int = 100  # linear warmup from 0
    # Decay after warmup: "cosine" or "linear" down to lr x min_lr_ratio at `steps`, or "constant";
    # "warmuplr" is WeNet's WarmupLR: lr x warmup^0.5 x min(n^-0.5, n x warmup^-1.5) at update n.
    schedule: str = "cosine"
    # "adamw": decoupled weight decay; "adam": torch.optim.Adam's L2 term (weight_decay x param
    # added to the gradient before the moments), as WeNet's `optim: adam`.
    optimizer: str = "adamw"
    min_lr_ratio: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1  # (see `optimizer`) never applied to norm scales or biases
    # Embedding rows of rare tokens (most audio units) get gradient seldom but would be decayed
    # every step, so the embedding table is left undecayed unless asked.
    decay_embeddings: bool = False
    clip_norm: float = 1.0  # global-norm gradient clipping; 0 switches it off
    log_every: int = 10
    checkpoint_every: int = 1000
    keep: int = 3  # checkpoints kept (the oldest are deleted)
    async_checkpoint: bool = True  # write checkpoints in a background thread while training goes on
    max_nonfinite: int = 10  # this many non-finite steps in a row stop the run
    # Held-out evaluation: the loss on train.eval_batches fixed batches of data.eval_records every
    # eval_every steps and at the last step (RUN_DIR/eval.jsonl); 0: none.
    eval_every: int = 0
    eval_batches: int = 4
    seed: int = 0  # parameter initialisation and the training RNG

    def validate(self, prefix: str = "train") -> None:
        for name in ("steps", "micro_batches", "log_every", "checkpoint_every", "keep", "max_nonfinite", "eval_batches"):
            value = getattr(self, name)
            _check(value > 0, f"{prefix}.{name}", f"must be positive, got {value}")
        _check(self.lr > 0, f"{prefix}.lr", f"must be positive, got {self.lr}")
        _check(self.warmup_steps >= 0, f"{prefix}.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _check(self.schedule in ("cosine", "linear", "constant", "warmuplr"), f"{prefix}.schedule",
               f"must be 'cosine', 'linear', 'constant' or 'warmuplr', got {self.schedule!r}")
        _check(self.schedule != "warmuplr" or self.warmup_steps > 0, f"{prefix}.warmup_steps",
               "schedule 'warmuplr' needs warmup_steps > 0")
        _check(self.optimizer in ("adamw", "adam"), f"{prefix}.optimizer",
               f"must be 'adamw' or 'adam', got {self.optimizer!r}")
        _check(0 <= self.min_lr_ratio <= 1, f"{prefix}.min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        for name in ("b1", "b2"):
            value = getattr(self, name)
            _check(0 <= value < 1, f"{prefix}.{name}", f"must be in [0, 1), got {value}")
        _check(self.eps > 0, f"{prefix}.eps", f"must be positive, got {self.eps}")
        _check(self.weight_decay >= 0, f"{prefix}.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(self.clip_norm >= 0, f"{prefix}.clip_norm", f"must be >= 0 (0: no clipping), got {self.clip_norm}")
        _check(self.eval_every >= 0, f"{prefix}.eval_every", f"must be >= 0 (0: no evaluation), got {self.eval_every}")


@dataclasses.dataclass(frozen=True)
class DemoCorpusConfig:
    """The built-in eSpeak corpus both main jobs synthesise (`most demo`, `most demo u2pp`)."""

    utterances: int = 8400  # spoken utterances over all splits
    dev_utterances: int = 200  # a split disjoint in sentences from train and test: model choices are made on it
    test_utterances: int = 200  # held out: their sentences occur nowhere in training or dev; reported
    corpus_seed: int = 0
    voices: tuple[str, ...] = ()  # eSpeak voices; empty: every built-in voice (corpus/synth.py VOICES)
    pitches: tuple[int, ...] = ()  # empty: the built-in pitches
    rate_wpm: tuple[int, ...] = ()  # [low, high] words per minute; empty: the built-in range
    vocabulary: int = 0  # sentences over the generator's N most frequent words only; 0: every word
    workers: int = 2  # processes for synthesis and preparation

    def held_out(self) -> int:
        """Utterances outside the training split."""
        return self.dev_utterances + self.test_utterances

    def validate(self, prefix: str = "demo") -> None:
        for name in ("utterances", "dev_utterances", "test_utterances", "workers"):
            value = getattr(self, name)
            _check(value > 0, f"{prefix}.{name}", f"must be positive, got {value}")
        _check(self.held_out() < self.utterances / 2, f"{prefix}.test_utterances",
               f"the held-out utterances ({self.held_out()}) must be under half of {prefix}.utterances="
               f"{self.utterances}")
        _check(self.vocabulary >= 0, f"{prefix}.vocabulary", f"must be >= 0 (0: every word), got {self.vocabulary}")
        _check(len(self.rate_wpm) in (0, 2), f"{prefix}.rate_wpm", f"must be [low, high], got {list(self.rate_wpm)}")


@dataclasses.dataclass(frozen=True)
class DemoConfig(DemoCorpusConfig):
    """The main job (`most demo`): sizes of the built-in corpus, the tokenizer, the unit codebook and
    the evaluation. It is the `demo:` section of the demo's YAML, read apart from the Config that the
    model, data and train sections of the same file make (see `load_demo_config`)."""

    text_lm_sentences: int = 30000  # text-only sentences (text LM task, tokenizer training)
    tokenizer_size: int = 1000  # sentencepiece BPE pieces
    units_k: int = 256
    units_rate: float = 25.0  # Hz
    units_features: str = "mfcc"  # or "hubert": the layer units_hubert_layer of the checkpoint units_hubert
    units_hubert: str | None = None  # a HuBERT checkpoint (`most hubert train` / `import-hf`) for hubert units
    units_hubert_layer: int = 0  # 0: the first layer's input, N: the output of layer N
    units_pooling: str = "stack"  # how frames are grouped to the unit rate: stack (concatenate) or mean
    units_cmvn: bool = False  # normalise each utterance's frames (mean/variance) before the codebook
    units_min_run: int = 1  # drop runs of one unit shorter than this many unit frames (before dedup)
    units_hours: float = 1.5  # audio the k-means codebook is fitted on
    kmeans_epochs: int = 5
    eval_batch_size: int = 32
    asr_max_new_tokens: int = 64
    tts_eval_utterances: int = 16  # held-out utterances for the TTS unit accuracy (0: none)
    tts_max_new_tokens: int = 256
    # `most demo --full` (full: true) adds speech out: a vocoder trained on the training audio, TTS
    # waveforms of held-out sentences (OUT/tts_*.wav), TTS WER through the demo model as its own
    # ASR next to its floors, and audio-LM pair accuracies on the built-in pair sets.
    full: bool = False
    vocoder_config: str = "vocoder_demo.yaml"  # a path or a shipped config name
    vocoder_steps: int = 2000
    vocoder_utterances: int = 2000  # training utterances the vocoder holds in memory
    tts_wav_sentences: int = 4  # held-out test sentences written to OUT/tts_*.wav
    tts_wer_utterances: int = 100  # held-out test sentences of the TTS WER
    audio_lm_pairs: int = 200  # pairs of each built-in set (lexical, syntactic)

    def validate(self, prefix: str = "demo") -> None:
        super().validate(prefix)
        for name in ("text_lm_sentences", "units_k", "kmeans_epochs", "eval_batch_size", "asr_max_new_tokens",
                     "tts_max_new_tokens", "vocoder_steps", "vocoder_utterances", "tts_wer_utterances",
                     "audio_lm_pairs"):
            value = getattr(self, name)
            _check(value > 0, f"{prefix}.{name}", f"must be positive, got {value}")
        _check(self.tts_eval_utterances >= 0, f"{prefix}.tts_eval_utterances", "must be >= 0")
        _check(self.tts_eval_utterances <= self.test_utterances, f"{prefix}.tts_eval_utterances",
               f"cannot exceed {prefix}.test_utterances={self.test_utterances}")
        for name in ("tts_wav_sentences", "tts_wer_utterances") if self.full else ():
            value = getattr(self, name)
            _check(0 <= value <= self.test_utterances, f"{prefix}.{name}",
                   f"must be within 0..{prefix}.test_utterances={self.test_utterances}, got {value}")
        _check(self.tokenizer_size >= 300, f"{prefix}.tokenizer_size", "must be >= 300 (256 byte pieces + text)")
        _check(self.units_rate > 0, f"{prefix}.units_rate", "must be positive")
        _check(self.units_hours > 0, f"{prefix}.units_hours", "must be positive")
        _check(self.units_min_run >= 1, f"{prefix}.units_min_run", f"must be >= 1, got {self.units_min_run}")
        _check(self.units_pooling in ("stack", "mean"), f"{prefix}.units_pooling",
               f"must be stack or mean, got {self.units_pooling!r}")
        _check((self.units_features == "hubert") == bool(self.units_hubert), f"{prefix}.units_hubert",
               "names the HuBERT checkpoint exactly when units_features is hubert")

    def units_feature_options(self) -> dict | None:
        """The frame features' options for `fit_from_manifest` (None: the kind's defaults)."""
        if self.units_features != "hubert":
            return None
        return {"checkpoint": self.units_hubert, "layer": self.units_hubert_layer}


@dataclasses.dataclass(frozen=True)
class U2ppDemoConfig(DemoCorpusConfig):
    """The second main job (`most demo u2pp`): the corpus with a dev split (model choices are made
    on it), the tokenizer fitted on the training transcripts, and the decoding of dev and test."""

    tokenizer_size: int = 300  # sentencepiece BPE pieces (256 of them byte fallbacks)
    eval_batch_size: int = 50
    beam: int = 10  # CTC prefix beam (the n-best that attention rescoring rescores)
    ctc_weight: float = 0.5  # of the CTC score in attention rescoring (WeNet's runtime default)
    streaming_chunks: tuple[int, ...] = (16, 4)  # chunk sizes (frames after subsampling) decoded as streaming

    def validate(self, prefix: str = "demo") -> None:
        super().validate(prefix)
        for name in ("eval_batch_size", "beam"):
            value = getattr(self, name)
            _check(value > 0, f"{prefix}.{name}", f"must be positive, got {value}")
        _check(self.tokenizer_size >= 300, f"{prefix}.tokenizer_size", "must be >= 300 (256 byte pieces + text)")
        _check(self.ctc_weight >= 0, f"{prefix}.ctc_weight", f"must be >= 0, got {self.ctc_weight}")
        _check(all(c > 0 for c in self.streaming_chunks), f"{prefix}.streaming_chunks",
               f"must be positive frame counts, got {list(self.streaming_chunks)}")


# ----------------------------------------------------------------------------- U2++ (WeNet)
# Field names follow WeNet's training YAML (encoder_conf, decoder_conf, model_conf) so that
# `most u2pp import-wenet` maps them one to one; options WeNet has but U2++ MoE does not use
# (other encoders, batch-norm conv modules, ...) are refused at import, not modelled.

def _wenet_moe(activation: str) -> MoEConfig:
    return MoEConfig(num_experts=8, top_k=2, expert_ffn_dim=2048, num_shared_experts=0, router="topk_softmax",
                     expert="ffn", activation=activation, expert_bias=True, aux_loss_alpha=0.0)


def _check_u2pp_ffn(prefix: str, mlp_type: str, moe: MoEConfig) -> None:
    """A U2++ stack's FFNs: dense, or WeNet's MoEFFNLayer (ffn experts, topk_softmax router)."""
    _check(mlp_type in ("position_wise_feed_forward", "moe"), f"{prefix}.mlp_type",
           f"must be position_wise_feed_forward or moe, got {mlp_type!r}")
    if mlp_type == "moe":
        moe.validate(f"{prefix}.moe")
        _check(moe.expert == "ffn" and moe.router == "topk_softmax", f"{prefix}.moe",
               "U2++ MoE layers use expert 'ffn' and router 'topk_softmax' (WeNet's MoEFFNLayer)")


@dataclasses.dataclass(frozen=True)
class U2ppEncoderConfig:
    """WeNet ConformerEncoder (rel-pos attention, macaron FFNs, causal conv module with LayerNorm)."""

    output_size: int = 256  # d
    attention_heads: int = 4
    linear_units: int = 2048  # FFN width (each expert's width under mlp_type moe)
    num_blocks: int = 12
    dropout_rate: float = 0.1
    positional_dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.0
    input_layer: str = "conv2d"  # conv2d (x4), conv2d6 (x6), conv2d8 (x8)
    cnn_module_kernel: int = 8
    causal: bool = True  # causal depthwise conv (left pad kernel-1); False: symmetric padding
    use_dynamic_chunk: bool = True
    use_dynamic_left_chunk: bool = False
    static_chunk_size: int = 0  # > 0: always that chunk (when not dynamic); 0: full context
    norm_eps: float = 1e-5
    # "position_wise_feed_forward" (dense) or "moe": every FFN (both macaron FFNs) an MoE layer.
    mlp_type: str = "moe"
    moe: MoEConfig = _wenet_moe("silu")

    def validate(self, prefix: str) -> None:
        for name in ("output_size", "attention_heads", "linear_units", "num_blocks", "cnn_module_kernel"):
            _check(getattr(self, name) > 0, f"{prefix}.{name}", "must be positive")
        _check(self.output_size % self.attention_heads == 0, f"{prefix}.attention_heads",
               f"must divide output_size={self.output_size}")
        _check(self.input_layer in ("conv2d", "conv2d6", "conv2d8"), f"{prefix}.input_layer",
               f"must be conv2d, conv2d6 or conv2d8, got {self.input_layer!r}")
        _check(self.static_chunk_size >= 0, f"{prefix}.static_chunk_size", "must be >= 0")
        for name in ("dropout_rate", "positional_dropout_rate", "attention_dropout_rate"):
            _check(0 <= getattr(self, name) < 1, f"{prefix}.{name}", "must be in [0, 1)")
        _check_u2pp_ffn(prefix, self.mlp_type, self.moe)


@dataclasses.dataclass(frozen=True)
class U2ppDecoderConfig:
    """WeNet BiTransformerDecoder: `num_blocks` left-to-right and `r_num_blocks` right-to-left layers."""

    attention_heads: int = 4
    linear_units: int = 2048
    num_blocks: int = 3
    r_num_blocks: int = 3
    dropout_rate: float = 0.1
    positional_dropout_rate: float = 0.1
    self_attention_dropout_rate: float = 0.0
    src_attention_dropout_rate: float = 0.0
    norm_eps: float = 1e-5
    mlp_type: str = "moe"
    moe: MoEConfig = _wenet_moe("relu")

    def validate(self, prefix: str, d_model: int) -> None:
        for name in ("attention_heads", "linear_units", "num_blocks"):
            _check(getattr(self, name) > 0, f"{prefix}.{name}", "must be positive")
        _check(self.r_num_blocks >= 0, f"{prefix}.r_num_blocks", "must be >= 0")
        _check(d_model % self.attention_heads == 0, f"{prefix}.attention_heads",
               f"must divide the encoder's output_size={d_model}")
        for name in ("dropout_rate", "positional_dropout_rate", "self_attention_dropout_rate",
                     "src_attention_dropout_rate"):
            _check(0 <= getattr(self, name) < 1, f"{prefix}.{name}", "must be in [0, 1)")
        _check_u2pp_ffn(prefix, self.mlp_type, self.moe)


@dataclasses.dataclass(frozen=True)
class U2ppConfig:
    """U2++ (MoE): global CMVN -> Conformer encoder -> CTC head, plus a bidirectional attention decoder.

    Token ids: 0 is the CTC blank, vocab_size - 1 is sos/eos (WeNet's convention)."""

    family: str = "u2pp"
    vocab_size: int = 5000
    input_dim: int = 80  # fbank bins
    encoder: U2ppEncoderConfig = U2ppEncoderConfig()
    decoder: U2ppDecoderConfig = U2ppDecoderConfig()
    ctc_weight: float = 0.3
    reverse_weight: float = 0.3
    lsm_weight: float = 0.1  # label smoothing
    length_normalized_loss: bool = False
    init_std: float = 0.02
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    remat: str = "none"
    scan_layers: bool = True

    def validate(self, prefix: str = "model") -> None:
        _check(self.family == "u2pp", f"{prefix}.family", f"a U2++ section has family 'u2pp', got {self.family!r}")
        _check(self.vocab_size > 2, f"{prefix}.vocab_size", "must be > 2 (blank, tokens, sos/eos)")
        _check(self.input_dim > 0, f"{prefix}.input_dim", "must be positive")
        _check(0 <= self.ctc_weight <= 1, f"{prefix}.ctc_weight", "must be in [0, 1]")
        _check(0 <= self.reverse_weight <= 1, f"{prefix}.reverse_weight", "must be in [0, 1]")
        _check(self.reverse_weight == 0 or self.decoder.r_num_blocks > 0, f"{prefix}.reverse_weight",
               "needs decoder.r_num_blocks > 0")
        _check(0 <= self.lsm_weight < 1, f"{prefix}.lsm_weight", "must be in [0, 1)")
        _check(self.dtype in ("float32", "bfloat16"), f"{prefix}.dtype", f"unknown dtype {self.dtype!r}")
        _check(self.param_dtype in ("float32", "bfloat16"), f"{prefix}.param_dtype",
               f"unknown dtype {self.param_dtype!r}")
        _check(self.remat in ("none", "full", "dots"), f"{prefix}.remat", f"unknown remat policy {self.remat!r}")
        self.encoder.validate(f"{prefix}.encoder")
        self.decoder.validate(f"{prefix}.decoder", self.encoder.output_size)


@dataclasses.dataclass(frozen=True)
class VocoderConfig:
    """Unit HiFi-GAN vocoder (speech-resynthesis CodeGenerator / transformers SeamlessM4TCodeHifiGan):
    unit (+ language, + speaker) embeddings -> duration predictor -> HiFi-GAN generator, trained
    against multi-period and multi-scale discriminators. One unit frame becomes prod(upsample_rates)
    samples (the hop): 640 for 25 Hz, 320 for 50 Hz, 1280 for 12.5 Hz units at 16 kHz.

    Training segments are `data.seq_len` unit frames of `data.batch_size` rows (models/vocoder/family.py)."""

    family: str = "vocoder"
    num_units: int = 500  # unit vocabulary (k-means K)
    unit_embed_dim: int = 128
    num_speakers: int = 0  # 0: no speaker embedding
    speaker_embed_dim: int = 0
    num_langs: int = 0  # 0: no language embedding
    lang_embed_dim: int = 0
    duration_predictor: bool = True  # re-expands deduplicated units by predicted durations
    dur_hidden_dim: int = 128
    dur_kernel_size: int = 3
    dur_dropout: float = 0.5
    upsample_rates: tuple[int, ...] = (5, 4, 4, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (11, 8, 8, 4, 4)
    upsample_initial_channel: int = 512
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    leaky_relu_slope: float = 0.1
    # The output head: istft_n_fft 0 is HiFi-GAN's (conv_post -> tanh, one sample per step of the
    # last upsampler); istft_n_fft > 0 is iSTFTNet's (conv_post -> log-magnitude and phase of
    # istft_n_fft / 2 + 1 bins per frame -> inverse STFT of hop istft_hop), so the convs run at
    # the STFT frame rate and the hop is prod(upsample_rates) x istft_hop (models/vocoder/istft.py).
    istft_n_fft: int = 0
    istft_hop: int = 0
    sample_rate: int = 16000
    # Discriminators (HiFi-GAN's sizes by default): periods and channels of the multi-period one (its
    # convs stride 3, the last 1), channels and groups of the 7 convs of each scale of the
    # multi-scale one (3 scales: raw, /2, /4 average-pooled).
    mpd_periods: tuple[int, ...] = (2, 3, 5, 7, 11)
    mpd_channels: tuple[int, ...] = (32, 128, 512, 1024, 1024)
    msd_scales: int = 3
    msd_channels: tuple[int, ...] = (128, 128, 256, 512, 1024, 1024, 1024)
    msd_groups: tuple[int, ...] = (1, 4, 16, 16, 16, 16, 1)
    # Losses: generator = lsgan + fm_weight x feature matching + mel_weight x mel-L1 + dur_weight x
    # duration MSE (log(1 + d)); the log-mel of the mel-L1 (HiFi-GAN's: 1024/256/1024, 80 bins, 0-8 kHz).
    mel_weight: float = 45.0
    fm_weight: float = 2.0
    # False: the generator learns from mel-L1 (+ duration) alone and the discriminators are
    # given zero gradients (their phase computes nothing): far cheaper per step, buzzier speech.
    adversarial: bool = True
    dur_weight: float = 1.0
    mel_n_fft: int = 1024
    mel_hop: int = 256
    mel_win: int = 1024
    mel_bins: int = 80
    mel_fmin: float = 0.0
    mel_fmax: float = 8000.0

    @property
    def hop(self) -> int:
        return math.prod(self.upsample_rates) * max(self.istft_hop, 1)

    def validate(self, prefix: str = "model") -> None:
        _check(self.family == "vocoder", f"{prefix}.family",
               f"a vocoder section has family 'vocoder', got {self.family!r}")
        _check(self.num_units > 0 and self.unit_embed_dim > 0, f"{prefix}.num_units",
               "num_units and unit_embed_dim must be positive")
        for kind in ("speaker", "lang"):
            count, dim = getattr(self, f"num_{kind}s"), getattr(self, f"{kind}_embed_dim")
            _check(count >= 0 and dim >= 0 and (count == 0) == (dim == 0), f"{prefix}.num_{kind}s",
                   f"num_{kind}s={count} and {kind}_embed_dim={dim} must both be 0 (none) or both positive")
        _check(self.dur_kernel_size % 2 == 1, f"{prefix}.dur_kernel_size", "must be odd (same-length convs)")
        _check(0 <= self.dur_dropout < 1, f"{prefix}.dur_dropout", "must be in [0, 1)")
        _check(len(self.upsample_rates) == len(self.upsample_kernel_sizes) > 0, f"{prefix}.upsample_kernel_sizes",
               "needs one kernel per upsample rate")
        for rate, kernel in zip(self.upsample_rates, self.upsample_kernel_sizes):
            _check(rate > 0 and kernel >= rate and (kernel - rate) % 2 == 0, f"{prefix}.upsample_kernel_sizes",
                   f"kernel {kernel} for rate {rate}: needs kernel >= rate and an even difference, so each "
                   "upsampler multiplies the length by exactly its rate")
        if self.istft_n_fft or self.istft_hop:
            _check(self.istft_hop > 0 and self.istft_n_fft % self.istft_hop == 0
                   and self.istft_n_fft >= 2 * self.istft_hop, f"{prefix}.istft_n_fft",
                   f"istft_n_fft {self.istft_n_fft} and istft_hop {self.istft_hop}: the FFT size must be a multiple "
                   "of the hop and at least two hops (or both 0: the waveform head)")
        _check(self.upsample_initial_channel % 2 ** len(self.upsample_rates) == 0, f"{prefix}.upsample_initial_channel",
               f"{self.upsample_initial_channel} must be divisible by 2^{len(self.upsample_rates)} (halved per upsampler)")
        _check(len(self.resblock_kernel_sizes) == len(self.resblock_dilation_sizes) > 0,
               f"{prefix}.resblock_dilation_sizes", "needs one dilation list per resblock kernel")
        _check(all(k % 2 == 1 for k in self.resblock_kernel_sizes), f"{prefix}.resblock_kernel_sizes", "must be odd")
        _check(len(self.mpd_channels) > 0 and all(p > 0 for p in self.mpd_periods), f"{prefix}.mpd_periods",
               "needs positive periods and at least one channel count")
        _check(self.msd_scales > 0 and len(self.msd_channels) == len(self.msd_groups) == 7, f"{prefix}.msd_groups",
               "needs msd_scales > 0 and 7 channel and group counts (HiFi-GAN's 7 convs per scale)")
        ins = (1, *self.msd_channels[:-1])
        for i, (c_in, c_out, g) in enumerate(zip(ins, self.msd_channels, self.msd_groups)):
            _check(c_in % g == 0 and c_out % g == 0, f"{prefix}.msd_groups[{i}]",
                   f"{g} groups do not divide {c_in} -> {c_out} channels")
        _check(self.mel_win <= self.mel_n_fft and self.mel_hop > 0, f"{prefix}.mel_win", "needs mel_win <= mel_n_fft")
        _check(0 <= self.mel_fmin < self.mel_fmax <= self.sample_rate / 2, f"{prefix}.mel_fmax",
               "needs 0 <= mel_fmin < mel_fmax <= sample_rate / 2")

@dataclasses.dataclass(frozen=True)
class HubertConfig:
    """HuBERT (transformers' HubertConfig names and defaults = hubert-base-ls960): conv feature
    extractor -> feature projection -> convolutional positional embedding -> Transformer encoder
    (post-LN, or pre-LN with a final LayerNorm when `do_stable_layer_norm`).

    The masked-prediction head (HuBERT pretraining: cosine logits of final_proj(x) against one
    embedding per cluster) exists only when `num_clusters` > 0; an imported HubertModel has none."""

    family: str = "hubert"
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    conv_dim: tuple[int, ...] = (512,) * 7
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)  # product 320 samples: 50 Hz at 16 kHz
    conv_bias: bool = False
    feat_extract_norm: str = "group"  # group: GroupNorm after the first conv only; layer: LayerNorm after each
    feat_extract_activation: str = "gelu"
    feat_proj_layer_norm: bool = True
    num_conv_pos_embeddings: int = 128  # positional conv kernel
    num_conv_pos_embedding_groups: int = 16
    conv_pos_batch_norm: bool = False  # BatchNorm (running statistics) before the positional conv, no weight norm
    do_stable_layer_norm: bool = False
    layer_norm_eps: float = 1e-5
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.1
    feat_proj_dropout: float = 0.0
    masked_spec_embed: bool = True  # the learned vector that replaces masked frames (HubertModel's)
    num_clusters: int = 0  # > 0: the masked-prediction head over that many k-means units
    final_dim: int = 256  # width of the head's projection and cluster embeddings
    logit_temp: float = 0.1  # cosine logits are divided by this
    mask_prob: float = 0.8  # share of frames starting a masked span (HuBERT's pretraining setting)
    mask_length: int = 10
    init_std: float = 0.02
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    remat: str = "none"
    scan_layers: bool = True

    @property
    def frame_rate_samples(self) -> int:
        """Input samples per output frame (320 = 20 ms at 16 kHz for the base model)."""
        return math.prod(self.conv_stride)

    def validate(self, prefix: str = "model") -> None:
        _check(self.family == "hubert", f"{prefix}.family", f"a HuBERT section has family 'hubert', got {self.family!r}")
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "num_conv_pos_embeddings", "num_conv_pos_embedding_groups", "final_dim", "mask_length"):
            _check(getattr(self, name) > 0, f"{prefix}.{name}", "must be positive")
        _check(self.hidden_size % self.num_attention_heads == 0, f"{prefix}.num_attention_heads",
               f"must divide hidden_size={self.hidden_size}")
        _check(self.hidden_size % self.num_conv_pos_embedding_groups == 0, f"{prefix}.num_conv_pos_embedding_groups",
               f"must divide hidden_size={self.hidden_size}")
        _check(len(self.conv_dim) > 0 and len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride),
               f"{prefix}.conv_dim", f"conv_dim, conv_kernel and conv_stride must have one equal, non-zero length, got "
               f"{len(self.conv_dim)}, {len(self.conv_kernel)}, {len(self.conv_stride)}")
        for name in ("conv_dim", "conv_kernel", "conv_stride"):
            _check(all(v > 0 for v in getattr(self, name)), f"{prefix}.{name}", "must be positive")
        _check(self.feat_extract_norm in ("group", "layer"), f"{prefix}.feat_extract_norm",
               f"must be group or layer, got {self.feat_extract_norm!r}")
        for name in ("hidden_act", "feat_extract_activation"):
            _check(getattr(self, name) == "gelu", f"{prefix}.{name}", f"only gelu is supported, got {getattr(self, name)!r}")
        for name in ("hidden_dropout", "attention_dropout", "activation_dropout", "feat_proj_dropout"):
            _check(0 <= getattr(self, name) < 1, f"{prefix}.{name}", "must be in [0, 1)")
        _check(self.num_clusters >= 0, f"{prefix}.num_clusters", "must be >= 0")
        _check(self.logit_temp > 0, f"{prefix}.logit_temp", "must be positive")
        _check(0 <= self.mask_prob <= 1, f"{prefix}.mask_prob", "must be in [0, 1]")
        _check(self.dtype in ("float32", "bfloat16"), f"{prefix}.dtype", f"unknown dtype {self.dtype!r}")
        _check(self.param_dtype in ("float32", "bfloat16"), f"{prefix}.param_dtype",
               f"unknown dtype {self.param_dtype!r}")
        _check(self.remat in ("none", "full", "dots"), f"{prefix}.remat", f"unknown remat policy {self.remat!r}")


MESH_AXES = ("slice", "data", "fsdp", "expert", "tensor")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh axis sizes; -1 means "the devices left over" (at most one axis). Outermost first:
    `slice` spans TPU slices over DCN (data parallel), `tensor` is innermost (fastest links)."""

    slice: int = 1
    data: int = -1
    fsdp: int = 1
    expert: int = 1
    tensor: int = 1

    def validate(self, prefix: str = "mesh") -> None:
        for name in MESH_AXES:
            value = getattr(self, name)
            _check(value == -1 or value > 0, f"{prefix}.{name}", f"must be positive or -1 (the rest), got {value}")
        rest = [name for name in MESH_AXES if getattr(self, name) == -1]
        _check(len(rest) <= 1, prefix, f"only one axis may be -1, got {', '.join(rest)}")


@dataclasses.dataclass(frozen=True)
class Config:
    """The whole run (what a checkpoint stores). Later concerns (data, train, mesh) add their own
    sections; `most demo`'s corpus settings (DemoConfig) are not one of them."""

    # by its `family` key (MODEL_SECTIONS); default most
    model: ModelConfig | U2ppConfig | VocoderConfig | HubertConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    mesh: MeshConfig = MeshConfig()

    def validate(self) -> None:
        self.model.validate("model")
        self.data.validate("data")
        self.train.validate("train")
        self.mesh.validate("mesh")
        _check(self.data.batch_size % self.train.micro_batches == 0, "train.micro_batches",
               f"{self.train.micro_batches} does not divide data.batch_size={self.data.batch_size}")
        _check(self.train.eval_every == 0 or bool(self.data.eval_records), "train.eval_every",
               f"{self.train.eval_every} asks for a held-out evaluation, but data.eval_records names no records")
        if self.data.speech_input == "features":
            _check(getattr(self.model, "continuous_input_dim", 0) > 0, "data.speech_input",
                   "'features' needs a model with continuous speech input (model.continuous_input_dim > 0)")


def _check(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{field}: {message}")


# ----------------------------------------------------------------------------- loading

# Model section class per family name: the `family` key of a model section picks one (a section
# without it is MoST, as checkpoints written before families existed). models/family.register
# adds the sections of families defined elsewhere.
MODEL_SECTIONS: dict[str, type] = {"most": ModelConfig, "u2pp": U2ppConfig, "vocoder": VocoderConfig,
                                   "hubert": HubertConfig}


def register_model_section(family: str, cls: type) -> None:
    known = MODEL_SECTIONS.get(family)
    if known is not None and known is not cls:
        raise ValueError(f"model family {family!r} already has the config section {known.__name__}")
    MODEL_SECTIONS[family] = cls


def _model_section(value, field: str):
    """The model section: the class its `family` key names, built from the rest of the mapping."""
    if any(isinstance(value, cls) for cls in MODEL_SECTIONS.values()):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{field}: expected a mapping for the model section, got {value!r}")
    family = value.get("family", "most")
    if not isinstance(family, str) or family not in MODEL_SECTIONS:
        raise ConfigError(f"{field}.family: unknown model family {family!r}; known: {', '.join(MODEL_SECTIONS)}")
    return from_dict(MODEL_SECTIONS[family], value, f"{field}.")


def from_dict(cls: type, data: dict[str, Any] | None, prefix: str = "", base: Any = None):
    """Builds dataclass `cls` from a (possibly partial) nested dict; unknown keys are errors.

    Keys left out keep `base`'s values (default: the field defaults), and a nested section starts
    from its field's default instance, so e.g. a U2++ `encoder.moe` block changes only the keys it
    names of the U2++ MoE defaults rather than falling back to MoEConfig's class defaults."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            default = getattr(base, f.name) if base is not None else f.default
            kwargs[f.name] = _coerce(hints[f.name], data.pop(f.name), f"{prefix}{f.name}", default)
    if data:
        names = ", ".join(f"{prefix}{k}" for k in sorted(data))
        raise ConfigError(f"{names}: unknown field(s) of {cls.__name__}")
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


def _coerce(tp, value, field: str, default: Any = None):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{field}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, f"{field}.", default if isinstance(default, tp) else None)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if all(dataclasses.is_dataclass(a) and "family" in {f.name for f in dataclasses.fields(a)} for a in args):
            return _model_section(value, field)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, field)
    if origin is tuple:
        (item,) = {a for a in typing.get_args(tp) if a is not Ellipsis}
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{field}: expected a list, got {value!r}")
        return tuple(_coerce(item, v, f"{field}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{field}: expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{field}: expected a number, got {value!r}")
        try:
            number = tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{field}: expected {tp.__name__}, got {value!r}") from None
        if tp is int and float(value) != number:
            raise ConfigError(f"{field}: expected an integer, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{field}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{field}: unsupported type {tp}")


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """['model.moe.top_k=4', ...] -> nested dict; values are parsed as YAML scalars/lists."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key.path=value")
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is both a value and a section")
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({_yaml_problem(e)})") from None
    return nested


def _yaml_problem(e: yaml.YAMLError) -> str:
    return " ".join(str(getattr(e, "problem", None) or e).split())


def _yaml_where(path: Path, e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    return f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """A config dict with `key.path=value` overrides applied (nested sections merged, not replaced)."""
    return merge_dicts(data, parse_overrides(overrides))


def merge_dicts(base: dict, extra: dict) -> dict:
    """`base` with `extra` merged in: nested mappings merged key by key, anything else replaced."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_dict(cfg) -> dict[str, Any]:
    """Plain nested dict (tuples as lists), suitable for YAML/JSON and `from_dict`."""

    def plain(x):
        if dataclasses.is_dataclass(x):
            return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
        if isinstance(x, tuple):
            return [plain(v) for v in x]
        return x

    return plain(cfg)


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config as a dict; a top-level `base: FILE` (relative to this file) is read first and
    this file's values override it, so recipes can share one model section."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{_yaml_where(path, e)}: not valid YAML: {_yaml_problem(e)}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping")
    data = dict(loaded or {})
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"config file {path}: base: expected a file name, got {base!r}")
    chain = chain + (path.resolve(),)
    base_path = path.parent / base
    if base_path.resolve() in chain:
        raise ConfigError(f"config file {path}: base: {base} includes itself")
    return merge_dicts(_read_yaml(base_path, chain), data)


def shipped_configs_dir() -> Path:
    """The YAML configs installed with the package (the repository's configs/, linked into most_jax/)."""
    return Path(str(resources.files("most_jax").joinpath("configs")))


def resolve_config_path(path: str | Path) -> Path:
    """`path` if it names a file, else the shipped config of that name: `most_tiny.yaml`, `most_tiny`
    or the source-tree spelling `configs/most_tiny.yaml` all work from any directory."""
    given = Path(path)
    if given.is_file():
        return given
    shipped_dir = shipped_configs_dir()
    if given.parent in (Path("."), Path("configs")):
        name = given.name if given.suffix == ".yaml" else f"{given.name}.yaml"
        if (shipped_dir / name).is_file():
            return shipped_dir / name
    names = ", ".join(sorted(p.name for p in shipped_dir.glob("*.yaml"))) or f"none, {shipped_dir} is empty"
    raise ConfigError(f"config file {path} does not exist and is not a shipped config (shipped: {names})")


# The section of a YAML config that only `most demo` reads (DemoConfig); the Config of the same file
# leaves it out, so `most train --config demo.yaml` trains the demo's model.
DEMO_SECTION = "demo"


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                cls: type = Config):
    """Loads YAML overrides from `path`, applies `--set` style overrides, validates."""
    data = _read_yaml(resolve_config_path(path)) if path is not None else {}
    if cls is Config:
        if DEMO_SECTION in parse_overrides(overrides):
            raise ConfigError(f"{DEMO_SECTION}.*: `most demo` settings; this command does not read them")
        data.pop(DEMO_SECTION, None)
    cfg = from_dict(cls, apply_overrides(data, overrides))
    cfg.validate()
    return cfg


def load_demo_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
                     demo_class: type = DemoConfig) -> tuple[Config, Any]:
    """(Config, demo settings) from one YAML file: its `demo:` section (a `demo_class`: DemoConfig
    for `most demo`, U2ppDemoConfig for `most demo u2pp`) and the rest; `--set demo.x=...`
    overrides reach the demo settings, every other override the Config."""
    data = apply_overrides(_read_yaml(resolve_config_path(path)), overrides)
    demo = from_dict(demo_class, data.pop(DEMO_SECTION, None), f"{DEMO_SECTION}.")
    demo.validate(DEMO_SECTION)
    return config_from_dict(data), demo


def config_from_dict(data: dict[str, Any], cls: type = Config):
    if cls is Config and DEMO_SECTION in data:
        # Checkpoints written while DemoConfig was a field of Config store a `demo` section; it only
        # ever sized `most demo`'s corpus, so dropping it loads them unchanged.
        data = {k: v for k, v in data.items() if k != DEMO_SECTION}
    cfg = from_dict(cls, data)
    cfg.validate()
    return cfg
