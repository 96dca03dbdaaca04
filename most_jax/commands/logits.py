"""`most logits CKPT --input IN.npz --output OUT.npz`: teacher-forced logits of a checkpoint."""

from __future__ import annotations

import argparse
import sys

from most_jax import parallel, sharding
from most_jax.checkpoint.params_io import load_config, restore_model
from most_jax.infer.logits import batched_logits, read_token_batch, write_npz_atomic

DESCRIPTION = """\
Runs the model of checkpoint CKPT (from `most import-hf`, or a training run: a checkpoint manager
root, whose latest step is used, or one step directory) on the token rows of IN.npz and writes
their logits to OUT.npz. IN.npz holds `tokens` (int32 [B, T]) and optionally `modality` (int32
[B, T]: 0 text, 1 audio, -1 no expert group); without it, modality comes from token ids through
the checkpoint's vocabulary layout. OUT.npz holds `logits` (float32 [B, T, V]).

The routed experts run dropless by default, so every row is exact and independent of the others;
--set model.moe.dispatch=capacity (or reference) chooses another path. With --mesh (e.g.
data=2,expert=4) the parameters are sharded over the devices and, when the expert axis is > 1, the
experts run expert-parallel with buffers large enough that nothing is dropped.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("logits", help="logits of a checkpoint on token rows (checks a conversion)",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint directory")
    parser.add_argument("--input", required=True, metavar="IN.npz", help="tokens [B, T] and optional modality [B, T]")
    parser.add_argument("--output", required=True, metavar="OUT.npz", help="where to write logits [B, T, V]")
    parser.add_argument("--batch-size", type=int, default=0, metavar="N",
                        help="rows per forward pass (default 0: all rows at once)")
    parser.add_argument("--mesh", default=None, metavar="AXIS=N,...",
                        help="shard over a device mesh, e.g. data=2,expert=4 (rows per pass are padded to a "
                             "multiple of the data-like axes' product; the padding is dropped)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of the checkpoint's config, e.g. --set model.dtype=float32")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    overrides = ["model.moe.dispatch=dropless", *args.overrides]
    mesh = None
    if args.mesh:
        mesh, overrides = _mesh_overrides(args, overrides)
    tokens, modality = read_token_batch(args.input, load_config(args.checkpoint, overrides).model)
    cfg, model = restore_model(args.checkpoint, overrides)
    print(f"{args.checkpoint}: {tokens.shape[0]} rows x {tokens.shape[1]} tokens"
          f"{'' if modality is not None else ' (modality from token ids)'}", file=sys.stderr, flush=True)
    if mesh is None:
        logits = batched_logits(model, tokens, modality, args.batch_size)
    else:
        logits = _sharded_logits(cfg, model, mesh, tokens, modality, args.batch_size)
    write_npz_atomic(args.output, logits=logits)
    print(f"wrote {args.output}: logits {list(logits.shape)} float32")
    return 0


def _mesh_overrides(args: argparse.Namespace, overrides: list[str]):
    """(mesh, overrides): the mesh from --mesh; with an expert axis > 1 the expert-parallel dispatch,
    its buffers sized so that nothing can be dropped (capacity C = all local tokens; a ragged receive
    buffer for every rank's rows)."""
    overrides = [*overrides, *sharding.parse_mesh_arg(args.mesh)]
    cfg = load_config(args.checkpoint, overrides)
    mesh = sharding.make_mesh(cfg.mesh)
    parallel.check_model_fits(cfg.model, mesh)
    ep = mesh.shape["expert"]
    if ep > 1:
        moe = cfg.model.moe
        factor = max(moe.num_experts / moe.top_k, ep)
        overrides = [*overrides, "model.moe.dispatch=expert_parallel", f"model.moe.capacity_factor={factor}"]
    return mesh, overrides


def _sharded_logits(cfg, model, mesh, tokens, modality, batch_size):
    import jax
    from flax import nnx

    graphdef, state = nnx.split(model)
    placed = parallel.place_params(cfg.model, nnx.to_pure_dict(state), mesh)
    nnx.replace_by_pure_dict(state, placed)
    with jax.set_mesh(mesh):  # MoE layers find the expert axis here at trace time
        return batched_logits(nnx.merge(graphdef, state), tokens, modality, batch_size,
                              row_multiple=sharding.batch_shards(mesh))

