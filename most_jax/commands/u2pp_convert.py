"""`most u2pp import-wenet` / `most u2pp export-wenet`: WeNet U2++ checkpoints in and out.

Both read or write PyTorch `.pt` files and so need torch (only these two commands do)."""

from __future__ import annotations

import argparse

IMPORT_DESCRIPTION = """\
Reads a WeNet state_dict (WENET.pt, e.g. exp/u2pp/final.pt) and its training YAML (TRAIN.yaml:
encoder_conf, decoder_conf, model_conf, input_dim, output_dim; CMVN statistics from the state_dict's
encoder.global_cmvn.mean/istd, else from cmvn_conf.cmvn_file) and writes OUT: an Orbax checkpoint of
the U2++ parameters (per-expert weights stacked) plus the model config, readable by the other most
commands and by training (--init-from). Only WeNet's Conformer encoder + BiTransformer decoder + CTC
(the U2++ recipe, dense or MoE FFNs) is supported; any other option is refused by name, as is a
missing, unexpected or misshapen tensor. OUT must not exist. Needs torch.
"""

EXPORT_DESCRIPTION = """\
Writes OUT_DIR/final.pt (a WeNet state_dict, per-expert weights unstacked) and OUT_DIR/train.yaml
(and OUT_DIR/global_cmvn, WeNet's JSON CMVN stats, when the model normalises its input) from the U2++
checkpoint CKPT, such that WeNet's init_model(train.yaml) loads final.pt with strict key matching.
A checkpoint imported with import-wenet exports byte-equal tensors. OUT_DIR must not exist; it
appears only once complete. Needs torch.
"""


def register_import(subparsers) -> None:
    parser = subparsers.add_parser("import-wenet", help="convert a WeNet U2++ checkpoint (.pt + train.yaml)",
                                   description=IMPORT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wenet_pt", metavar="WENET.pt", help="WeNet state_dict file")
    parser.add_argument("train_yaml", metavar="TRAIN.yaml", help="WeNet training YAML of that model")
    parser.add_argument("out", metavar="OUT", help="checkpoint directory to create")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="parameter (and compute) dtype of the converted model (default: float32)")
    parser.set_defaults(handler=run_import)


def register_export(subparsers) -> None:
    parser = subparsers.add_parser("export-wenet", help="write a U2++ checkpoint as a WeNet .pt + train.yaml",
                                   description=EXPORT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt", metavar="CKPT", help="U2++ checkpoint (step directory, manager root or run directory)")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="directory to create")
    parser.set_defaults(handler=run_export)


def run_import(args: argparse.Namespace) -> int:
    from most_jax.checkpoint.wenet import import_wenet

    cfg = import_wenet(args.wenet_pt, args.train_yaml, args.out, args.dtype).model
    enc, dec = cfg.encoder, cfg.decoder
    ffn = (f"{enc.moe.num_experts} experts top-{enc.moe.top_k}" if enc.mlp_type == "moe" else "dense FFNs")
    print(f"wrote {args.out}: encoder {enc.num_blocks} blocks d={enc.output_size} ({ffn}), decoder "
          f"{dec.num_blocks}+{dec.r_num_blocks} blocks, vocabulary {cfg.vocab_size}, dtype {args.dtype}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from most_jax.checkpoint.wenet import export_wenet

    written = export_wenet(args.ckpt, args.out_dir)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
