"""The seam between the generic machinery and a model family.

The trainer, checkpoints, mesh placement, AOT compilation and parameter I/O see a model only
through a `Family` (nanodo's `get_model_and_loss(cfg)`): it builds the module from its config
section, names the step batch, computes the loss, summarises its metrics, names the parameters the
optimizer must leave alone and the MoE layers the mesh must fit. `get_family(model_cfg)` picks the
family by `model_cfg.family`; each family's module is imported only when asked for, so importing
the trainer imports no model.

A family with two optimizers (a GAN vocoder) fits the same shape: `phases` names top-level parts
of its parameters (e.g. discriminators, generator) that the step updates one after another, each by
its own optimizer on gradients taken after the parts before it moved; the loss reads the phase from
its LossContext and stops the gradient into the other half.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Iterator, NamedTuple

import jax
import numpy as np
from flax import nnx

from most_jax import config as config_lib
from most_jax.config import Config, ConfigError, MoEConfig

Path_ = tuple[str, ...]


class LossContext(NamedTuple):
    """What one micro-batch's loss needs to know about the whole step (see train/step.py)."""

    totals: Any  # family.step_totals(the whole step batch), e.g. its number of loss tokens
    micro_batches: int  # how many micro-batches the step's gradients are summed over
    phase: str | None = None  # the part of the parameters being updated (Family.phases), None: all


def _nothing_frozen(_path: Path_) -> bool:
    return False


def _no_content_check(_batch: dict[str, np.ndarray], _model_cfg: Any) -> None:
    return None


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family, as the generic code sees it.

    build(model_cfg, rngs): the nnx.Module (parameters only: nnx.Param leaves).
    batch_spec(cfg): {key: ShapeDtypeStruct} of the global step batch (rows first).
    step_totals(batch): step-wide normalisers computed once on the whole batch (a pytree).
    loss_fn(model, micro_batch, rng, ctx: LossContext): (objective, sums); the objectives of the
        micro-batches add up to the step objective, and every entry of `sums` (a flat dict of
        arrays) is additive over micro-batches and steps.
    summarise(cfg, window_sums, finite_steps): log-record entries of a window (JSON-ready; None
        when unknown) from the float64 sums of `sums` over its finite steps.
    count_tokens(batch): what tokens_per_s counts (a scalar array).
    check_batch(host_batch, model_cfg): content checks beyond keys and shapes (e.g. id ranges);
        raises ValueError naming the key.
    frozen(path): True for a parameter leaf the optimizer never updates nor decays.
    moe_layers(model_cfg): ((config prefix, MoEConfig), ...) of the MoE layers, for mesh checks.
    train_flops(cfg): analytic FLOPs of one training step, or None when the family has no formula.
    batches(cfg): the training batch iterator of `most train` (None: the family has no pipeline).
    phases: top-level parameter subtrees updated in this order within one step, each with its own
        optimizer state and clipping, each phase's gradients taken with the earlier phases' updates
        applied; the step reports the sum of the phases' objectives and of their `sums` (so a phase
        returns zeros for the entries it does not compute). Empty: one update of everything.

    batch_specs(cfg): every step batch shape the pipeline yields (length buckets), each a batch_spec;
        the trainer compiles one step per shape met. None: batch_spec(cfg) alone.
    data_params(cfg): {parameter path: array} a fresh run takes from the training data rather than
        from the initialiser (U2++: the global CMVN statistics). None: nothing.
    eval_batches(cfg): the held-out host batches (this process's rows, a batch_spec shape) of
        data.eval_records that train.eval_every scores, the same list at every call. None: the
        family has no held-out evaluation in the trainer.
    """

    name: str
    config_class: type
    build: Callable[[Any, nnx.Rngs], nnx.Module]
    batch_spec: Callable[[Config], dict[str, jax.ShapeDtypeStruct]]
    step_totals: Callable[[dict[str, jax.Array]], Any]
    loss_fn: Callable[[nnx.Module, dict[str, jax.Array], jax.Array, LossContext], tuple[jax.Array, dict]]
    summarise: Callable[[Config, dict[str, np.ndarray], int], dict[str, Any]]
    count_tokens: Callable[[dict[str, jax.Array]], jax.Array]
    moe_layers: Callable[[Any], tuple[tuple[str, MoEConfig], ...]]
    check_batch: Callable[[dict[str, np.ndarray], Any], None] = _no_content_check
    frozen: Callable[[Path_], bool] = _nothing_frozen
    train_flops: Callable[[Config], float] | None = None
    batches: Callable[[Config], Iterator[dict[str, np.ndarray]]] | None = None
    phases: tuple[str, ...] = ()

    batch_specs: Callable[[Config], tuple[dict[str, jax.ShapeDtypeStruct], ...]] | None = None
    data_params: Callable[[Config], dict[Path_, np.ndarray]] | None = None
    eval_batches: Callable[[Config], list[dict[str, np.ndarray]]] | None = None


# Built-in families: name -> the module defining FAMILY, imported on first use.
_MODULES = {
    "most": "most_jax.models.most_family",
    "u2pp": "most_jax.models.u2pp.family",
    "vocoder": "most_jax.models.vocoder.family",
    "hubert": "most_jax.models.hubert.family",
}
_LOADED: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Makes a family defined outside the table (a test's, a plug-in's) known by its name, config
    sections included; registering the same name twice is an error unless it is the same family."""
    known = _LOADED.get(family.name)
    if known is not None and known is not family:
        raise ValueError(f"model family {family.name!r} is already registered")
    if family.name in _MODULES and known is None:
        raise ValueError(f"model family {family.name!r} is built in ({_MODULES[family.name]})")
    config_lib.register_model_section(family.name, family.config_class)
    _LOADED[family.name] = family
    return family


def family_named(name: str) -> Family:
    if name in _LOADED:
        return _LOADED[name]
    if name not in _MODULES:
        raise ConfigError(f"model.family: unknown family {name!r}; known: {', '.join(sorted({*_MODULES, *_LOADED}))}")
    module_name = _MODULES[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is None or not module_name.startswith(e.name):
            raise
        raise ConfigError(f"model.family: family {name} is not available ({module_name} is not part of "
                          "this installation)") from None
    family = module.FAMILY
    if family.name != name:
        raise ValueError(f"{module_name}.FAMILY is named {family.name!r}, the table says {name!r}")
    _LOADED[name] = family
    return family


def get_family(model_cfg: Any) -> Family:
    """The family of a model config section (any of the config classes with a `family` field)."""
    family = family_named(model_cfg.family)
    if not isinstance(model_cfg, family.config_class):
        raise ConfigError(f"model.family: {model_cfg.family!r} needs a {family.config_class.__name__} section, "
                          f"got {type(model_cfg).__name__}")
    return family


def build_model(model_cfg: Any, seed: int) -> nnx.Module:
    return get_family(model_cfg).build(model_cfg, nnx.Rngs(seed))


def abstract_model(model_cfg: Any, seed: int = 0) -> nnx.Module:
    """The model with ShapeDtypeStructs for arrays (eval_shape): allocates nothing."""
    return nnx.eval_shape(lambda: build_model(model_cfg, seed))


def step_batch_specs(cfg: Config) -> tuple[dict[str, jax.ShapeDtypeStruct], ...]:
    """The batch shapes a training step must accept (see Family.batch_specs)."""
    family = get_family(cfg.model)
    return family.batch_specs(cfg) if family.batch_specs is not None else (family.batch_spec(cfg),)


def with_data_params(cfg: Config, params: Any) -> Any:
    """`params` with the family's data-derived leaves (Family.data_params) put in, shapes checked."""
    family = get_family(cfg.model)
    values = {} if family.data_params is None else dict(family.data_params(cfg))
    if not values:
        return params
    unused = set(values)

    def put(path, leaf):
        names = _path_names(path)
        if names not in values:
            return leaf
        unused.discard(names)
        value = np.asarray(values[names])
        if value.shape != tuple(leaf.shape):
            raise ValueError(f"{'.'.join(names)}: the data gives shape {value.shape}, the model has {tuple(leaf.shape)}")
        return value.astype(leaf.dtype)

    out = jax.tree_util.tree_map_with_path(put, params)
    if unused:
        raise ValueError(f"model family {family.name!r}: data parameters {sorted(unused)} are not in the model")
    return out


def frozen_mask(model_cfg: Any, params: Any) -> Any | None:
    """Same tree as `params` with True on the family's frozen leaves, or None when none is frozen."""
    family = get_family(model_cfg)
    mask = jax.tree_util.tree_map_with_path(lambda path, _: family.frozen(_path_names(path)), params)
    return mask if any(jax.tree.leaves(mask)) else None


def _path_names(path) -> Path_:
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
