"""Mixture-of-Experts FFN with modality-aware routing (MAMoE)."""

from most_jax.nn.moe.layer import MoE, MoEStats

__all__ = ["MoE", "MoEStats"]
