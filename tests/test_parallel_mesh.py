"""Mesh construction, the logical-axis rules (golden file), sharded init and the bad-mesh errors."""

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from most_jax import parallel, sharding
from most_jax.config import ConfigError, MeshConfig, load_config
from most_jax.models.most import MoST

GOLDEN = Path(__file__).parent / "golden" / "most_v2_lite_sharding.json"


def tiny(*overrides):
    return load_config("configs/most_tiny.yaml", list(overrides))


def test_axis_sizes_fill_the_rest():
    assert sharding.axis_sizes(MeshConfig(data=-1, expert=4), 8) == dict(slice=1, data=2, fsdp=1, expert=4, tensor=1)
    assert sharding.axis_sizes(MeshConfig(data=1, fsdp=2, expert=2, tensor=2), 8)["tensor"] == 2
    mesh = sharding.make_mesh(MeshConfig(data=2, expert=4))
    assert dict(mesh.shape) == dict(slice=1, data=2, fsdp=1, expert=4, tensor=1)
    assert mesh.devices.size == 8


@pytest.mark.parametrize("mesh_cfg, devices, message", [
    (MeshConfig(data=2, expert=2), 8, "multiply to 4 devices, but there are 8"),
    (MeshConfig(data=-1, expert=3), 8, "does not divide the 8 devices"),
])
def test_mesh_product_must_match_devices(mesh_cfg, devices, message):
    with pytest.raises(sharding.MeshError, match=message):
        sharding.axis_sizes(mesh_cfg, devices)


def test_mesh_argument_parsing():
    assert sharding.parse_mesh_arg("data=2, expert=4") == ["mesh.data=2", "mesh.expert=4"]
    cfg = tiny(*sharding.parse_mesh_arg("fsdp=2,expert=2,tensor=2,data=1"))
    assert (cfg.mesh.fsdp, cfg.mesh.expert, cfg.mesh.tensor, cfg.mesh.data) == (2, 2, 2, 1)
    for bad in ("data2", "pipeline=2", "data=two", ""):
        with pytest.raises(ConfigError, match="--mesh"):
            sharding.parse_mesh_arg(bad)
    with pytest.raises(ConfigError, match="only one axis may be -1"):
        tiny("mesh.fsdp=-1")  # data is -1 by default
    with pytest.raises(ConfigError, match="mesh.tensor"):
        tiny("mesh.tensor=0")


def test_experts_must_split_over_the_expert_axis():
    cfg = tiny("model.moe.num_experts=6", "model.moe.modality_groups=[]")
    mesh = sharding.make_mesh(MeshConfig(data=2, expert=4))
    with pytest.raises(sharding.MeshError, match="num_experts=6 is not divisible by mesh.expert=4"):
        parallel.check_model_fits(cfg.model, mesh)
    with pytest.raises(sharding.MeshError, match="6 experts do not split over mesh.expert=4"):
        parallel.param_sharding_fn(cfg.model)(nnx.to_pure_dict(nnx.state(nnx.eval_shape(
            lambda: MoST(cfg.model, rngs=nnx.Rngs(0))), nnx.Param)), mesh)
    balanced = tiny("model.moe.ep_placement=balanced")
    with pytest.raises(sharding.MeshError, match="divisible by expert\\^2 = 16"):
        parallel.check_model_fits(balanced.model, mesh)
    parallel.check_model_fits(balanced.model, sharding.make_mesh(MeshConfig(data=4, expert=2)))


def test_batch_must_split_over_data_axes():
    mesh = sharding.make_mesh(MeshConfig(data=2, expert=4))
    sharding.check_batch_fits(16, 2, mesh)
    with pytest.raises(sharding.MeshError, match=r"data.batch_size=12 .*\(data=2 x expert=4 = 8 ways\)"):
        sharding.check_batch_fits(12, 1, mesh)
    with pytest.raises(sharding.MeshError, match="2 micro-batch"):
        sharding.check_batch_fits(8, 2, mesh)  # micro-batches of 4 rows over 8 shards
    # tensor ranks share rows: fsdp 2 x expert 2 x tensor 2 splits the batch 4 ways
    sharding.check_batch_fits(4, 1, sharding.make_mesh(MeshConfig(data=1, fsdp=2, expert=2, tensor=2)))


def test_golden_sharding_table_of_most_v2_lite():
    """Param path -> (shape, logical names, partition spec) of the 16B model; update the golden file
    deliberately when the parameter layout or the rules change."""
    golden = json.loads(GOLDEN.read_text())
    table = parallel.sharding_table(load_config("configs/most_v2_lite.yaml").model)
    assert sorted(table) == sorted(golden)
    for path, entry in golden.items():
        assert table[path] == entry, path
    # the experts are the expert-parallel axis, their width the tensor axis, the model dim FSDP
    assert golden["moe_layers/moe/w_gate"]["spec"] == [None, "expert", "fsdp", "tensor"]


def test_spec_falls_back_to_whole_dims_except_experts():
    mesh = sharding.make_mesh(MeshConfig(data=1, fsdp=2, expert=2, tensor=2))
    assert sharding.logical_to_spec(("embed", "mlp"), (64, 24), mesh) == PartitionSpec("fsdp", "tensor")
    assert sharding.logical_to_spec(("embed", "mlp"), (63, 24), mesh) == PartitionSpec(None, "tensor")
    assert sharding.logical_to_spec(("batch", "length"), mesh=mesh) == PartitionSpec(("fsdp", "expert"), None)
    with pytest.raises(sharding.MeshError, match="unknown_axis|no sharding rule"):
        sharding.logical_to_spec(("unknown_axis",))


def test_sharded_init_matches_unsharded_and_partitions_experts():
    cfg = tiny("model.num_layers=2")
    mesh = sharding.make_mesh(MeshConfig(data=2, expert=4))
    model = parallel.init_sharded_model(cfg.model, mesh, seed=3)
    sharded = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    plain = nnx.to_pure_dict(nnx.state(MoST(cfg.model, rngs=nnx.Rngs(3)), nnx.Param))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-8), sharded, plain)

    w = sharded["moe_layers"]["moe"]["w_gate"]
    assert w.sharding.spec == PartitionSpec(None, "expert", "fsdp" if mesh.shape["fsdp"] > 1 else None, None)
    experts = {k: sharded["moe_layers"]["moe"][k] for k in ("w_gate", "w_up", "w_down")}
    total = sum(a.nbytes for a in experts.values())
    per_device = sharding.bytes_per_device(experts)
    assert len(per_device) == 8
    assert all(b == total // 4 for b in per_device.values())  # 1/EP of the expert weights on every device
    # everything else (data-parallel replicas) is whole on each device
    rest = jax.tree.map(lambda a: a, sharded)
    del rest["moe_layers"]["moe"]["w_gate"], rest["moe_layers"]["moe"]["w_up"], rest["moe_layers"]["moe"]["w_down"]
    rest_total = sum(a.nbytes for a in jax.tree.leaves(rest))
    assert set(sharding.bytes_per_device(rest).values()) == {rest_total}


def test_fsdp_and_tensor_divide_the_other_weights():
    cfg = tiny("model.num_layers=2")
    mesh = sharding.make_mesh(MeshConfig(data=1, fsdp=2, expert=2, tensor=2))
    params = nnx.to_pure_dict(nnx.state(parallel.init_sharded_model(cfg.model, mesh), nnx.Param))
    q = params["moe_layers"]["attn"]["q_proj"]["kernel"]
    assert q.sharding.spec == PartitionSpec(None, "fsdp", "tensor")
    assert {s.data.shape for s in q.addressable_shards} == {(q.shape[0], q.shape[1] // 2, q.shape[2] // 2)}
    w = params["moe_layers"]["moe"]["w_down"]
    assert {s.data.shape for s in w.addressable_shards} == {(1, 4, 12, 32)}  # [L, E/2, F/2, D/2]
    total = sum(a.nbytes for a in jax.tree.leaves(params))
    assert max(sharding.bytes_per_device(params).values()) < total / 3


def test_model_without_moe_layers_rejects_an_expert_axis():
    cfg = dataclasses.replace(tiny().model, first_k_dense_replace=3)
    with pytest.raises(sharding.MeshError, match="no MoE layers"):
        parallel.check_model_fits(cfg, sharding.make_mesh(MeshConfig(data=4, expert=2)))
