"""One process of a multi-process training run on a fixed global batch stream (used by
tests/test_parallel_multihost.py through launch/local.sh).

Usage: python tests/multihost_worker.py RUN_DIR MESH STEPS STOP_AFTER [--resume]

Every process builds the same global batches (SyntheticBatches) and feeds only its own block of
rows, so runs with any number of processes see the same global batch at every step.
"""

import sys

from most_jax import parallel, sharding

sharding.initialize_distributed()

import jax  # noqa: E402

from most_jax.config import load_config  # noqa: E402
from most_jax.train.loop import run_training  # noqa: E402
from train_batches import SyntheticBatches  # noqa: E402


class ProcessRows:
    """This process's contiguous block of rows of each global batch."""

    def __init__(self, source: SyntheticBatches):
        self.source = source
        per = source.batch_size // jax.process_count()
        self.rows = slice(jax.process_index() * per, (jax.process_index() + 1) * per)

    def __next__(self):
        return {k: v[self.rows] for k, v in next(self.source).items()}

    def get_state(self):
        return self.source.get_state()

    def set_state(self, state):
        self.source.set_state(state)


def main(run_dir: str, mesh: str, steps: str, stop_after: str, *flags: str) -> None:
    cfg = load_config("configs/most_tiny.yaml", [
        "model.num_layers=2", "model.moe.capacity_factor=8.0", "data.batch_size=8", "data.seq_len=16",
        f"train.steps={steps}", "train.log_every=1", "train.checkpoint_every=2", "train.warmup_steps=0",
        "train.async_checkpoint=false", *sharding.parse_mesh_arg(mesh)])
    device_mesh = sharding.make_mesh(cfg.mesh)
    parallel.check_config(cfg, device_mesh)
    batches = ProcessRows(SyntheticBatches(cfg.model.vocab, cfg.data.batch_size, cfg.data.seq_len, seed=7))
    run_training(cfg, run_dir, batches, resume="--resume" in flags, stop_after=int(stop_after), mesh=device_mesh,
                 param_shardings=parallel.param_sharding_fn(cfg.model))


if __name__ == "__main__":
    main(*sys.argv[1:])
