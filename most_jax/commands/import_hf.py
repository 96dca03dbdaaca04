"""`most import-hf HF_DIR OUT_DIR`: a Hugging Face DeepSeek-V2 / MoST checkpoint -> a most_jax checkpoint."""

from __future__ import annotations

import argparse
import sys

from most_jax.checkpoint.hf_import import HFImportError, import_hf
from most_jax.checkpoint.params_io import CheckpointError
from most_jax.checkpoint.safetensors_file import SafetensorsError
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
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        cfg = import_hf(args.hf_dir, args.out_dir, args.dtype, progress=progress)
    except (HFImportError, ConfigError, CheckpointError, SafetensorsError) as e:
        raise SystemExit(f"most import-hf: error: {e}") from None
    m = cfg.model
    groups = ", ".join(f"{g.name}={g.first_expert}..{g.first_expert + g.num_experts - 1}"
                       for g in m.moe.modality_groups) or "none"
    print(f"wrote {args.out_dir}: {m.num_layers} layers ({m.first_k_dense_replace} dense), "
          f"{m.moe.num_experts} experts top-{m.moe.top_k}, modality groups: {groups}, dtype {args.dtype}")
    return 0
