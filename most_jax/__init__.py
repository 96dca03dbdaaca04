"""most_jax: MoST (speech+text LLM with modality-aware MoE) and U2++ MoE in JAX/Flax NNX."""

__version__ = "0.1.0"
