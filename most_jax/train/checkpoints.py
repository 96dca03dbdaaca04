"""Training checkpoints: an Orbax CheckpointManager over RUN_DIR/checkpoints.

Layout: one directory per step, `RUN_DIR/checkpoints/<step>/<item>/`, with the items

    params      the parameter pytree, nnx.state(model, nnx.Param).to_pure_dict() (Orbax standard)
    opt_state   the optax state (Orbax standard)
    counters    {"step", "skipped", "nonfinite_streak"} int32 scalars
    rng         {"key_data": uint32 key data of the training RNG}
    data_iter   the data iterator's get_state() (JSON)
    config      most_jax.config.to_dict(cfg) (JSON)

so `params` + `config` read like a params checkpoint (checkpoint/params_io.py loads a manager root
or a step directory). Saves are asynchronous: `save` returns once the arrays are copied off the
device, and files are written by a background thread. Orbax writes each step into a temporary
directory and renames it when complete, so a save killed half-way never becomes the latest step;
its leftovers are removed (in the background) the next time a manager opens the directory, so open
one manager per directory at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from most_jax.checkpoint.params_io import CheckpointError
from most_jax.config import Config, to_dict
from most_jax.train.state import TrainState

ITEMS = ("params", "opt_state", "counters", "rng", "data_iter", "config")
_COUNTERS = ("step", "skipped", "nonfinite_streak")


class TrainCheckpointManager:
    def __init__(self, directory: str | Path, *, keep: int, async_save: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
                                               cleanup_tmp_directories=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, state: TrainState, *, data_state: Any, cfg: Config) -> int:
        """Starts saving `state` under its step (a no-op if that step is already saved); returns the step."""
        step = int(jax.device_get(state.step))
        if step in self._manager.all_steps():
            return step
        self._manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            opt_state=ocp.args.StandardSave(state.opt_state),
            counters=ocp.args.StandardSave({name: getattr(state, name) for name in _COUNTERS}),
            rng=ocp.args.StandardSave({"key_data": state.rng}),
            data_iter=ocp.args.JsonSave(data_state),
            config=ocp.args.JsonSave(to_dict(cfg)),
        ))
        return step

    def read_config(self, step: int) -> dict[str, Any]:
        return self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config

    def restore(self, step: int, target: TrainState) -> tuple[TrainState, Any]:
        """(state, data iterator state) of `step`; `target` holds ShapeDtypeStructs with shardings,
        so every array is read straight into its place."""
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                params=ocp.args.StandardRestore(target.params),
                opt_state=ocp.args.StandardRestore(target.opt_state),
                counters=ocp.args.StandardRestore({name: getattr(target, name) for name in _COUNTERS}),
                rng=ocp.args.StandardRestore({"key_data": target.rng}),
                data_iter=ocp.args.JsonRestore(),
            ))
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise CheckpointError(f"{self.directory / str(step)}: cannot restore the train state: {e}") from e
        state = TrainState(params=restored.params, opt_state=restored.opt_state, rng=restored.rng["key_data"],
                           **restored.counters)
        return state, restored.data_iter

    def wait(self) -> None:
        """Blocks until every started save is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
