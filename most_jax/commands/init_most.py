"""`most init-most --from HF_DSV2_DIR --out CKPT`: a MoST checkpoint initialised from DeepSeek-V2."""

from __future__ import annotations

import argparse
import sys

from most_jax.checkpoint.init_most import UPCYCLE, init_most

DESCRIPTION = """\
Builds a MoST checkpoint (modality-aware routing) from a Hugging Face DeepSeek-V2 directory such as
DeepSeek-V2-Lite. By default as the paper does: every tensor one-to-one, experts j -> j, the first
half of the routed experts serving text and the second half audio, gate unchanged. --upcycle
copy-text makes the audio half a copy of the text half; --upcycle grow --audio-experts N keeps all
experts for text and adds N audio experts copied from them (gate rows copied with each expert).
--reinit-audio-rows draws the embedding rows and head columns of the audio units and markers
afresh from N(0, initializer_range). The result is a params checkpoint for
`most train --init-from CKPT`. Streams layer by layer; CKPT must not exist.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("init-most", help="initialise MoST from a DeepSeek-V2 checkpoint",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="hf_dir", required=True, metavar="HF_DSV2_DIR",
                        help="Hugging Face DeepSeek-V2 directory (config.json + safetensors)")
    parser.add_argument("--out", required=True, metavar="CKPT", help="checkpoint directory to create")
    parser.add_argument("--upcycle", choices=UPCYCLE, default="none",
                        help="how the audio experts start (default none: experts j -> j as in the paper)")
    parser.add_argument("--audio-experts", type=int, default=None, metavar="N",
                        help="number of new audio experts (with --upcycle grow)")
    parser.add_argument("--reinit-audio-rows", action="store_true",
                        help="fresh N(0, initializer_range) embedding rows / head columns for audio ids")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fresh rows (default 0)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="parameter (and compute) dtype (default: float32)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    cfg = init_most(args.hf_dir, args.out, upcycle=args.upcycle, audio_experts=args.audio_experts,
                    reinit_audio_rows=args.reinit_audio_rows, seed=args.seed, dtype=args.dtype,
                    progress=progress)
    groups = ", ".join(f"{g.name}={g.first_expert}..{g.first_expert + g.num_experts - 1}"
                       for g in cfg.model.moe.modality_groups)
    print(f"wrote {args.out}: {cfg.model.moe.num_experts} experts, modality groups {groups}")
    return 0
