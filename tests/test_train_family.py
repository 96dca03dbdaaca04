"""The family seam: a toy family defined here (a noisy linear regression with its own batch spec,
loss, metrics and frozen CMVN-style leaves) trained by train.loop with checkpoints and an exact
resume, so the trainer provably knows no family; the optimizer's frozen leaves; and no generic
module importing the MoST model."""

from __future__ import annotations

import ast
import dataclasses
import io
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from most_jax.checkpoint.params_io import load_checkpoint, restore_model
from most_jax.config import Config, ConfigError, DataConfig, MeshConfig, TrainConfig, config_from_dict, to_dict
from most_jax.models import family as family_lib
from most_jax.models.family import Family, LossContext
from most_jax.train.loop import CHECKPOINT_DIR, run_training
from most_jax.train.optimizer import learning_rate_schedule, make_optimizer, weight_decay_mask

ROOT = Path(__file__).resolve().parents[1]
I = 3  # regression inputs (the legend's I: input feature bins)


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    family: str = "toy"
    noise: float = 0.05  # std of the input noise drawn from the step's rng

    def validate(self, prefix: str = "model") -> None:
        if self.noise < 0:
            raise ConfigError(f"{prefix}.noise: must be >= 0")


class GlobalCMVN(nnx.Module):
    def __init__(self):
        self.mean = nnx.Param(jnp.full((I,), 0.5, jnp.float32))
        self.istd = nnx.Param(jnp.full((I,), 2.0, jnp.float32))


class Toy(nnx.Module):
    def __init__(self, cfg: ToyConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.global_cmvn = GlobalCMVN()
        self.w_I = nnx.Param(0.1 * jax.random.normal(rngs.params(), (I,), jnp.float32))
        self.b = nnx.Param(jnp.zeros((), jnp.float32))

    def __call__(self, x_BI, rng):
        x_BI = x_BI + self.cfg.noise * jax.random.normal(rng, x_BI.shape)
        # No stop_gradient on purpose: only the optimizer's frozen mask keeps the statistics still.
        h_BI = (x_BI - self.global_cmvn.mean[None]) * self.global_cmvn.istd[None]
        return jnp.einsum("BI,I->B", h_BI, self.w_I[...]) + self.b[...]


def _loss(model: Toy, batch, rng, ctx: LossContext):
    err_B = model(batch["x"], rng) - batch["y"]
    sse = jnp.sum(err_B ** 2)
    return sse / ctx.totals, {"sse": sse, "rows": jnp.asarray(err_B.shape[0], jnp.float32)}


def _summarise(_cfg, sums, n):
    return {"mse": float(sums["sse"] / sums["rows"]) if n else None}


def _check_batch(batch, _model_cfg):
    if not np.isfinite(batch["x"]).all():
        raise ValueError("batch['x'] is not finite")


TOY = family_lib.register(Family(
    name="toy", config_class=ToyConfig, build=Toy,
    batch_spec=lambda cfg: {"x": jax.ShapeDtypeStruct((cfg.data.batch_size, I), np.float32),
                            "y": jax.ShapeDtypeStruct((cfg.data.batch_size,), np.float32)},
    step_totals=lambda batch: jnp.asarray(batch["y"].shape[0], jnp.float32),
    loss_fn=_loss, summarise=_summarise, count_tokens=lambda batch: jnp.asarray(batch["y"].shape[0], jnp.float32),
    moe_layers=lambda _cfg: (), check_batch=_check_batch, frozen=lambda path: path[:1] == ("global_cmvn",)))

TRUE_W, TRUE_B = np.array([1.5, -2.0, 0.7], np.float32), 0.3


class Regression:
    """Batch i is a pure function of i; the iterator state is the index."""

    def __init__(self, rows):
        self.rows, self.index = rows, 0

    def __next__(self):
        rng = np.random.default_rng(self.index)
        self.index += 1
        x = rng.normal(size=(self.rows, I)).astype(np.float32)
        return {"x": x, "y": (2.0 * (x - 0.5) @ TRUE_W + TRUE_B).astype(np.float32)}

    def get_state(self):
        return {"index": self.index}

    def set_state(self, state):
        self.index = int(state["index"])


def _cfg(**train):
    return Config(model=ToyConfig(), data=DataConfig(batch_size=8),
                  train=TrainConfig(**{"steps": 30, "micro_batches": 2, "lr": 0.2, "warmup_steps": 1, "min_lr_ratio": 0.01,
                                       "schedule": "cosine", "log_every": 1, "checkpoint_every": 8,
                                       "async_checkpoint": False, **train}))


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_trainer_trains_a_family_it_does_not_know_and_resumes_exactly(tmp_path):
    cfg = _cfg()
    cfg.validate()
    straight = run_training(cfg, tmp_path / "straight", Regression(8), console=io.StringIO())
    assert straight.step == 30
    records = _records(tmp_path / "straight")
    assert [r["step"] for r in records] == list(range(1, 31))
    assert records[-1]["mse"] < 0.05 * records[0]["mse"], [r["mse"] for r in records]
    assert records[-1]["loss"] == pytest.approx(records[-1]["mse"], rel=1e-5)  # the objective is the mean
    # The checkpoint explains itself: its config names the family, and restores the toy model.
    stored_cfg, params = load_checkpoint(tmp_path / "straight" / CHECKPOINT_DIR)
    assert stored_cfg == cfg
    _, model = restore_model(tmp_path / "straight" / CHECKPOINT_DIR)
    assert isinstance(model, Toy)
    # Frozen leaves: still the initial statistics, bitwise, although their gradient is not zero
    # and weight decay is on; the weights moved towards the truth.
    np.testing.assert_array_equal(params["global_cmvn"]["mean"], np.full(I, 0.5, np.float32))
    np.testing.assert_array_equal(params["global_cmvn"]["istd"], np.full(I, 2.0, np.float32))
    np.testing.assert_allclose(params["w_I"], TRUE_W, atol=0.1)

    # Stopped after step 12 (between checkpoints at 8 and 16), then resumed: identical losses and
    # parameters, the rng-driven input noise included.
    resumed = tmp_path / "resumed"
    first = run_training(cfg, resumed, Regression(8), stop_after=12, console=io.StringIO())
    assert (first.step, first.stopped_by) == (12, "stop_after")
    run_training(cfg, resumed, Regression(8), resume=True, console=io.StringIO())
    assert [r["loss"] for r in _records(resumed)] == [r["loss"] for r in records]
    _, resumed_params = load_checkpoint(resumed / CHECKPOINT_DIR)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(resumed_params)):
        np.testing.assert_array_equal(a, b)


def test_a_batch_off_the_family_spec_is_refused_by_key(tmp_path):
    class Short(Regression):
        def __next__(self):
            batch = super().__next__()
            return {"x": batch["x"][:, :2], "y": batch["y"]}

    class Labels(Regression):
        def __next__(self):
            return {**super().__next__(), "y": np.zeros(8, np.int64)}

    with pytest.raises(ValueError, match=r"batch\['x'\] has shape \(8, 2\), expected \(8, 3\)"):
        run_training(_cfg(steps=2), tmp_path / "short", Short(8), console=io.StringIO())
    with pytest.raises(ValueError, match=r"batch\['y'\] holds int64, the model family's batch spec says float32"):
        run_training(_cfg(steps=2), tmp_path / "labels", Labels(8), console=io.StringIO())

    class Holes(Regression):  # right shapes, content the family's own check refuses
        def __next__(self):
            batch = super().__next__()
            batch["x"][0, 0] = np.nan
            return batch

    with pytest.raises(ValueError, match=r"batch\['x'\] is not finite"):
        run_training(_cfg(steps=2), tmp_path / "holes", Holes(8), console=io.StringIO())


def test_mesh_checks_and_hf_export_ask_the_family(tmp_path):
    from most_jax import parallel, sharding
    from most_jax.checkpoint.hf_export import export_hf
    from most_jax.checkpoint.params_io import CheckpointError, save_params

    with pytest.raises(sharding.MeshError, match=r"mesh.expert=2, but the model has no MoE layers"):
        parallel.check_model_fits(ToyConfig(), sharding.make_mesh(MeshConfig(data=4, expert=2)))
    parallel.check_model_fits(ToyConfig(), sharding.make_mesh(MeshConfig(data=8)))
    cfg = _cfg()
    params = jax.device_get(nnx.to_pure_dict(nnx.state(Toy(cfg.model, nnx.Rngs(0)), nnx.Param)))
    save_params(tmp_path / "toy", cfg, params)
    with pytest.raises(CheckpointError, match="a toy checkpoint; Hugging Face export is for MoST"):
        export_hf(tmp_path / "toy", tmp_path / "hf")


def test_model_section_is_chosen_by_family():
    cfg = _cfg()
    data = to_dict(cfg)
    assert data["model"] == {"family": "toy", "noise": 0.05}
    assert config_from_dict(data) == cfg
    with pytest.raises(ConfigError, match=r"model.noise: must be >= 0"):
        config_from_dict({**data, "model": {"family": "toy", "noise": -1}})
    with pytest.raises(ConfigError, match=r"model.family: unknown model family 'nope'"):
        config_from_dict({**data, "model": {"family": "nope"}})


def test_frozen_leaves_neither_move_nor_decay_nor_count_in_clipping():
    params = {"global_cmvn": {"mean": jnp.ones(3), "istd": jnp.ones(3)}, "w": jnp.ones((2, 3)) * 5}
    grads = {"global_cmvn": {"mean": jnp.full(3, 100.0), "istd": jnp.full(3, -100.0)}, "w": jnp.ones((2, 3))}
    frozen = {"global_cmvn": {"mean": True, "istd": True}, "w": False}
    cfg = TrainConfig(weight_decay=0.5, clip_norm=1.0, warmup_steps=0, schedule="constant", lr=0.1)
    tx = make_optimizer(cfg, params, frozen=frozen)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert not np.any(updates["global_cmvn"]["mean"]) and not np.any(updates["global_cmvn"]["istd"])
    # The unfrozen leaf moves exactly as if the frozen gradients had been zero from the start.
    plain = make_optimizer(cfg, params)
    zeroed = {**grads, "global_cmvn": jax.tree.map(jnp.zeros_like, grads["global_cmvn"])}
    expected, _ = plain.update(zeroed, plain.init(params), params)
    np.testing.assert_array_equal(updates["w"], expected["w"])
    # Without frozen leaves the optimizer state keeps the layout checkpoints already hold (the
    # optimizer as it was built before families could freeze leaves).
    reference = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
        learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=0.5,
        mask=weight_decay_mask(params, decay_embeddings=False)))
    assert jax.tree.structure(plain.init(params)) == jax.tree.structure(reference.init(params))


def test_an_absent_family_module_says_so(monkeypatch):
    monkeypatch.setitem(family_lib._MODULES, "ghost", "most_jax.models.ghost.family")
    with pytest.raises(ConfigError, match="model.family: family ghost is not available"):
        family_lib.family_named("ghost")
    with pytest.raises(ConfigError, match="model.family: unknown family 'nope'"):
        family_lib.family_named("nope")


GENERIC = ["most_jax/train", "most_jax/checkpoint", "most_jax/aot.py", "most_jax/parallel.py", "most_jax/sharding.py"]
MOST_MODULES = ("most_jax.models.most", "most_jax.models.most_family", "most_jax.models.most_loss")


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_generic_modules_do_not_import_a_family():
    files = [f for g in GENERIC for f in ((ROOT / g).glob("*.py") if (ROOT / g).is_dir() else [ROOT / g])]
    assert len(files) > 20
    offenders = {str(f.relative_to(ROOT)): sorted(n for n in _imports(f) if n.startswith(MOST_MODULES))
                 for f in files}
    assert not {f: n for f, n in offenders.items() if n}
    # Layering: checkpoint/ never imports train/, and the sharding module (which the MoE layer
    # imports) knows no model.
    assert not [f for f in (ROOT / "most_jax/checkpoint").glob("*.py")
                if any(n.startswith("most_jax.train") for n in _imports(f))]
    assert not [n for n in _imports(ROOT / "most_jax/sharding.py") if n.startswith(("most_jax.models", "most_jax.nn"))]
    # And at run time: importing the trainer, placement and AOT loads no model and no data module.
    probe = ("import sys, most_jax.train.loop, most_jax.parallel, most_jax.aot, most_jax.checkpoint.params_io\n"
             "print(sorted(m for m in sys.modules if m.startswith(('most_jax.models.', 'most_jax.data'))\n"
             "             and m != 'most_jax.models.family'))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_family_names_may_not_shadow_the_trainers():
    from most_jax.train.metrics import MetricsWindow
    from most_jax.train.state import model_graphdef
    from most_jax.train.step import accumulate_gradients

    def loss(model, batch, rng, ctx):
        obj, sums = _loss(model, batch, rng, ctx)
        return obj, {**sums, "grad_norm": sums["sse"]}

    family_lib.register(dataclasses.replace(TOY, name="shadow", loss_fn=loss,
                                            summarise=lambda cfg, s, n: {"lr": 1.0}))
    cfg = dataclasses.replace(_cfg(), model=ToyConfig(family="shadow"))
    graphdef, params = model_graphdef(cfg.model)
    batch = {k: jnp.zeros(s.shape, s.dtype) for k, s in TOY.batch_spec(cfg).items()}
    with pytest.raises(ValueError, match=r"family 'shadow': loss sums \['grad_norm'\] clash with the step's"):
        jax.eval_shape(lambda p: accumulate_gradients(graphdef, p, batch, cfg, jax.random.key(0)), params)
    window = MetricsWindow(cfg)
    window.add({"tokens": 1.0, "finite": True, "loss": 1.0, "grad_norm": 1.0, "lr": 0.1, "skipped": 0})
    with pytest.raises(ValueError, match=r"family 'shadow': summary entries \['lr'\] clash with the trainer's"):
        window.record(1, 1.0)
