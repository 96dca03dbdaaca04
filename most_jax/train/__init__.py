"""Training, for any model family (models/family.py): optimizer.py (AdamW, schedule, decay mask,
frozen leaves), state.py (train state and sharded init), step.py (the pure jitted step),
loop.py (`run_training`), checkpoints.py (the run's checkpoint manager) and metrics.py."""
