"""`most hubert ...`: HuBERT speech encoders: import a transformers HubertModel, compute features."""

from __future__ import annotations

import argparse

IMPORT_DESCRIPTION = """\
Reads a transformers HubertModel directory HF_DIR (config.json + model.safetensors or a sharded
index; the positional conv's weight norm in either the parametrizations.weight.original0/1 or the
older weight_g/weight_v spelling; conv_pos_batch_norm models such as mhubert-base-25hz included) and
writes OUT, a most_jax checkpoint of the HuBERT family. A missing, unexpected, misshapen or non-float
tensor is an error naming it. OUT must not exist; it appears only once complete.
"""

FEATURES_DESCRIPTION = """\
Runs the HuBERT checkpoint CKPT (evaluation mode: no dropout, no masking) on IN.npz, which holds
waveforms float [B, S] (16 kHz, right-padded) and lengths int [B] (valid samples), and writes
OUT.npz: hidden_states float32 [layers + 1, B, T, D] (the first layer's input, then every layer's
output, as transformers' output_hidden_states), last_hidden_state float32 [B, T, D] (after the final
LayerNorm for stable-layer-norm models) and frame_lengths int32 [B]. Frames past an utterance's
length are zero. Each utterance of a padded batch gets what it gets alone.
"""


class HubertInputError(ValueError):
    """A features input file is malformed (names the file and array)."""


def register(subparsers) -> None:
    parser = subparsers.add_parser("hubert", help="HuBERT: import a transformers HubertModel, compute features",
                                   description=__doc__.splitlines()[0].split(": ", 1)[1])
    sub = parser.add_subparsers(dest="hubert_command", required=True, metavar="COMMAND")
    imp = sub.add_parser("import-hf", help="convert a transformers HubertModel directory",
                         description=IMPORT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    imp.add_argument("hf_dir", metavar="HF_DIR", help="directory with config.json and safetensors weights")
    imp.add_argument("out", metavar="OUT", help="checkpoint directory to create")
    imp.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                     help="parameter (and compute) dtype of the converted model (default: float32)")
    imp.set_defaults(handler=run_import)
    feats = sub.add_parser("features", help="every layer's hidden states of waveforms",
                           description=FEATURES_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    feats.add_argument("checkpoint", metavar="CKPT", help="HuBERT checkpoint directory")
    feats.add_argument("--input", required=True, metavar="IN.npz", help="waveforms and lengths")
    feats.add_argument("--output", required=True, metavar="OUT.npz", help="file to write")
    feats.set_defaults(handler=run_features)


def run_import(args: argparse.Namespace) -> int:
    from most_jax.checkpoint.hf_import import HFImportError
    from most_jax.checkpoint.hubert_hf import import_hubert
    from most_jax.checkpoint.params_io import CheckpointError
    from most_jax.config import ConfigError

    try:
        cfg = import_hubert(args.hf_dir, args.out, args.dtype).model
    except (HFImportError, CheckpointError, ConfigError) as e:
        raise SystemExit(f"most hubert import-hf: error: {e}") from None
    kind = "stable layer norm" if cfg.do_stable_layer_norm else "post layer norm"
    print(f"wrote {args.out}: {cfg.num_hidden_layers} layers d={cfg.hidden_size} ({kind}, {cfg.feat_extract_norm} "
          f"norm features, {cfg.frame_rate_samples} samples per frame), dtype {args.dtype}")
    return 0


def read_waveforms(path: str):
    """(waveforms float32 [B, S], lengths int32 [B]) from an .npz."""
    import zipfile

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise HubertInputError(f"{path}: no such input file") from None
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise HubertInputError(f"{path}: not a readable .npz file ({e})") from None
    for key in ("waveforms", "lengths"):
        if key not in arrays:
            raise HubertInputError(f"{path}: no {key!r} array (waveforms float [B, S], lengths int [B])")
    unknown = sorted(set(arrays) - {"waveforms", "lengths"})
    if unknown:
        raise HubertInputError(f"{path}: unexpected arrays {unknown}; expected only waveforms and lengths")
    wave, lengths = arrays["waveforms"], arrays["lengths"]
    if wave.ndim != 2 or not np.issubdtype(wave.dtype, np.floating):
        raise HubertInputError(f"{path}: waveforms must be float [B, S], got {wave.dtype} {list(wave.shape)}")
    if lengths.shape != wave.shape[:1] or not np.issubdtype(lengths.dtype, np.integer):
        raise HubertInputError(f"{path}: lengths must be int [B={wave.shape[0]}], got {lengths.dtype} "
                               f"{list(lengths.shape)}")
    return wave.astype(np.float32), lengths.astype(np.int32)


def run_features(args: argparse.Namespace) -> int:
    from most_jax.checkpoint.params_io import CheckpointError, restore_model
    from most_jax.config import ConfigError
    from most_jax.infer.logits import LogitsInputError, write_npz_atomic
    from most_jax.models.hubert.encode import encode

    try:
        cfg, model = restore_model(args.checkpoint)
        if cfg.model.family != "hubert":
            raise CheckpointError(f"{args.checkpoint}: a {cfg.model.family} checkpoint, not hubert")
        wave, lengths = read_waveforms(args.input)
        try:
            hidden, last, frames = encode(model, wave, lengths)
        except ValueError as e:
            raise HubertInputError(f"{args.input}: {e}") from None
        write_npz_atomic(args.output, hidden_states=hidden, last_hidden_state=last, frame_lengths=frames)
    except (HubertInputError, CheckpointError, ConfigError, LogitsInputError) as e:
        raise SystemExit(f"most hubert features: error: {e}") from None
    print(f"wrote {args.output}: hidden_states {list(hidden.shape)}, frame_lengths {frames.tolist()}")
    return 0
