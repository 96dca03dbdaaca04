"""MoST training: AdamW optimizer, loss, one pure jitted train step, state, loop and metrics."""

from most_jax.train.loop import NonFiniteError, RunResult, run_training

__all__ = ["NonFiniteError", "RunResult", "run_training"]
