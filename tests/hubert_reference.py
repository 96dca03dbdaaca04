"""Test-only references for HuBERT: tiny random transformers HubertModels of the three variants
(base-like, large-like, 25 Hz-like), saved with save_pretrained, and their per-utterance hidden states."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import HubertConfig, HubertModel

# Odd widths where transformers allows them; the conv stack keeps HuBERT's shape, scaled down.
TINY = dict(hidden_size=20, num_hidden_layers=2, num_attention_heads=4, intermediate_size=27, conv_dim=(11,) * 7,
            num_conv_pos_embeddings=10, num_conv_pos_embedding_groups=5)
VARIANTS = {
    "base": dict(feat_extract_norm="group", do_stable_layer_norm=False),
    "large": dict(feat_extract_norm="layer", do_stable_layer_norm=True, num_conv_pos_embeddings=9),
    # mhubert-base-25hz: one more stride-2 conv (640 samples per frame) and the batch-norm positional conv
    "25hz": dict(feat_extract_norm="group", conv_pos_batch_norm=True, conv_dim=(11,) * 8,
                 conv_kernel=(10, 3, 3, 3, 3, 2, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2, 2)),
}


def tiny_hubert(variant: str, seed: int = 0, **overrides) -> HubertModel:
    """A HubertModel in eval mode with weights large enough that every norm, bias and transpose shows."""
    cfg = HubertConfig(**{**TINY, **VARIANTS[variant], **overrides}, attn_implementation="eager")
    torch.manual_seed(seed)
    model = HubertModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias") or name == "masked_spec_embed":
                p.copy_(0.2 * torch.randn_like(p))
            elif name.endswith("original0") or name.endswith("weight_g"):
                p.copy_(0.5 + torch.rand_like(p))
            elif p.ndim >= 2:
                p.copy_(torch.randn_like(p) / np.sqrt(p[0].numel()))
        bn = model.encoder.pos_conv_embed.batch_norm
        if bn is not None:
            bn.running_mean.copy_(0.3 * torch.randn_like(bn.running_mean))
            bn.running_var.copy_(0.5 + torch.rand_like(bn.running_var))
    return model


def save_tiny(path: Path, variant: str, seed: int = 0, **overrides) -> HubertModel:
    model = tiny_hubert(variant, seed, **overrides)
    model.save_pretrained(path)
    return model


def hf_hidden_states(model: HubertModel, waveform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hidden states [L + 1, T, D], last_hidden_state [T, D]) of one utterance run alone."""
    with torch.no_grad():
        out = model(torch.from_numpy(waveform[None].astype(np.float32)), output_hidden_states=True)
    return np.stack([h[0].numpy() for h in out.hidden_states]), out.last_hidden_state[0].numpy()


def waveforms(lengths: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A right-padded batch of random 'speech' (padding filled with large noise, which must not leak)."""
    rng = np.random.default_rng(seed)
    wave = rng.normal(0, 3.0, (len(lengths), max(lengths))).astype(np.float32)
    for b, n in enumerate(lengths):
        wave[b, :n] = rng.normal(0, 0.5, n) * np.sin(np.arange(n) / 17.0)
    return wave, np.asarray(lengths, np.int32)
