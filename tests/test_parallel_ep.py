"""Expert parallelism on 8 simulated devices: equal to one device (logits, gradients, a train step),
every exchange and placement equal to the per-expert reference for swiglu and ffn experts, drops
accounted for, and the modality-balanced placement spreading a skewed batch."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from most_jax import parallel, sharding
from most_jax.config import MeshConfig, MoEConfig, ModalityGroup, load_config
from most_jax.models.most import MoST
from most_jax.nn.moe import expert_parallel as ep_lib
from most_jax.nn.moe.dispatch import DISPATCH, ExpertWeights
from most_jax.nn.moe.experts import ExpertDropout
from most_jax.nn.moe.router import Routing, route

MESHES = {"data2_expert4": MeshConfig(data=2, expert=4),
          "fsdp2_expert2_tensor2": MeshConfig(data=1, fsdp=2, expert=2, tensor=2)}


def tiny(*overrides):
    # Generous capacity: nothing is dropped, so every path must equal the reference exactly.
    return load_config("configs/most_tiny.yaml", ["model.num_layers=2", "model.moe.capacity_factor=8.0",
                                                  *overrides])


def _tokens(cfg, rows=8, length=12, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.integers(0, cfg.model.vocab.begin_audio_id, (rows, length)), jnp.int32)


def _loss_and_grads(graphdef, params, tokens):
    def loss(p):
        logits, stats = nnx.merge(graphdef, p)(tokens)
        return jnp.mean(jnp.square(logits)) + jnp.sum(stats.aux_loss), logits

    return jax.value_and_grad(loss, has_aux=True)(params)


@pytest.mark.parametrize("mesh_name", sorted(MESHES))
def test_logits_and_gradients_equal_single_device(mesh_name):
    ref_cfg = tiny("model.moe.dispatch=reference")
    model = MoST(ref_cfg.model, rngs=nnx.Rngs(1))
    ref_graphdef, params = nnx.split(model, nnx.Param)
    tokens = _tokens(ref_cfg)
    (loss0, logits0), grads0 = jax.jit(lambda p: _loss_and_grads(ref_graphdef, p, tokens))(params)

    cfg = tiny()  # dispatch auto -> expert_parallel on a mesh with expert > 1
    mesh = sharding.make_mesh(MESHES[mesh_name])
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: MoST(cfg.model, rngs=nnx.Rngs(0))), nnx.Param)
    placed = parallel.place_params(cfg.model, nnx.to_pure_dict(params), mesh)
    with jax.set_mesh(mesh):
        step = jax.jit(lambda p: _loss_and_grads(graphdef, p, tokens))
        (loss1, logits1), grads1 = step(placed)
        hlo = step.lower(placed).compile().as_text()
    assert "all-to-all" in hlo  # the experts really were reached through the exchange
    np.testing.assert_allclose(np.asarray(logits1), np.asarray(logits0), atol=1e-5, rtol=0)
    np.testing.assert_allclose(float(loss1), float(loss0), rtol=1e-6)
    flat0 = dict(jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(grads0)))
    for path, g in jax.tree_util.tree_leaves_with_path(grads1):
        np.testing.assert_allclose(np.asarray(g), np.asarray(flat0[path]), atol=1e-5, rtol=0,
                                   err_msg=jax.tree_util.keystr(path))
    # the gradients of expert weights stay expert-partitioned
    assert grads1["moe_layers"]["moe"]["w_up"].sharding.spec[1] == "expert"


def test_compiled_train_step_exchanges_tokens_and_matches_one_device():
    from most_jax.train.optimizer import learning_rate_schedule, make_optimizer
    from most_jax.train.state import abstract_state, init_state, model_graphdef, single_device_mesh, state_shardings
    from most_jax.train.step import make_train_step, put_batch
    from train_batches import SyntheticBatches

    cfg = load_config("configs/most_tiny.yaml", ["model.num_layers=2", "model.moe.capacity_factor=8.0",
                                                 "data.batch_size=8", "data.seq_len=16", "train.micro_batches=1",
                                                 "train.warmup_steps=0"])
    batch = SyntheticBatches(cfg.model.vocab, 8, 16, seed=4).batch(0)

    def one_step(mesh, param_shardings, batch_sharding):
        graphdef, shapes = model_graphdef(cfg.model)
        opt = make_optimizer(cfg.train, shapes)
        abstract = abstract_state(shapes, opt, 0)
        shardings = state_shardings(abstract, mesh, param_shardings)
        step = make_train_step(graphdef, cfg, opt, learning_rate_schedule(cfg.train),
                               state_shardings=shardings, batch_sharding=batch_sharding)
        with jax.set_mesh(mesh):
            state = init_state(cfg.model, opt, 0, shardings)
            arrays = put_batch(batch, batch_sharding)
            hlo = step.lower(state, arrays).compile().as_text()
            new_state, metrics = step(state, arrays)
        return hlo, new_state, metrics

    single = single_device_mesh()
    _, ref_state, ref_metrics = one_step(single, lambda t, m: jax.tree.map(
        lambda _: jax.sharding.NamedSharding(m, jax.sharding.PartitionSpec()), t),
        jax.sharding.NamedSharding(single, jax.sharding.PartitionSpec()))
    mesh = sharding.make_mesh(MeshConfig(data=2, expert=4))
    hlo, state, metrics = one_step(mesh, parallel.param_sharding_fn(cfg.model), sharding.batch_sharding(mesh))
    assert "all-to-all" in hlo
    np.testing.assert_allclose(float(metrics["loss"]), float(ref_metrics["loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["grad_norm"]), float(ref_metrics["grad_norm"]), rtol=1e-5)
    # Adam divides by sqrt(v): on near-zero gradients, 1e-9 noise moves the update by a fraction of lr (3e-4).
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0),
                 state.params, ref_state.params)


# ----------------------------------------------------------------------------- dispatch level

def emulated_ragged_all_to_all(operand, output, input_offsets, send_sizes, output_offsets, recv_sizes, *,
                               axis_name):
    """What jax.lax.ragged_all_to_all does, from all_gathers and masks (XLA:CPU lacks the primitive)."""
    del recv_sizes  # implied by the senders' sizes
    ops = jax.lax.all_gather(operand, axis_name)
    in_off = jax.lax.all_gather(input_offsets, axis_name)
    send = jax.lax.all_gather(send_sizes, axis_name)
    out_off = jax.lax.all_gather(output_offsets, axis_name)
    me = jax.lax.axis_index(axis_name)
    rows = jnp.arange(output.shape[0])
    for s in range(ops.shape[0]):
        start, size = out_off[s, me], send[s, me]
        inside = (rows >= start) & (rows < start + size)
        src = jnp.clip(in_off[s, me] + rows - start, 0, operand.shape[0] - 1)
        output = jnp.where(inside[:, None], ops[s][src], output)
    return output


def _moe_problem(num_tokens=64, num_experts=8, top_k=2, d=12, f=10, seed=0, audio_fraction=0.5, kind="swiglu"):
    """MoST's MAMoE routing with swiglu experts, or (kind "ffn") WeNet's topk_softmax routing with
    biased relu ffn experts."""
    if kind == "swiglu":
        moe = MoEConfig(num_experts=num_experts, top_k=top_k, expert_ffn_dim=f, num_shared_experts=0,
                        modality_groups=(ModalityGroup("text", 0, 0, num_experts // 2),
                                         ModalityGroup("audio", 1, num_experts // 2, num_experts // 2)))
    else:
        moe = MoEConfig(num_experts=num_experts, top_k=top_k, expert_ffn_dim=f, num_shared_experts=0,
                        router="topk_softmax", expert="ffn", activation="relu", expert_bias=True)
    k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
    x_ND = jax.random.normal(k1, (num_tokens, d))
    rng = np.random.default_rng(seed)
    modality = (rng.random(num_tokens) < audio_fraction).astype(np.int32)
    valid = rng.random(num_tokens) > 0.1  # some padding: inactive tokens
    gate = 0.5 * jax.random.normal(k2, (d, num_experts))
    routing, _ = route(x_ND[None], jnp.asarray(modality)[None] if moe.modality_groups else None,
                       jnp.asarray(valid)[None], gate, moe)
    w = jax.random.normal(k3, (3, num_experts, d, f)) / np.sqrt(d)
    if kind == "swiglu":
        experts = ExpertWeights(w[0], w[1], jnp.swapaxes(w[2], 1, 2))
    else:
        b = jax.random.normal(k4, (num_experts, f + d))
        experts = ExpertWeights(w[0], None, jnp.swapaxes(w[2], 1, 2), b[:, :f], b[:, f:], "relu")
    return moe, x_ND, routing, experts


@pytest.mark.parametrize("exchange", ["capacity", "ragged"])
@pytest.mark.parametrize("placement", ["canonical", "balanced"])
@pytest.mark.parametrize("mesh_cfg", [MeshConfig(data=4, expert=2), MeshConfig(data=1, fsdp=2, expert=2, tensor=2)],
                         ids=["data4_expert2", "fsdp2_expert2_tensor2"])
@pytest.mark.parametrize("kind", ["swiglu", "ffn"])
def test_every_exchange_and_placement_equals_reference(exchange, placement, mesh_cfg, kind):
    moe, x_ND, routing, experts = _moe_problem(kind=kind)
    want, _ = DISPATCH["reference"](x_ND, routing, experts, 1.0)
    mesh = sharding.make_mesh(mesh_cfg)

    def run(x, r, w):
        return ep_lib.expert_parallel(x, r, w, 8.0, exchange=exchange, placement=placement,
                                      ragged_all_to_all=emulated_ragged_all_to_all)

    def objective(x, weight_NK, w):
        y, _ = run(x, routing._replace(weight_NK=weight_NK), w)
        return jnp.sum(jnp.sin(y))

    def ref_objective(x, weight_NK, w):
        return jnp.sum(jnp.sin(DISPATCH["reference"](x, routing._replace(weight_NK=weight_NK), w, 1.0)[0]))

    with jax.set_mesh(mesh):
        got, dropped = jax.jit(run)(x_ND, routing, experts)
        grads = jax.jit(jax.grad(objective, argnums=(0, 1, 2)))(x_ND, routing.weight_NK, experts)
    assert not np.asarray(dropped).any()
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)
    want_grads = jax.grad(ref_objective, argnums=(0, 1, 2))(x_ND, routing.weight_NK, experts)
    flat_want = jax.tree_util.tree_leaves_with_path(want_grads)
    assert len(flat_want) == (6 if kind == "ffn" else 5)  # x, weight_NK and every expert tensor
    for (path, h), g in zip(flat_want, jax.tree.leaves(grads)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(h), atol=1e-5, rtol=0, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("exchange", ["capacity", "ragged"])
@pytest.mark.parametrize("mesh_cfg", [MeshConfig(data=4, expert=2), MeshConfig(data=1, fsdp=2, expert=2, tensor=2)],
                         ids=["data4_expert2", "fsdp2_expert2_tensor2"])
def test_expert_dropout_across_ranks_equals_reference(exchange, mesh_cfg):
    """Each row's assignment id travels with it, so the rank computing it drops the reference's
    units (its tensor slice of them); outputs and input gradients equal the reference."""
    moe, x_ND, routing, experts = _moe_problem(kind="ffn")
    drop = ExpertDropout(jax.random.key(4), 0.4)

    def objective(fn, x):
        return jnp.sum(jnp.sin(fn(x)[0]))

    def ep(x):
        return ep_lib.expert_parallel(x, routing, experts, 8.0, drop, exchange=exchange,
                                      placement="balanced" if mesh_cfg.tensor == 1 else "canonical",
                                      ragged_all_to_all=emulated_ragged_all_to_all)

    def ref(x):
        return DISPATCH["reference"](x, routing, experts, 1.0, drop)

    with jax.set_mesh(sharding.make_mesh(mesh_cfg)):
        got = jax.jit(ep)(x_ND)[0]
        g = jax.jit(jax.grad(lambda x: objective(ep, x)))(x_ND)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref(x_ND)[0]), atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(g), np.asarray(jax.grad(lambda x: objective(ref, x))(x_ND)), atol=1e-5,
                               rtol=0)


@pytest.mark.parametrize("exchange", ["capacity", "ragged"])
@pytest.mark.parametrize("kind", ["swiglu", "ffn"])
def test_dropped_assignments_are_reported_and_left_out(exchange, kind):
    """With a small buffer some assignments are dropped; the output must equal the reference with
    exactly those assignments' weights set to zero (an ffn expert's output bias included)."""
    moe, x_ND, routing, experts = _moe_problem(num_tokens=512, audio_fraction=0.9, kind=kind)
    mesh = sharding.make_mesh(MeshConfig(data=4, expert=2))
    with jax.set_mesh(mesh):
        got, dropped = jax.jit(lambda x, r, w: ep_lib.expert_parallel(
            x, r, w, 0.3, exchange=exchange, ragged_all_to_all=emulated_ragged_all_to_all))(x_ND, routing, experts)
    dropped = np.asarray(dropped)
    assert dropped.any() and not dropped[~np.asarray(routing.active_N)].any()
    kept = routing._replace(weight_NK=jnp.where(jnp.asarray(dropped), 0.0, routing.weight_NK))
    want, _ = DISPATCH["reference"](x_ND, kept, experts, 1.0)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)


def test_balanced_placement_is_an_involution_that_mixes_groups():
    slots = ep_lib.slot_of_expert(64, 4, "balanced")
    assert sorted(slots) == list(range(64)) and (slots[slots] == np.arange(64)).all()
    per = 16
    for rank in range(4):
        held = np.flatnonzero(slots // per == rank)  # canonical experts this rank computes
        assert (held < 32).sum() == 8 and (held >= 32).sum() == 8  # half text, half audio experts
    assert (ep_lib.slot_of_expert(64, 4, "canonical") == np.arange(64)).all()


def test_balanced_placement_evens_out_a_skewed_batch():
    """90% audio tokens: canonically the text-expert ranks sit nearly idle."""
    _, _, routing, _ = _moe_problem(num_tokens=512, num_experts=16, audio_fraction=0.9)
    expert, active = np.asarray(routing.expert_NK), np.asarray(routing.active_N)
    canonical = ep_lib.rank_load(expert, active, 4, 16, "canonical")
    balanced = ep_lib.rank_load(expert, active, 4, 16, "balanced")
    assert canonical.sum() == balanced.sum() == 2 * active.sum()
    assert canonical.max() / canonical.mean() > 1.6  # two ranks carry ~90% of the work
    assert balanced.max() / balanced.mean() < 1.3


def test_auto_dispatch_needs_an_expert_axis_and_divisible_tokens():
    moe = tiny().model.moe
    assert ep_lib.select_dispatch(moe, 64) is DISPATCH["capacity"]  # no mesh
    with jax.set_mesh(sharding.make_mesh(MeshConfig(data=2, expert=4))):
        assert ep_lib.select_dispatch(moe, 64) not in DISPATCH.values()
        assert ep_lib.select_dispatch(moe, 3) is DISPATCH["capacity"]  # a decode step of 3 tokens
    with jax.set_mesh(sharding.make_mesh(MeshConfig(data=8))):
        assert ep_lib.select_dispatch(moe, 64) is DISPATCH["capacity"]
    forced = dataclasses.replace(moe, dispatch="expert_parallel")
    _, x_ND, routing, experts = _moe_problem()
    with pytest.raises(sharding.MeshError, match="needs a mesh with an 'expert' axis"):
        ep_lib.select_dispatch(forced, 64)(x_ND, routing, experts, 1.0)
    with jax.set_mesh(sharding.make_mesh(MeshConfig(data=2, expert=4))):
        with pytest.raises(sharding.MeshError, match="60 tokens do not split"):
            head = Routing(routing.expert_NK[:60], routing.weight_NK[:60], routing.active_N[:60])
            ep_lib.expert_parallel(x_ND[:60], head, experts, 1.0)


def test_most_logits_with_a_mesh_equals_one_device(tmp_path):
    from most_jax import cli
    from most_jax.checkpoint.params_io import save_params

    cfg = tiny()
    save_params(tmp_path / "ckpt", cfg, nnx.to_pure_dict(nnx.state(MoST(cfg.model, rngs=nnx.Rngs(2)), nnx.Param)))
    np.savez(tmp_path / "in.npz", tokens=np.asarray(_tokens(cfg, rows=8, length=12, seed=5)))
    common = [str(tmp_path / "ckpt"), "--input", str(tmp_path / "in.npz")]
    assert cli.main(["logits", *common, "--output", str(tmp_path / "one.npz")]) == 0
    assert cli.main(["logits", *common, "--output", str(tmp_path / "ep.npz"), "--mesh", "data=2,expert=4"]) == 0
    one, ep = (np.load(tmp_path / f"{n}.npz")["logits"] for n in ("one", "ep"))
    np.testing.assert_allclose(ep, one, atol=1e-5, rtol=0)
    # Rows that do not split 8 ways (3 rows; passes of 4 of 8 rows) are padded, the padding dropped.
    np.savez(tmp_path / "in3.npz", tokens=np.asarray(_tokens(cfg, rows=3, length=12, seed=6)))
    three = [str(tmp_path / "ckpt"), "--input", str(tmp_path / "in3.npz")]
    assert cli.main(["logits", *three, "--output", str(tmp_path / "one3.npz")]) == 0
    assert cli.main(["logits", *three, "--output", str(tmp_path / "ep3.npz"), "--mesh", "data=2,expert=4"]) == 0
    one3, ep3 = (np.load(tmp_path / f"{n}.npz")["logits"] for n in ("one3", "ep3"))
    assert ep3.shape == one3.shape and ep3.shape[0] == 3
    np.testing.assert_allclose(ep3, one3, atol=1e-5, rtol=0)
    assert cli.main(["logits", *common, "--output", str(tmp_path / "ep4.npz"), "--mesh", "data=2,expert=4",
                     "--batch-size", "3"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "ep4.npz")["logits"], one, atol=1e-5, rtol=0)


def test_bench_ep_reports_bytes_and_load():
    from most_jax.bench.ep import run

    cfg = tiny("model.moe.capacity_factor=1.25", *sharding.parse_mesh_arg("data=4,expert=2"))
    r = run(cfg, tokens=4096, repeats=1)
    d, k, e = cfg.model.hidden_size, cfg.model.moe.top_k, cfg.model.moe.num_experts
    assert r["simulated"] and r["bytes_min_per_layer_forward"] == 4096 * k * d * 4 * 2
    assert r["capacity_per_expert"] == 160  # 1.25 x 512 local tokens x 2 / 8 experts
    assert r["bytes_exchanged_per_layer_forward"] == 8 * e * 160 * d * 4 * 2
    assert r["bytes_min_per_step"] == r["bytes_min_per_layer_forward"] * 2 * cfg.model.num_moe_layers
    assert r["rank_load_max_over_mean"]["balanced"] < 1.2 < r["rank_load_max_over_mean"]["canonical"]
