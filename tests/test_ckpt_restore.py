"""Restore anywhere: a checkpoint written from one mesh restores onto another mesh (other device
count and axes) and onto one CPU, parameters only; mismatches are reported by parameter name;
import-hf --mesh lays chunks out for a target mesh."""

from __future__ import annotations

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from jax.sharding import NamedSharding

from cli_check import cli_error
from hf_reference import tiny_model
from most_jax.checkpoint.hf_import import import_hf
from most_jax.checkpoint.params_io import CheckpointError, load_checkpoint, save_params
from most_jax.checkpoint.param_tree import flatten, logical_specs, unflatten
from most_jax.cli import main
from most_jax.config import MeshConfig, load_config
from most_jax.models.most import MoST
from most_jax.sharding import logical_to_spec, make_mesh


@pytest.fixture(scope="module")
def tiny():
    cfg = load_config("configs/most_tiny.yaml")
    return cfg, nnx.to_pure_dict(nnx.state(MoST(cfg.model, rngs=nnx.Rngs(4)), nnx.Param))


def _placed(cfg, params, mesh):
    logical = logical_specs(cfg.model)
    return unflatten({p: jax.device_put(v, NamedSharding(mesh, logical_to_spec(tuple(logical[p]), v.shape, mesh)))
                      for p, v in flatten(params)})


def test_restore_onto_another_mesh_and_one_device(tiny, tmp_path):
    cfg, params = tiny
    writer = make_mesh(MeshConfig(data=1, fsdp=2, expert=4), jax.devices())
    placed = _placed(cfg, params, writer)
    assert len(placed["moe_layers"]["moe"]["w_up"].sharding.device_set) == 8
    save_params(tmp_path / "ck", cfg, placed)

    reader = make_mesh(MeshConfig(data=1, expert=2, tensor=2), jax.devices()[4:])
    _, restored = load_checkpoint(tmp_path / "ck", mesh=reader)
    w_up = restored["moe_layers"]["moe"]["w_up"]  # [L, E, D, F]: experts over `expert`, F over `tensor`
    assert w_up.sharding.mesh == reader and w_up.sharding.spec == jax.P(None, "expert", None, "tensor")
    assert w_up.addressable_shards[0].data.shape == (2, 4, 64, 12)
    head = restored["lm_head"]
    assert head.sharding.spec == jax.P(None, "tensor")
    for (path, want), (_, got) in zip(flatten(params), flatten(restored)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=".".join(path))

    _, single = load_checkpoint(tmp_path / "ck")
    assert len(single["moe_layers"]["moe"]["w_up"].sharding.device_set) == 1
    np.testing.assert_array_equal(np.asarray(single["embed"]["embedding"]), np.asarray(params["embed"]["embedding"]))


def test_imported_checkpoint_restores_sharded(tmp_path):
    model = tiny_model(seed=31, n_routed_experts=8)
    model.save_pretrained(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "ck")
    _, plain = load_checkpoint(tmp_path / "ck")
    mesh = make_mesh(MeshConfig(data=1, fsdp=2, expert=4), jax.devices())
    _, sharded = load_checkpoint(tmp_path / "ck", mesh=mesh)
    assert sharded["moe_layers"]["moe"]["w_gate"].sharding.spec == jax.P(None, "expert", None, None)
    for (path, a), (_, b) in zip(flatten(plain), flatten(sharded)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=".".join(path))


def test_mismatched_parameters_are_named(tiny, tmp_path):
    cfg, params = tiny
    save_params(tmp_path / "ck", cfg, params)
    with pytest.raises(CheckpointError, match=r"ck/params do not match the model: unexpected parameters: "
                                              r"moe_layers.moe.shared.down_proj.kernel, "
                                              r"moe_layers.moe.shared.gate_proj.kernel, "
                                              r"moe_layers.moe.shared.up_proj.kernel"):
        load_checkpoint(tmp_path / "ck", ["model.moe.num_shared_experts=0"])
    with pytest.raises(CheckpointError, match=r"missing parameters: dense_layers.attn.q_a_norm.scale, .*"
                                              r"moe_layers.attn.q_b_proj.kernel; unexpected parameters: "
                                              r"dense_layers.attn.q_proj.kernel, moe_layers.attn.q_proj.kernel"):
        load_checkpoint(tmp_path / "ck", ["model.attention.q_lora_rank=8"])


def test_import_for_a_target_mesh_chunks_by_shard(tmp_path):
    """--mesh stores each parameter in chunks of one device's shard (and one layer); it restores anywhere."""
    model = tiny_model(seed=32, n_routed_experts=8)
    model.save_pretrained(tmp_path / "hf")
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "ck"), "--mesh", "fsdp=3,expert=4"]) == 0
    tree = ocp.StandardCheckpointer().metadata(tmp_path / "ck" / "params").item_metadata.tree
    assert tree["moe_layers"]["moe"]["w_up"].storage.chunk_shape == (1, 2, 5, 9)  # [L, E/4, D/3, F]
    assert tree["lm_head"].storage.chunk_shape == (5, 101)
    _, plain = load_checkpoint(tmp_path / "ck")
    np.testing.assert_array_equal(np.asarray(plain["moe_layers"]["moe"]["w_up"][1, 7]),
                                  model.model.layers[2].mlp.experts.gate_up_proj[7, 9:].detach().numpy().T)
    cli_error(["import-hf", str(tmp_path / "hf"), str(tmp_path / "x"), "--mesh", "fsdp=2,pipeline=2"],
              "--mesh 'fsdp=2,pipeline=2'")
