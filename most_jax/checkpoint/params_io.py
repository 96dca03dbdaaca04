"""Parameter checkpoints: the model's parameters plus the config that built them.

Layout. A checkpoint directory is one *step directory* in the layout of
`orbax.checkpoint.CheckpointManager`, holding at least two items:

    STEP/
      params/   Orbax PyTree checkpoint of the parameter pytree: the nested dict
                `nnx.state(model, nnx.Param).to_pure_dict()` (layer stacks keep their leading
                layer axis; keys are the module attribute names, e.g. moe_layers/attn/q_proj/kernel)
      config/   Orbax JsonSave of `most_jax.config.to_dict(cfg)` (the whole Config)

`save_params` writes exactly that (via a temporary sibling directory renamed on success, so an
interrupted write never looks complete); leaves may be arrays or `StreamedArray`s (streamed.py),
whose data is produced slice by slice while it is written, so a converter never holds the model. A trainer writes the same items inside its manager root,
next to whatever else it keeps (optimizer state, data iterator, ...):

    mgr = ocp.CheckpointManager(ROOT)
    mgr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                           config=ocp.args.JsonSave(to_dict(cfg)), ...))

`load_checkpoint` / `restore_model` accept a step directory (ours or a trainer's ROOT/<step>), a
manager root (its latest complete step) or a training run directory holding the root `checkpoints/`,
and read only the parameters (a trainer's optimizer state is left on disk). Each array is read
straight into the sharding asked for (any mesh, whatever mesh wrote it) or onto one device.
Restoring checks the stored parameter names and shapes against the model built from the stored
config and names every missing, unexpected or misshapen one.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import jax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding
from flax import nnx

from most_jax import config as config_lib
from most_jax.atomic import partial_directory, sync_directory, sync_tree
from most_jax.checkpoint.param_tree import abstract_params, flatten, logical_specs, unflatten
from most_jax.checkpoint.streamed import pytree_handler, save_args_for
from most_jax.models.family import abstract_model
from most_jax.sharding import logical_to_spec

PARAMS_ITEM = "params"
CONFIG_ITEM = "config"
RUN_CHECKPOINTS = "checkpoints"  # the manager root inside a training run directory (train/ writes it)


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or does not match its config (names the culprit)."""


def save_params(path: str | Path, cfg: config_lib.Config, params: dict,
                progress: Callable[[str], None] | None = None, compress: bool = True) -> Path:
    """Writes `params` (nested dict of arrays or StreamedArrays matching cfg.model's model) and `cfg`
    to the step directory `path`; `progress` hears about each layer slice streamed; `compress`
    stores the arrays zstd-compressed."""
    path = Path(path)
    if path.exists():
        raise CheckpointError(f"{path}: already exists; choose a new output directory")
    expected = abstract_params(cfg.model)
    check_tree(expected, {p: (v.shape, v.dtype) for p, v in flatten(params)}, f"parameters to save at {path}",
                check_dtype=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_directory(path, progress)
    try:
        checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler(**{
            PARAMS_ITEM: pytree_handler(progress, compress), CONFIG_ITEM: ocp.JsonCheckpointHandler()}))
        checkpointer.save(partial, args=ocp.args.Composite(**{
            PARAMS_ITEM: ocp.args.PyTreeSave(params, save_args=jax.tree.map(save_args_for, params)),
            CONFIG_ITEM: ocp.args.JsonSave(config_lib.to_dict(cfg))}))
        checkpointer.close()
        sync_tree(partial)  # chunk files are written unsynced (zarr_chunks.py); one pass covers all
        partial.rename(path)
        sync_directory(path.parent)
    finally:
        if partial.exists():
            shutil.rmtree(partial)
    return path


def step_dir(path: str | Path) -> Path:
    """`path` itself when it is a step directory, else the latest complete step of a manager root
    (`path`, or `path/checkpoints` for a training run directory). Absolute, because Orbax reads no
    metadata through a relative path."""
    path = Path(path).absolute()
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if (path / PARAMS_ITEM).is_dir():
        return path
    if (path / RUN_CHECKPOINTS).is_dir():
        path = path / RUN_CHECKPOINTS
    # Orbax finalises a step by renaming its temporary directory to the bare step number.
    steps = sorted(int(p.name) for p in path.iterdir() if p.name.isdigit() and (p / PARAMS_ITEM).is_dir())
    if not steps:
        raise CheckpointError(f"{path}: neither a checkpoint step (no '{PARAMS_ITEM}' item) nor a checkpoint "
                              f"manager root (no numbered step directory holding '{PARAMS_ITEM}')")
    return path / str(steps[-1])


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> config_lib.Config:
    """The Config stored with a checkpoint, with `--set` style overrides applied."""
    step = step_dir(path)
    if not (step / CONFIG_ITEM).is_dir():
        raise CheckpointError(f"{step}: no '{CONFIG_ITEM}' item, so the model shape is unknown")
    data = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(step / CONFIG_ITEM, args=ocp.args.JsonRestore())
    try:
        return config_lib.config_from_dict(config_lib.apply_overrides(data, overrides))
    except config_lib.ConfigError as e:
        raise CheckpointError(f"{step / CONFIG_ITEM}: {e}") from None


def load_checkpoint(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
                    mesh: Mesh | None = None) -> tuple[config_lib.Config, dict]:
    """(Config, nested dict of parameters), stored dtypes cast to the model's (MoST: `model.param_dtype`).

    With `mesh`, each parameter is read straight into its sharding under sharding.py's rules
    (whatever mesh wrote it); without, onto the first local device."""
    cfg = load_config(path, overrides)
    return cfg, _restore_params(step_dir(path), cfg, mesh)


def restore_model(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
                  mesh: Mesh | None = None) -> tuple[config_lib.Config, nnx.Module]:
    """(Config, the model of its family with the checkpoint's parameters), without ever
    initialising random weights."""
    cfg, params = load_checkpoint(path, overrides, mesh)
    graphdef, state = nnx.split(abstract_model(cfg.model))
    nnx.replace_by_pure_dict(state, params)
    return cfg, nnx.merge(graphdef, state)


def _restore_params(step: Path, cfg: config_lib.Config, mesh: Mesh | None) -> dict:
    checkpointer = ocp.StandardCheckpointer()
    tree = checkpointer.metadata(step / PARAMS_ITEM).item_metadata.tree
    stored = {p: (m.shape, m.dtype) for p, m in flatten(tree)}
    expected = abstract_params(cfg.model)
    check_tree(expected, stored, f"checkpoint {step / PARAMS_ITEM}", check_dtype=False)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    logical = logical_specs(cfg.model)

    def sharding(p: tuple[str, ...], shape: tuple[int, ...]) -> jax.sharding.Sharding:
        if mesh is None:
            return device
        return NamedSharding(mesh, logical_to_spec(tuple(logical[p]), shape, mesh, what=".".join(p)))

    # Each leaf in the dtype the model builds it with (for MoST: model.param_dtype throughout).
    target = unflatten({p: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding(p, tuple(s.shape)))
                        for p, s in expected.items()})
    return checkpointer.restore(step / PARAMS_ITEM, target)


def check_tree(expected: dict, found: dict, what: str, *, check_dtype: bool) -> None:
    missing = sorted(".".join(p) for p in set(expected) - set(found))
    unexpected = sorted(".".join(p) for p in set(found) - set(expected))
    wrong = [f"{'.'.join(p)} has shape {list(found[p][0])}, the model needs {list(expected[p].shape)}"
             for p in sorted(set(found) & set(expected)) if tuple(found[p][0]) != tuple(expected[p].shape)]
    if check_dtype:
        wrong += [f"{'.'.join(p)} has dtype {found[p][1]}, the config says {expected[p].dtype}"
                  for p in sorted(set(found) & set(expected)) if found[p][1] != expected[p].dtype]
    problems = ([f"missing parameters: {', '.join(missing)}"] if missing else []) + \
               ([f"unexpected parameters: {', '.join(unexpected)}"] if unexpected else []) + wrong
    if problems:
        raise CheckpointError(f"{what} do not match the model: " + "; ".join(problems))


__all__ = ["CheckpointError", "save_params", "step_dir", "load_config", "load_checkpoint", "restore_model", "check_tree"]
