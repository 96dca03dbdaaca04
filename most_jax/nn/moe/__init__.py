"""Mixture-of-Experts FFN: MAMoE or WeNet top-k routing, SwiGLU or WeNet FFN experts."""

from most_jax.nn.moe.layer import MoE, MoEStats

__all__ = ["MoE", "MoEStats"]
