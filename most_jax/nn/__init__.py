"""Shared layers (norms, rope, attention, MLP, MoE) that know no model family.

Einsum letters and shape suffixes (`x_BTD`) follow the axis legend in most_jax/AXES.md.
"""
