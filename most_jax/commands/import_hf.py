"""`most import-hf HF_DIR OUT_DIR`: a Hugging Face DeepSeek-V2 / MoST checkpoint -> a most_jax checkpoint."""

from __future__ import annotations

import argparse
import sys

from most_jax.checkpoint.hf_config import norm_topk_reading_of, read_hf_config
from most_jax.checkpoint.hf_import import import_hf
from most_jax.config import ConfigError

DESCRIPTION = """\
Reads config.json (model_type deepseek_v2 or MoST; rope settings spelled rope_scaling or
rope_parameters) and the safetensors weights (model.safetensors, or the shards listed in
model.safetensors.index.json; routed experts per expert or fused) of HF_DIR, and writes OUT_DIR:
an Orbax checkpoint of the parameters plus the model config, readable by `most logits`,
training (--init-from) and evaluation. OUT_DIR must not exist; it appears only once complete.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("import-hf", help="convert a Hugging Face DeepSeek-V2 / MoST checkpoint",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("hf_dir", metavar="HF_DIR", help="directory with config.json and *.safetensors")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="checkpoint directory to create")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="parameter (and compute) dtype of the converted model (default: float32)")
    parser.add_argument("--mesh", default=None, metavar="AXIS=SIZE,...",
                        help="target mesh, e.g. fsdp=16,expert=8: store each parameter in chunks of one device's "
                             "shard under that mesh (and one layer), so the pod reads exactly its own chunks; "
                             "axes left out have size 1. Any mesh can still restore the result.")
    parser.add_argument("--compress", action="store_true",
                        help="store the arrays zstd-compressed in one OCDBT database, written through TensorStore "
                             "(about 0.7x the disk space for bf16 weights, but the conversion is then CPU-bound and "
                             "2-3x slower); by default each array is an uncompressed zarr directory whose chunk "
                             "files are written around the page cache. Restoring reads either")
    parser.set_defaults(handler=run)


def mesh_sizes(text: str) -> dict[str, int]:
    """'fsdp=16,expert=8' -> every mesh axis with its size (1 where not given)."""
    from most_jax.config import MESH_AXES
    from most_jax.sharding import parse_mesh_arg

    sizes = {axis: 1 for axis in MESH_AXES}
    for item in parse_mesh_arg(text):
        axis, value = item.removeprefix("mesh.").split("=")
        if int(value) <= 0:
            raise ConfigError(f"--mesh {text!r}: {axis} must be a positive size, got {value}")
        sizes[axis] = int(value)
    return sizes


def run(args: argparse.Namespace) -> int:
    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    sizes = None if args.mesh is None else mesh_sizes(args.mesh)
    cfg = import_hf(args.hf_dir, args.out_dir, args.dtype, progress=progress, mesh_sizes=sizes,
                    compress=args.compress)
    reading, why = norm_topk_reading_of(read_hf_config(args.hf_dir))
    m = cfg.model
    groups = ", ".join(f"{g.name}={g.first_expert}..{g.first_expert + g.num_experts - 1}"
                       for g in m.moe.modality_groups) or "none"
    print(f"wrote {args.out_dir}: {m.num_layers} layers ({m.first_k_dense_replace} dense), "
          f"{m.moe.num_experts} experts top-{m.moe.top_k}, modality groups: {groups}, dtype {args.dtype}")
    print(f"top-k weights: norm_topk_prob {str(m.moe.norm_topk_prob).lower()}, norm_topk_reading {reading} ({why})")
    return 0
