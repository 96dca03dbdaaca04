"""Model families built on the shared layers of most_jax.nn.

Einsum letters and shape suffixes (`x_BTD`) follow the axis legend in most_jax/AXES.md.
"""
