"""The pure train step: one step on the tiny config, the loss against a NumPy reference, gradient
accumulation (MoE aux losses included), non-finite skipping, the weight-decay mask and the schedule."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from train_batches import SyntheticBatches

from most_jax.config import TrainConfig, load_config
from most_jax.models.most_loss import loss_sums, token_cross_entropy
from most_jax.train.optimizer import learning_rate_schedule, make_optimizer, weight_decay_mask
from most_jax.train.state import (abstract_state, init_state, model_graphdef, single_device_mesh,
                                  state_shardings)
from most_jax.train.step import accumulate_gradients, batch_sharding_for, make_train_step, put_batch

TINY = "configs/most_tiny.yaml"
# Small and quick to compile: 1 dense + 1 MoE layer, no layer scan, 4 rows of 24 tokens.
FAST = ["model.num_layers=2", "model.scan_layers=false", "data.batch_size=4", "data.seq_len=24"]


def _setup(overrides):
    cfg = load_config(TINY, overrides)
    graphdef, params_shape = model_graphdef(cfg.model)
    optimizer = make_optimizer(cfg.train, params_shape)
    mesh = single_device_mesh()
    shardings = state_shardings(abstract_state(params_shape, optimizer, 0), mesh)
    step = make_train_step(graphdef, cfg, optimizer, learning_rate_schedule(cfg.train),
                           state_shardings=shardings, batch_sharding=batch_sharding_for(mesh))
    return cfg, graphdef, optimizer, shardings, step, batch_sharding_for(mesh)


def _leaves(tree):
    return dict(jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0])


def test_one_step_on_the_tiny_config():
    cfg, _, optimizer, shardings, step, bsh = _setup(["data.batch_size=2", "data.seq_len=32"])
    state = init_state(cfg.model, optimizer, 0, shardings)
    before = _leaves(state.params)
    batch = SyntheticBatches(cfg.model.vocab, 2, 32).batch(0)
    state, metrics = step(state, put_batch(batch, bsh))
    loss = float(metrics["loss"])
    assert math.isfinite(loss)
    # std-0.02 init: the logits are nearly uniform, so the cross-entropy starts near log V.
    assert abs(float(metrics["ce_sum"] / metrics["loss_tokens"]) - math.log(cfg.model.vocab_size)) < 0.1
    assert int(state.step) == 1 and int(state.skipped) == 0 and bool(metrics["finite"])
    after = _leaves(state.params)
    changed = [k for k in before if not np.array_equal(before[k], after[k])]
    assert len(changed) == len(before), f"unchanged: {set(before) - set(changed)}"
    assert metrics["load_LGE"].shape == (cfg.model.num_moe_layers, 2, cfg.model.moe.num_experts)


def test_loss_sums_match_a_numpy_reference():
    cfg = load_config(TINY)
    vocab = cfg.model.vocab
    rng = np.random.default_rng(0)
    b, t, v = 3, 7, cfg.model.vocab_size
    logits = rng.normal(size=(b, t, v)).astype(np.float32) * 3
    targets = rng.choice([5, 100, vocab.audio_unit_offset + 3, vocab.begin_wave_id], size=(b, t)).astype(np.int32)
    mask = (rng.random((b, t)) < 0.7).astype(np.int32)
    task = rng.integers(-1, 3, size=(b, t)).astype(np.int32)
    sums = jax.device_get(loss_sums(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask), jnp.asarray(task),
                                    jnp.float32(0.5), jnp.float32(0.25), num_tasks=3, vocab=vocab))
    ce_sum, task_ce, task_n, mod_ce, mod_n = 0.0, np.zeros(3), np.zeros(3), np.zeros(2), np.zeros(2)
    for i in range(b):
        for j in range(t):
            row = logits[i, j].astype(np.float64)
            ce = math.log(np.exp(row - row.max()).sum()) + row.max() - row[targets[i, j]]
            if not mask[i, j]:
                continue
            ce_sum += ce
            if task[i, j] >= 0:
                task_ce[task[i, j]] += ce
                task_n[task[i, j]] += 1
            tok = targets[i, j]
            modality = 0 if tok < vocab.text_size else 1 if tok < vocab.begin_wave_id else None
            if modality is not None:
                mod_ce[modality] += ce
                mod_n[modality] += 1
    np.testing.assert_allclose(sums.ce_sum, ce_sum, rtol=1e-5)
    assert sums.loss_tokens == mask.sum()
    np.testing.assert_allclose(sums.task_ce_sum, task_ce, rtol=1e-5)
    np.testing.assert_array_equal(sums.task_tokens, task_n)
    np.testing.assert_allclose(sums.modality_ce_sum, mod_ce, rtol=1e-5)
    np.testing.assert_array_equal(sums.modality_tokens, mod_n)
    assert (sums.aux_loss, sums.z_loss) == (0.5, 0.25)
    assert token_cross_entropy(jnp.asarray(logits), jnp.asarray(targets)).shape == (b, t)


@pytest.fixture(scope="module")
def accumulation_setup():
    # Strong aux and z losses so their gradients matter; capacity_factor 4 = E/K: nothing is dropped,
    # so one big micro-batch and two small ones route identically.
    overrides = FAST + ["model.moe.aux_loss_alpha=0.3", "model.moe.z_loss_alpha=0.01", "model.moe.capacity_factor=4.0"]
    cfg = load_config(TINY, overrides)
    graphdef, params_shape = model_graphdef(cfg.model)
    optimizer = make_optimizer(cfg.train, params_shape)
    shardings = state_shardings(abstract_state(params_shape, optimizer, 0), single_device_mesh())
    params = init_state(cfg.model, optimizer, 0, shardings).params
    # No padding: the per-micro-batch means of the aux/z losses then average to the big-batch mean.
    batch = SyntheticBatches(cfg.model.vocab, 4, 24, padding=0).batch(0)
    return cfg, graphdef, params, {k: jnp.asarray(v) for k, v in batch.items()}


def _grads(cfg, graphdef, params, batch, micro_batches):
    cfg = cfg.__class__(model=cfg.model, data=cfg.data,
                        train=TrainConfig(**{**cfg.train.__dict__, "micro_batches": micro_batches}))
    fn = jax.jit(lambda p, b: accumulate_gradients(graphdef, p, b, cfg, jax.random.key(0))[:2])
    return jax.device_get(fn(params, batch))


@pytest.mark.parametrize("aux_only", [False, True])
def test_two_micro_batches_equal_one_big_batch(accumulation_setup, aux_only):
    cfg, graphdef, params, batch = accumulation_setup
    if aux_only:  # no loss tokens: the objective is the MoE aux + z losses alone
        batch = {**batch, "loss_mask": jnp.zeros_like(batch["loss_mask"])}
    grads_1, obj_1 = _grads(cfg, graphdef, params, batch, 1)
    grads_2, obj_2 = _grads(cfg, graphdef, params, batch, 2)
    np.testing.assert_allclose(obj_2, obj_1, rtol=1e-5)
    flat_1, flat_2 = _leaves(grads_1), _leaves(grads_2)
    scale = max(float(np.abs(g).max()) for g in flat_1.values())
    assert scale > 1e-4, "the objective has no gradient: the test would prove nothing"
    for key in flat_1:
        np.testing.assert_allclose(flat_2[key], flat_1[key], atol=1e-5 * scale, rtol=1e-4, err_msg=str(key))
    if aux_only:
        gate = [k for k in flat_1 if "gate" in str(k[-1]) and "moe" in str(k)]
        assert gate and np.abs(flat_1[gate[0]]).max() > 0, "aux losses should push the router"


def test_non_finite_step_is_skipped_and_counted():
    cfg, _, optimizer, shardings, step, bsh = _setup(FAST)
    poison = cfg.model.vocab.begin_wave_id
    state = init_state(cfg.model, optimizer, 0, shardings)
    emb = state.params["embed"]["embedding"]
    state = state._replace(params={**state.params, "embed": {"embedding": emb.at[poison].set(jnp.inf)}})
    source = SyntheticBatches(cfg.model.vocab, 4, 24, poison_from=0, poison_id=poison)
    bad, good = source.batch(0), SyntheticBatches(cfg.model.vocab, 4, 24).batch(0)
    before = (_leaves(state.params), _leaves(state.opt_state))
    for k in (1, 2):
        state, metrics = step(state, put_batch(bad, bsh))
        assert not bool(metrics["finite"])
        assert (int(state.step), int(state.skipped), int(state.nonfinite_streak)) == (k, k, k)
    after = (_leaves(state.params), _leaves(state.opt_state))
    for b, a in zip(before, after):
        for key in b:
            np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))
    state, metrics = step(state, put_batch(good, bsh))
    assert bool(metrics["finite"])
    assert (int(state.step), int(state.skipped), int(state.nonfinite_streak)) == (3, 2, 0)
    # the schedule resumes where it stood: the first applied update gets the first lr
    assert float(metrics["lr"]) == pytest.approx(float(learning_rate_schedule(cfg.train)(0)))
    head = [k for k in before[0] if "lm_head" in str(k)][0]
    assert not np.array_equal(_leaves(state.params)[head], before[0][head])


def test_weight_decay_mask_spares_norms_and_embeddings():
    cfg = load_config(TINY, ["train.weight_decay=0.5", "train.lr=0.1", "train.warmup_steps=0"])
    _, params_shape = model_graphdef(cfg.model)
    mask = {".".join(str(p.key) for p in k): v for k, v in jax.tree_util.tree_flatten_with_path(
        weight_decay_mask(params_shape, decay_embeddings=False))[0]}
    assert not mask["embed.embedding"] and mask["lm_head"]
    assert not mask["final_norm.scale"] and not mask["moe_layers.attn.kv_a_norm.scale"]
    assert mask["moe_layers.moe.w_up"] and mask["moe_layers.moe.gate"] and mask["dense_layers.mlp.down_proj.kernel"]
    assert all(mask[k] == (not k.endswith(("scale", "embedding"))) for k in mask)
    with_emb = weight_decay_mask(params_shape, decay_embeddings=True)
    assert with_emb["embed"]["embedding"]
    # Wiring: with zero gradients AdamW's update is pure decay, -lr * wd * p, on masked-in leaves only.
    params = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), params_shape)
    optimizer = make_optimizer(cfg.train, params_shape)
    updates, _ = optimizer.update(jax.tree.map(jnp.zeros_like, params), optimizer.init(params), params)
    for key, u in _leaves(updates).items():
        name = ".".join(str(p.key) for p in key)
        expected = -0.1 * 0.5 if mask[name] else 0.0
        np.testing.assert_allclose(u, expected, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_schedule_warms_up_then_decays(schedule):
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=2.0, min_lr_ratio=0.1, schedule=schedule)
    lr = learning_rate_schedule(cfg)
    np.testing.assert_allclose([float(lr(i)) for i in (0, 4, 9)], [0.2, 1.0, 2.0], rtol=1e-6)
    end = 2.0 if schedule == "constant" else 0.2
    np.testing.assert_allclose(float(lr(100)), end, rtol=1e-5)
    mid = float(lr(55))
    assert mid == pytest.approx({"cosine": 0.2 + 1.8 * 0.5, "linear": 1.1, "constant": 2.0}[schedule], rel=1e-3)


@pytest.mark.parametrize("clip_norm", [0.0, 1.0])
def test_global_norm_clipping(clip_norm):
    # b1 = b2 = 0 and a huge eps make Adam's update -lr * g / (|g| + eps): proportional to the
    # (clipped) gradient, so clipping shows in the update.
    cfg = TrainConfig(steps=10, warmup_steps=0, lr=1.0, schedule="constant", b1=0.0, b2=0.0, eps=1e3,
                      weight_decay=0.0, clip_norm=clip_norm)
    params = {"w": jnp.zeros(4)}
    optimizer = make_optimizer(cfg, params)
    grads = {"w": jnp.full(4, 50.0)}  # global norm 100
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    g = 0.5 if clip_norm else 50.0
    np.testing.assert_allclose(updates["w"], -g / (g + 1e3), rtol=1e-5)
    assert float(optax.tree.norm(grads)) == pytest.approx(100.0)


def test_bf16_params_keep_state_dtypes_across_steps():
    # bf16 master weights: gradients accumulate in f32 but the state must come back in the dtypes it
    # went in with, or the once-compiled step would not accept it again.
    cfg, _, optimizer, shardings, step, bsh = _setup(FAST + ["model.dtype=bfloat16", "model.param_dtype=bfloat16",
                                                             "train.micro_batches=2"])
    state = init_state(cfg.model, optimizer, 0, shardings)
    dtypes = jax.tree.map(lambda x: x.dtype, state)
    state, metrics = step(state, put_batch(SyntheticBatches(cfg.model.vocab, 4, 24).batch(0), bsh))
    assert bool(metrics["finite"])
    assert jax.tree.map(lambda x: x.dtype, state) == dtypes
    assert state.params["lm_head"].dtype == jnp.bfloat16
