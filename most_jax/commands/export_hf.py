"""`most export-hf CKPT OUT_DIR`: a most_jax checkpoint -> Hugging Face safetensors + config.json."""

from __future__ import annotations

import argparse
import re
import sys

from most_jax.checkpoint.hf_export import MAX_SHARD_BYTES, export_hf

DESCRIPTION = """\
Writes the parameters of CKPT (from `most import-hf` or `most init-most`, or a training run: its
directory, its checkpoint manager root or one step directory; optimizer state is ignored) to OUT_DIR
as a Hugging Face checkpoint: safetensors shards with per-expert tensor names as in the
DeepSeek-V2-Lite / MoST releases, model.safetensors.index.json, and config.json. A model without
modality routing exported as deepseek_v2 loads in transformers' DeepseekV2ForCausalLM. Tensors are
streamed one layer slice at a time; OUT_DIR must not exist and appears only once complete.
"""

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """'5GB', '20KB', '300MiB' or a byte count -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"expected a size such as 5GB, 200MB or 4096, got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def register(subparsers) -> None:
    parser = subparsers.add_parser("export-hf", help="convert a checkpoint to Hugging Face safetensors",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint directory")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="Hugging Face directory to create")
    parser.add_argument("--model-type", choices=("MoST", "deepseek_v2"), default=None,
                        help="config.json model_type (default: MoST if the model routes by modality or "
                             "hears continuous speech (MoST-C), else deepseek_v2)")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default=None,
                        help="tensor dtype in the files (default: the checkpoint's parameter dtype)")
    parser.add_argument("--max-shard-size", type=parse_size, default=MAX_SHARD_BYTES, metavar="SIZE",
                        help="largest shard file, e.g. 5GB (default), 200MB")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    export_hf(args.checkpoint, args.out_dir, args.model_type, args.dtype, args.max_shard_size, progress)
    print(f"wrote {args.out_dir}")
    return 0
