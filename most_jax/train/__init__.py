"""MoST training: optimizer.py (AdamW, schedule, decay mask), loss.py, state.py (train state and
sharded init), step.py (the pure jitted step), loop.py (`run_training`) and metrics.py."""
