"""U2++ training through the generic trainer: configs (shapes, parameter counts, nested MoE
defaults), WeNet's WarmupLR + Adam + clipping against torch, loss gradients against the PyTorch
transcription of WeNet, micro-batch accumulation, bf16, dynamic-chunk sampling, expert
parallelism on 8 simulated devices equal to one device, and the per-expert load in metrics.jsonl."""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from most_jax import parallel, sharding
from most_jax.checkpoint import wenet
from most_jax.config import MeshConfig, TrainConfig, load_config
from most_jax.data.buckets import bucket_frames
from most_jax.models.family import abstract_model, build_model
from most_jax.models.u2pp import loss as loss_lib
from most_jax.models.u2pp import masks
from most_jax.scaling.u2pp_flops import u2pp_budget
from most_jax.train.loop import run_training
from most_jax.train.optimizer import learning_rate_schedule, make_optimizer
from most_jax.train.state import abstract_state, init_state, model_graphdef, single_device_mesh, state_shardings
from most_jax.train.step import accumulate_gradients, make_train_step, put_batch, step_key
from test_u2pp_decode import _feats, model_cfg, model_pair
from wenet_ref import modules as ref_modules

ROOT = Path(__file__).resolve().parents[1]
DEMO = "configs/u2pp_moe_demo.yaml"
# The demo's structure at test size; capacity 8 drops no token, so batch splits cannot change routing.
TINY = ["model.vocab_size=12", "model.input_dim=8", "model.encoder.output_size=16", "model.encoder.attention_heads=2",
        "model.encoder.linear_units=12", "model.encoder.num_blocks=2", "model.encoder.cnn_module_kernel=3",
        "model.decoder.attention_heads=2", "model.decoder.linear_units=12", "model.decoder.num_blocks=1",
        "model.encoder.moe.capacity_factor=8.0", "model.decoder.moe.capacity_factor=8.0",
        "data.batch_size=8", "data.seq_len=16", "data.max_audio_seconds=0.5", "train.warmup_steps=2",
        "train.log_every=1", "train.async_checkpoint=false"]
DETERMINISTIC = ["model.encoder.dropout_rate=0.0", "model.encoder.positional_dropout_rate=0.0",
                 "model.decoder.dropout_rate=0.0", "model.decoder.positional_dropout_rate=0.0",
                 "model.encoder.use_dynamic_chunk=false"]


def _param_count(cfg) -> int:
    params = nnx.state(abstract_model(cfg.model), nnx.Param)
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def _stated(path: str, label: str) -> int:
    """The parameter count a config's comment states after `label`."""
    comments = "\n".join(line for line in (ROOT / path).read_text().splitlines() if line.startswith("#"))
    return int(re.search(label + r"\s+([\d,]+)", comments.replace("#", " ")).group(1).replace(",", ""))


@pytest.mark.parametrize("path,label", [("configs/u2pp_moe_demo.yaml", "Parameters:"),
                                        ("configs/u2pp_dense_demo.yaml", "Parameters:"),
                                        ("configs/u2pp_dense_225m.yaml", "Dense"),
                                        ("configs/u2pp_moe_1b.yaml", "MoE")])
def test_configs_build_with_the_parameter_counts_their_comments_state(path, label):
    cfg = load_config(path)
    assert _param_count(cfg) == _stated(path, label)
    enc, dec = cfg.model.encoder, cfg.model.decoder
    assert cfg.model.input_dim == 80
    if "moe" in path:  # every FFN an MoE of 8 experts top-2, with WeNet's router and experts
        for section, act in ((enc, "silu"), (dec, "relu")):
            assert section.mlp_type == "moe"
            assert (section.moe.num_experts, section.moe.top_k, section.moe.router, section.moe.expert,
                    section.moe.activation, section.moe.aux_loss_alpha) == (8, 2, "topk_softmax", "ffn", act, 0.0)
    else:
        assert enc.mlp_type == dec.mlp_type == "position_wise_feed_forward"


def test_the_1b_is_the_225m_with_every_ffn_an_moe():
    dense, moe = load_config("configs/u2pp_dense_225m.yaml"), load_config("configs/u2pp_moe_1b.yaml")
    as_dense = dataclasses.replace(moe.model, encoder=dataclasses.replace(moe.model.encoder, mlp_type=dense.model.encoder.mlp_type),
                                   decoder=dataclasses.replace(moe.model.decoder, mlp_type=dense.model.decoder.mlp_type))
    assert _param_count(dataclasses.replace(moe, model=as_dense)) == _param_count(dense)
    assert 4.6 < _param_count(moe) / _param_count(dense) < 4.8  # the paper's "4.7x"


def test_a_nested_moe_block_changes_only_the_keys_it_names():
    cfg = load_config(DEMO, ["model.encoder.moe.num_experts=4"])
    assert cfg.model.encoder.moe.num_experts == 4
    # Everything else is still the U2++ MoE default (WeNet's router and ffn experts), not MoEConfig's.
    assert (cfg.model.encoder.moe.router, cfg.model.encoder.moe.expert, cfg.model.encoder.moe.activation) == \
        ("topk_softmax", "ffn", "silu")
    assert cfg.model.decoder.moe.activation == "relu"


# ----------------------------------------------------------------------------- optimiser


class WenetWarmupLR(torch.optim.lr_scheduler._LRScheduler):
    """WeNet's WarmupLR (wenet/utils/scheduler.py, device_factor 1): the lr of the update after
    `last_epoch` + 1 scheduler steps is base x warmup^0.5 x min(n^-0.5, n x warmup^-1.5)."""

    def __init__(self, optimizer, warmup_steps):
        self.warmup_steps = warmup_steps
        super().__init__(optimizer)

    def get_lr(self):
        n = self.last_epoch + 1
        return [lr * self.warmup_steps ** 0.5 * min(n ** -0.5, n * self.warmup_steps ** -1.5) for lr in self.base_lrs]


def test_warmuplr_adam_and_clipping_follow_wenets_torch_recipe():
    """WeNet's loop: backward, clip_grad_norm_(grad_clip), Adam(weight_decay) step, WarmupLR step."""
    cfg = TrainConfig(lr=0.01, schedule="warmuplr", warmup_steps=5, optimizer="adam", b1=0.9, b2=0.999, eps=1e-8,
                      weight_decay=0.01, clip_norm=0.5)
    rng = np.random.default_rng(0)
    w0, target = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
    scale = np.array([[4.0], [1.0], [0.1], [2.0]], np.float32)  # gradients large enough for clipping to act

    w_t = torch.nn.Parameter(torch.tensor(w0))
    opt_t = torch.optim.Adam([w_t], lr=cfg.lr, betas=(cfg.b1, cfg.b2), eps=cfg.eps, weight_decay=cfg.weight_decay)
    sched_t = WenetWarmupLR(opt_t, cfg.warmup_steps)
    params = {"kernel": jnp.asarray(w0)}
    opt = make_optimizer(cfg, params)
    state = opt.init(params)
    schedule = learning_rate_schedule(cfg)
    loss = lambda w: jnp.sum(scale * (w - target) ** 2)  # noqa: E731
    for step in range(12):
        assert float(schedule(step)) == pytest.approx(opt_t.param_groups[0]["lr"], rel=1e-6)
        opt_t.zero_grad()
        torch.sum(torch.tensor(scale) * (w_t - torch.tensor(target)) ** 2).backward()
        torch.nn.utils.clip_grad_norm_([w_t], cfg.clip_norm)
        opt_t.step()
        sched_t.step()
        updates, state = opt.update({"kernel": jax.grad(loss)(params["kernel"])}, state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
        np.testing.assert_allclose(np.asarray(params["kernel"]), w_t.detach().numpy(), atol=1e-6, rtol=1e-5)
    # The peak is lr at update `warmup`, then lr x (warmup / n)^0.5.
    assert float(schedule(cfg.warmup_steps - 1)) == pytest.approx(cfg.lr)
    assert float(schedule(4 * cfg.warmup_steps - 1)) == pytest.approx(cfg.lr / 2)


def test_warmuplr_needs_a_warmup():
    with pytest.raises(Exception, match="train.warmup_steps.*warmuplr"):
        load_config(DEMO, ["train.warmup_steps=0"])


# ----------------------------------------------------------------------------- loss gradients vs WeNet


@pytest.mark.parametrize("mlp_type", ["position_wise_feed_forward", "moe"])
def test_loss_gradients_match_wenet(mlp_type):
    """Gradients of WeNet's ASRModel loss (CTC + L2R + R2L, label smoothing) w.r.t. every parameter
    and the input features, mapped through the product's WeNet name table, equal ours."""
    cfg = dataclasses.replace(model_cfg(mlp_type, dynamic=False), ctc_weight=0.3, reverse_weight=0.4, lsm_weight=0.1)
    ref, model = model_pair(cfg, seed=7)
    feats, lengths = _feats(cfg, 8)
    target = np.array([[3, 4, 4, 2], [5, 1, 0, 0], [7, 0, 0, 0]])
    target_lengths = np.array([4, 2, 1])
    feats_t = torch.tensor(feats, requires_grad=True)
    out = ref({"feats": feats_t, "feats_lengths": torch.tensor(lengths),
               "target": torch.tensor(np.where(target > 0, target, -1)), "target_lengths": torch.tensor(target_lengths)})
    out["loss"].backward()
    want = {k: (p.grad.numpy() if p.grad is not None else np.zeros(p.shape, np.float32))
            for k, p in ref.named_parameters()}
    want.update({k: np.zeros(v.shape, np.float32) for k, v in ref.state_dict().items() if k not in want})

    graphdef, params = nnx.split(model, nnx.Param)
    batch = {"feats": jnp.asarray(feats), "feats_lengths": jnp.asarray(lengths), "target": jnp.asarray(target),
             "target_lengths": jnp.asarray(target_lengths)}

    def objective(p, x):
        return loss_lib.u2pp_loss(nnx.merge(graphdef, p), {**batch, "feats": x}, None)[0]

    loss, (grads, feats_grad) = jax.value_and_grad(objective, argnums=(0, 1))(params, batch["feats"])
    assert float(loss) == pytest.approx(float(out["loss"].detach()), rel=1e-5)
    np.testing.assert_allclose(np.asarray(feats_grad), feats_t.grad.numpy(), atol=1e-5, rtol=1e-4)
    flat = {tuple(str(k) for k in path): np.asarray(v[...]) for path, v in nnx.to_flat_state(grads)}
    mapped = wenet.params_from_wenet(want, cfg, {p: v.shape for p, v in flat.items()}, np.float32)
    checked = 0
    for path, got in flat.items():
        if path[:2] == ("encoder", "global_cmvn"):  # WeNet's CMVN statistics are buffers, not parameters
            continue
        np.testing.assert_allclose(got, mapped[path], atol=1e-5, rtol=1e-4, err_msg="/".join(path))
        checked += 1
    assert checked > 30


# ----------------------------------------------------------------------------- the train step


def _batch(cfg, seed=0):
    from most_jax.models.u2pp.family import batch_spec

    spec = batch_spec(cfg)
    b, u, i = spec["feats"].shape
    rng = np.random.default_rng(seed)
    feats_lengths = rng.integers(u // 2, u + 1, b).astype(np.int32)
    feats_lengths[0] = u
    target_lengths = rng.integers(1, 6, b).astype(np.int32)  # CTC-feasible in the 11 encoder frames
    target = rng.integers(1, cfg.model.vocab_size - 1, spec["target"].shape).astype(np.int32)
    target = np.where(np.arange(target.shape[1])[None] < target_lengths[:, None], target, 0)
    return {"feats": rng.normal(size=(b, u, i)).astype(np.float32), "feats_lengths": feats_lengths,
            "target": target, "target_lengths": target_lengths}


def _grads(cfg, batch, seed=0):
    graphdef, params = nnx.split(build_model(cfg.model, seed), nnx.Param)
    key = step_key(jax.random.key_data(jax.random.key(3)), jnp.int32(0))
    arrays = {k: jnp.asarray(v) for k, v in batch.items()}
    return jax.jit(lambda p: accumulate_gradients(graphdef, p, arrays, cfg, key))(params)


def test_micro_batches_give_the_gradients_of_one_big_batch():
    one = load_config(DEMO, [*TINY, *DETERMINISTIC])
    four = load_config(DEMO, [*TINY, *DETERMINISTIC, "train.micro_batches=4"])
    batch = _batch(one)
    g1, obj1, sums1 = _grads(one, batch)
    g4, obj4, sums4 = _grads(four, batch)
    assert float(obj4) == pytest.approx(float(obj1), rel=1e-6)
    for key in ("loss_ctc", "loss_att", "att_hits", "load_encoder"):
        np.testing.assert_allclose(np.asarray(sums4[key]), np.asarray(sums1[key]), rtol=1e-5, atol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g1), jax.tree.leaves(g4)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6, rtol=1e-4,
                                   err_msg=jax.tree_util.keystr(path))
    assert float(optax_norm(g1)) > 0


def optax_norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def test_bf16_compute_trains_close_to_float32():
    f32 = load_config(DEMO, [*TINY, *DETERMINISTIC])
    bf16 = load_config(DEMO, [*TINY, *DETERMINISTIC, "model.dtype=bfloat16"])
    batch = _batch(f32, seed=1)
    g32, obj32, _ = _grads(f32, batch)
    g16, obj16, _ = _grads(bf16, batch)
    assert np.isfinite(float(obj16)) and float(obj16) == pytest.approx(float(obj32), rel=2e-2)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(g16))  # accumulated in float32
    cos = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g32), jax.tree.leaves(g16))) / (
        optax_norm(g32) * optax_norm(g16))
    assert float(cos) > 0.99


def test_training_writes_losses_and_per_layer_expert_load_to_metrics_jsonl(tmp_path):
    cfg = load_config(DEMO, [*TINY, "train.steps=2", "train.micro_batches=2", "train.checkpoint_every=2"])

    class Batches:
        def __init__(self):
            self.index = 0

        def __next__(self):
            self.index += 1
            return _batch(cfg, seed=self.index)

        def get_state(self):
            return {"index": self.index}

        def set_state(self, state):
            self.index = int(state["index"])

    result = run_training(cfg, tmp_path / "run", Batches(), console=io.StringIO())
    assert result.step == 2
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    rec = records[-1]
    m = cfg.model
    assert rec["loss"] == pytest.approx(m.ctc_weight * rec["loss_ctc"] + (1 - m.ctc_weight) * rec["loss_att"], rel=1e-5)
    assert 0 <= rec["th_accuracy"] <= 1
    routed_frames = None
    for key, layers, rows_per_layer in (("load/encoder", m.encoder.num_blocks * 2, None),
                                        ("load/decoder_left", m.decoder.num_blocks, None),
                                        ("load/decoder_right", m.decoder.r_num_blocks, None)):
        load = np.asarray(rec[f"{key}/tokens_per_expert"])
        assert load.shape == (layers, m.encoder.moe.num_experts), key
        per_layer = load.sum(axis=1)
        assert (per_layer == per_layer[0]).all()  # every layer routes the same frames, top_k each
        if key == "load/encoder":
            routed_frames = per_layer[0]
    assert routed_frames % m.encoder.moe.top_k == 0 and routed_frames > 0


# ----------------------------------------------------------------------------- dynamic chunks


def _wenet_chunk_distribution(size, max_chunk, dynamic_left):
    """Exact distribution of WeNet's training mask (the transcription in tests/wenet_ref, its two
    torch.randint draws enumerated)."""
    probs: dict[bytes, float] = collections.defaultdict(float)
    xs, pad = torch.zeros(1, size, 1), torch.ones(1, 1, size, dtype=torch.bool)
    real_randint = torch.randint
    for d in range(1, size):
        draws = [d]

        def fake(low, high, shape):
            value = draws.pop(0) if draws else None
            if value is None:  # the left-chunk draw: enumerate it in the loop below
                raise LookupError((low, high))
            return torch.tensor([value])

        ref_modules.torch.randint = fake
        try:
            try:
                mask = ref_modules.add_optional_chunk_mask(xs, pad, True, dynamic_left, 0, 0, -1,
                                                           max_chunk_size=max_chunk)
                probs[mask.numpy().tobytes()] += 1 / (size - 1)
            except LookupError as e:
                low, high = e.args[0]
                for left in range(low, high):
                    draws = [d, left]
                    mask = ref_modules.add_optional_chunk_mask(xs, pad, True, dynamic_left, 0, 0, -1,
                                                               max_chunk_size=max_chunk)
                    probs[mask.numpy().tobytes()] += 1 / (size - 1) / (high - low)
        finally:
            ref_modules.torch.randint = real_randint
    return probs


@pytest.mark.parametrize("size,max_chunk,dynamic_left", [(40, 25, False), (30, 4, True)])
def test_dynamic_chunk_draw_has_wenets_distribution(size, max_chunk, dynamic_left):
    want = _wenet_chunk_distribution(size, max_chunk, dynamic_left)
    pad = jnp.ones((1, 1, size), bool)

    @jax.jit
    def draw(key):
        return masks.add_optional_chunk_mask(pad, use_dynamic_chunk=True, use_dynamic_left_chunk=dynamic_left,
                                             decoding_chunk_size=0, static_chunk_size=0, num_decoding_left_chunks=-1,
                                             max_chunk_size=max_chunk, rng=key)

    n = 4000
    drawn = np.asarray(jax.vmap(draw)(jax.random.split(jax.random.key(0), n)))
    got: dict[bytes, float] = collections.defaultdict(float)
    for mask in drawn:
        got[mask.tobytes()] += 1 / n
    assert set(got) <= set(want)  # every mask drawn is one WeNet can draw
    total_variation = 0.5 * sum(abs(got.get(k, 0.0) - p) for k, p in want.items())
    assert total_variation < 0.06, total_variation
    full = np.ones((1, size, size), bool).tobytes()
    assert got[full] == pytest.approx(want[full], abs=0.03)  # about half the steps see full context


def test_the_train_step_draws_a_new_chunk_each_step_from_its_rng():
    cfg = load_config(DEMO, [*TINY, "model.encoder.dropout_rate=0.0", "model.encoder.positional_dropout_rate=0.0",
                             "model.decoder.dropout_rate=0.0", "model.decoder.positional_dropout_rate=0.0"])
    batch = {k: jnp.asarray(v) for k, v in _batch(cfg).items()}
    model = build_model(cfg.model, 0)
    graphdef, params = nnx.split(model, nnx.Param)
    rng_data = jax.random.key_data(jax.random.key(0))

    @jax.jit
    def loss_at(step):  # one compiled function: the chunk is traced, drawn from the step's key
        return loss_lib.u2pp_loss(nnx.merge(graphdef, params), batch, step_key(rng_data, step))[0]

    losses = [float(loss_at(jnp.int32(s))) for s in range(12)]
    assert len(set(np.round(losses, 6))) >= 3  # the chunk (the only randomness left) changes per step
    assert float(loss_at(jnp.int32(5))) == losses[5]  # and is a pure function of the step


# ----------------------------------------------------------------------------- expert parallelism


def test_expert_parallel_loss_and_gradients_equal_one_device():
    cfg = load_config(DEMO, TINY)
    batch = _batch(cfg, seed=5)
    graphdef, shapes = model_graphdef(cfg.model)
    opt = make_optimizer(cfg.train, shapes)

    def on(mesh, param_shardings, batch_sharding):
        """The step's gradients (dropout and the dynamic chunk drawn from the step key) on `mesh`."""
        shardings = state_shardings(abstract_state(shapes, opt, 0), mesh, param_shardings)
        with jax.set_mesh(mesh):
            state = init_state(cfg.model, opt, 0, shardings)
            arrays = put_batch(batch, batch_sharding)
            key = step_key(state.rng, state.step)
            compiled = jax.jit(lambda p: accumulate_gradients(graphdef, p, arrays, cfg, key)).lower(state.params).compile()
            return compiled.as_text(), jax.device_get(compiled(state.params))

    single = single_device_mesh()
    replicate = lambda t, m: jax.tree.map(lambda _: jax.sharding.NamedSharding(m, jax.sharding.PartitionSpec()), t)  # noqa: E731
    _, (ref_grads, ref_obj, ref_sums) = on(single, replicate,
                                           jax.sharding.NamedSharding(single, jax.sharding.PartitionSpec()))
    mesh = sharding.make_mesh(MeshConfig(data=2, expert=4))
    hlo, (grads, obj, sums) = on(mesh, parallel.param_sharding_fn(cfg.model), sharding.batch_sharding(mesh))
    assert "all-to-all" in hlo  # the MoE FFNs reached their experts through the exchange
    np.testing.assert_allclose(float(obj), float(ref_obj), rtol=1e-6)
    for key in ("loss_ctc", "loss_att"):
        np.testing.assert_allclose(float(sums[key]), float(ref_sums[key]), rtol=1e-6, err_msg=key)
    for key in ("load_encoder", "load_decoder_left", "load_decoder_right"):
        np.testing.assert_array_equal(np.asarray(sums[key]), np.asarray(ref_sums[key]), err_msg=key)
    worst = 0.0
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ref_grads), jax.tree.leaves(grads)):
        # float32 sums in another order: 1e-5 absolute, or 1e-6 of gradients of size ~100
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=1e-6, err_msg=jax.tree_util.keystr(path))
        worst = max(worst, float(np.max(np.abs(np.asarray(b) - np.asarray(a)) / (1 + np.abs(np.asarray(a))))))
    print(f"expert-parallel vs one device: loss {float(obj)!r} vs {float(ref_obj)!r}, "
          f"max |dg| / (1 + |g|) = {worst:.2e}")


def test_most_compile_compiles_a_tiny_u2pp_moe_train_step_for_a_tpu_slice(tmp_path):
    """`most compile` on the demo config at test size (the 1B: BENCHMARKS.md, by hand)."""
    pytest.importorskip("libtpu")
    import os
    import subprocess
    import sys

    env = dict(os.environ, JAX_PLATFORMS="cpu", ALLOW_MULTIPLE_LIBTPU_LOAD="1")
    env.pop("XLA_FLAGS", None)
    sets = [arg for item in TINY if not item.startswith("train.") for arg in ("--set", item)]
    result = subprocess.run([sys.executable, "-m", "most_jax.cli", "compile", "--config", DEMO, *sets, "--topology",
                             "v5p-8", "--mesh", "data=2,expert=2", "--json", "--dump-hlo", str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["chips"] == 4 and report["mesh"]["expert"] == 2 and report["fits"]
    b = report["per_chip_bytes"]
    assert b["optimizer"] == pytest.approx(2 * b["params"], rel=0.05)  # Adam: two moments per param
    assert "all-to-all" in (tmp_path / "train_step.v5p-8.hlo.txt").read_text()
    # the analytic FLOPs of the compiled (longest-bucket) step: 3 x the forward count
    cfg = load_config(DEMO, [item for item in TINY if not item.startswith("train.")])
    budget = u2pp_budget(cfg.model, bucket_frames(cfg.data)[-1], cfg.data.seq_len)
    assert report["flops_per_step"] == pytest.approx(
        3 * cfg.data.batch_size * bucket_frames(cfg.data)[-1] * budget.forward_flops_per_token)
