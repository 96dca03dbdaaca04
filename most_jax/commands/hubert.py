"""`most hubert ...`: HuBERT speech encoders: import a transformers HubertModel, compute features, pretrain."""

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


PREPARE_DESCRIPTION = """\
Writes OUT, the training records of HuBERT pretraining: each utterance of MANIFEST as 16-bit PCM with
its frame targets, the k-means ids that the unit extractor --units (from `most data train-units`,
with --no-dedup not needed: every frame's id is kept) gives each frame. The extractor's rate must
be the model's frame rate (50 Hz for the base conv stack): MFCC units (--rate 50) for iteration 1,
units of an earlier HuBERT's layer (--features hubert --hubert CKPT --layer N) for iteration 2.
Unreadable audio, audio over --max-audio-seconds and audio without a frame are skipped and counted
in OUT/report.json. OUT appears only once complete.
"""

TRAIN_DESCRIPTION = """\
`most train` for a HuBERT config (model.family: hubert, model.num_clusters = the targets' K;
data.records: a `most hubert prepare` directory): masked prediction of the frame targets through the
common trainer. Each step draws data.batch_size utterances, crops them to data.max_audio_seconds at
random, masks spans (model.mask_prob, model.mask_length) and predicts the masked frames' ids.
Writes RUN_DIR/metrics.jsonl (loss, masked_accuracy) and RUN_DIR/checkpoints/; --resume continues
exactly; a checkpoint is also a `--hubert CKPT` for the next iteration's units.
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
    prep = sub.add_parser("prepare", help="pretraining records: audio + frame targets",
                          description=PREPARE_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    prep.add_argument("--manifest", required=True, metavar="FILE.jsonl", help="JSONL manifest with 'id' and 'audio'")
    prep.add_argument("--units", required=True, metavar="DIR", help="unit extractor directory (the targets)")
    prep.add_argument("--out", required=True, metavar="OUT", help="records directory to create")
    prep.add_argument("--max-audio-seconds", type=float, default=30.0, help="longer audio is skipped (default 30)")
    prep.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    prep.set_defaults(handler=run_prepare)
    from most_jax.commands.train import add_train_args

    train = sub.add_parser("train", help="pretrain (masked prediction) through the common trainer",
                           description=TRAIN_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_args(train)
    train.set_defaults(handler=run_train)


def run_import(args: argparse.Namespace) -> int:
    from most_jax.checkpoint.hubert_hf import import_hubert

    cfg = import_hubert(args.hf_dir, args.out, args.dtype).model
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
    from most_jax.infer.logits import write_npz_atomic
    from most_jax.models.hubert.encode import encode

    cfg, model = restore_model(args.checkpoint)
    if cfg.model.family != "hubert":
        raise CheckpointError(f"{args.checkpoint}: a {cfg.model.family} checkpoint, not hubert")
    wave, lengths = read_waveforms(args.input)
    try:
        hidden, last, frames = encode(model, wave, lengths)
    except ValueError as e:
        raise HubertInputError(f"{args.input}: {e}") from None
    write_npz_atomic(args.output, hidden_states=hidden, last_hidden_state=last, frame_lengths=frames)
    print(f"wrote {args.output}: hidden_states {list(hidden.shape)}, frame_lengths {frames.tolist()}")
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    import sys

    from most_jax.data.hubert_data import prepare_hubert

    prepare_hubert(args.manifest, args.units, args.out, max_audio_seconds=args.max_audio_seconds,
                   overwrite=args.overwrite, log=lambda m: print(m, file=sys.stderr))
    return 0


def run_train(args: argparse.Namespace) -> int:
    from most_jax.commands import train

    return train.run(args, family_name="hubert")
