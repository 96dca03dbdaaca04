"""`most u2pp ...`: U2++ (WeNet) speech recognition: encode, decode, transcribe, import/export WeNet."""

from __future__ import annotations

import argparse

from most_jax.commands import u2pp_convert

MODES = ("ctc_greedy", "ctc_prefix_beam", "attention", "attention_rescoring")

FEATS_HELP = "feats float [B, T, I] (I = the model's input_dim, fbank 80) and feats_lengths int [B]"

ENCODE_DESCRIPTION = f"""\
Runs the encoder and the CTC head of the U2++ checkpoint CKPT on IN.npz, which holds
{FEATS_HELP}, and writes OUT.npz: encoder_out float32 [B, T', D], encoder_lengths int32 [B] and ctc_log_probs float32
[B, T', V] (T' = frames after subsampling). --chunk N attends chunk by chunk (N frames after
subsampling, as in streaming, with --left-chunks M chunks of history, -1 all); the default -1 is full
context.
"""

DECODE_DESCRIPTION = f"""\
Decodes IN.npz with the U2++ checkpoint CKPT; IN.npz holds
{FEATS_HELP}.
Modes (WeNet's): ctc_greedy, ctc_prefix_beam, attention (left-to-right beam search) or
attention_rescoring (the CTC prefix beam's n-best rescored by both decoders: (1 - R) x L2R + R x R2L
+ W x CTC, R = --reverse-weight, W = --ctc-weight). Writes OUT.json: the mode, options and per
utterance its token ids and score. Token ids: 0 is the CTC blank, vocab_size - 1 is sos/eos.
"""

TRANSCRIBE_DESCRIPTION = """\
Transcribes audio files with the U2++ checkpoint CKPT: 80-bin Kaldi fbank at 16 kHz (the project's
front end), the model, and the tokenizer in DIR (model token t is tokenizer id t - 1: 0 is the CTC
blank and the last id sos/eos, so the model's vocab_size is the tokenizer's size + 2). With --chunk N
the encoder runs streaming, chunk by chunk with its caches, and the CTC prefix beam follows the chunks;
the chosen mode finishes at the end of the file. Prints one line per file: PATH<TAB>TEXT.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("u2pp", help="U2++ (WeNet) speech recognition: encode, decode, transcribe",
                                   description=__doc__.splitlines()[0].split(": ", 1)[1])
    sub = parser.add_subparsers(dest="u2pp_command", required=True, metavar="COMMAND")

    enc = sub.add_parser("encode", help="encoder output and CTC log-probs of fbank features",
                         description=ENCODE_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(enc, output="OUT.npz")
    _chunk_args(enc)
    enc.set_defaults(handler=run_encode)

    dec = sub.add_parser("decode", help="token ids and scores of fbank features in one decoding mode",
                         description=DECODE_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(dec, output="OUT.json")
    _search_args(dec)
    _chunk_args(dec)
    dec.set_defaults(handler=run_decode)

    tr = sub.add_parser("transcribe", help="text of audio files", description=TRANSCRIBE_DESCRIPTION,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    tr.add_argument("checkpoint", metavar="CKPT", help="U2++ checkpoint directory")
    tr.add_argument("audio", metavar="AUDIO", nargs="+", help="audio files (wav, flac, ...)")
    tr.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer directory (tokenizer.model or "
                                                                       "tokenizer.json)")
    _search_args(tr)
    _chunk_args(tr)
    tr.set_defaults(handler=run_transcribe)

    u2pp_convert.register_import(sub)
    u2pp_convert.register_export(sub)


def _common(parser: argparse.ArgumentParser, output: str) -> None:
    parser.add_argument("checkpoint", metavar="CKPT", help="U2++ checkpoint directory")
    parser.add_argument("--input", required=True, metavar="IN.npz", help=FEATS_HELP)
    parser.add_argument("--output", required=True, metavar=output, help="where to write the result")


def _search_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=MODES, default="attention_rescoring", help="decoding mode "
                        "(default attention_rescoring)")
    parser.add_argument("--beam", type=int, default=10, metavar="N", help="beam size (default 10)")
    parser.add_argument("--ctc-weight", type=float, default=0.5, metavar="W",
                        help="CTC score weight in attention_rescoring (default 0.5, WeNet's runtime default)")
    parser.add_argument("--reverse-weight", type=float, default=None, metavar="R",
                        help="right-to-left decoder weight in attention_rescoring (default: the model's "
                             "reverse_weight)")
    parser.add_argument("--length-penalty", type=float, default=0.0, metavar="P",
                        help="attention mode: final score / length ** P (default 0)")


def _chunk_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--chunk", type=int, default=-1, metavar="N",
                        help="chunk size in frames after subsampling (default -1: full context)")
    parser.add_argument("--left-chunks", type=int, default=-1, metavar="M",
                        help="chunks of history each chunk sees (default -1: all)")


class U2ppInputError(ValueError):
    """Bad command input (file, array, option); the message names the culprit."""


def _load(path: str):
    """(config, U2pp model) of checkpoint `path`; a non-U2++ checkpoint is refused."""
    from most_jax.checkpoint.params_io import load_config, restore_model

    cfg = load_config(path)
    if cfg.model.family != "u2pp":
        raise U2ppInputError(f"{path}: a {cfg.model.family!r} checkpoint, not a U2++ one (model.family u2pp)")
    return restore_model(path)


def read_feats(path: str, input_dim: int):
    """(feats float32 [B, T, I], feats_lengths int32 [B]) from an .npz, checked against the model."""
    import zipfile

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise U2ppInputError(f"{path}: no such input file") from None
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise U2ppInputError(f"{path}: not a readable .npz file ({e})") from None
    for key in ("feats", "feats_lengths"):
        if key not in arrays:
            raise U2ppInputError(f"{path}: no {key!r} array ({FEATS_HELP})")
    unknown = sorted(set(arrays) - {"feats", "feats_lengths"})
    if unknown:
        raise U2ppInputError(f"{path}: unexpected arrays {unknown}; expected only feats and feats_lengths")
    feats, lengths = arrays["feats"], arrays["feats_lengths"]
    if feats.ndim != 3 or feats.shape[2] != input_dim or not np.issubdtype(feats.dtype, np.floating):
        raise U2ppInputError(f"{path}: feats must be float [B, T, {input_dim}], got {feats.dtype} {list(feats.shape)}")
    if lengths.shape != feats.shape[:1] or not np.issubdtype(lengths.dtype, np.integer):
        raise U2ppInputError(f"{path}: feats_lengths must be int [B={feats.shape[0]}], got {lengths.dtype} "
                             f"{list(lengths.shape)}")
    bad = np.flatnonzero((lengths < 1) | (lengths > feats.shape[1]))
    if bad.size:
        raise U2ppInputError(f"{path}: feats_lengths[{bad[0]}] = {lengths[bad[0]]} is outside 1..T={feats.shape[1]}")
    if not np.isfinite(feats).all():
        raise U2ppInputError(f"{path}: feats holds NaN or infinite values")
    return feats.astype(np.float32), lengths.astype(np.int32)


def _check_encoded(path: str, lengths) -> None:
    import numpy as np

    short = np.flatnonzero(np.asarray(lengths) < 1)
    if short.size:
        raise U2ppInputError(f"{path}: utterance {short[0]} is too short for the encoder's subsampling "
                             f"(no frame left)")


def _options(args: argparse.Namespace, model):
    from most_jax.models.u2pp.decode import DecodeOptions

    rw = model.cfg.reverse_weight if args.reverse_weight is None else args.reverse_weight
    opts = DecodeOptions(mode=args.mode, beam=args.beam, ctc_weight=args.ctc_weight, reverse_weight=rw,
                         chunk=args.chunk, left_chunks=args.left_chunks, length_penalty=args.length_penalty)
    try:
        opts.validate(model)
    except ValueError as e:
        raise U2ppInputError(str(e)) from None
    return opts


def run_encode(args: argparse.Namespace) -> int:
    import numpy as np

    from most_jax.infer.logits import write_npz_atomic
    from most_jax.models.u2pp import decode

    if args.chunk == 0 or args.chunk < -1:
        raise U2ppInputError(f"--chunk must be -1 (full context) or positive, got {args.chunk}")
    cfg, model = _load(args.checkpoint)
    feats, lengths = read_feats(args.input, cfg.model.input_dim)
    out, enc_lengths, log_probs = decode.encode(model, feats, lengths, args.chunk, args.left_chunks)
    _check_encoded(args.input, enc_lengths)
    write_npz_atomic(args.output, encoder_out=out.astype(np.float32),
                     encoder_lengths=enc_lengths.astype(np.int32), ctc_log_probs=log_probs.astype(np.float32))
    print(f"wrote {args.output}: encoder_out {list(out.shape)}, ctc_log_probs {list(log_probs.shape)}")
    return 0


def run_decode(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from most_jax.atomic import atomic_file
    from most_jax.models.u2pp import decode

    if not args.output.endswith(".json"):
        raise U2ppInputError(f"{args.output}: the output file name must end in .json")
    cfg, model = _load(args.checkpoint)
    opts = _options(args, model)
    feats, lengths = read_feats(args.input, cfg.model.input_dim)
    out, enc_lengths, log_probs = decode.encode(model, feats, lengths, opts.chunk, opts.left_chunks)
    _check_encoded(args.input, enc_lengths)
    hyps = decode.finish(model, opts, out, enc_lengths, log_probs)
    result = {"mode": opts.mode, "options": dataclasses.asdict(opts),
              "utterances": [{"tokens": list(h.tokens), "score": h.score} for h in hyps]}
    with atomic_file(args.output) as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.output}: {len(hyps)} utterances, mode {opts.mode}")
    return 0


def run_transcribe(args: argparse.Namespace) -> int:
    import numpy as np

    from most_jax.data.tokenizers import load_tokenizer
    from most_jax.models.u2pp import decode
    from most_jax.speech.audio import load_audio
    from most_jax.speech.features import fbank

    cfg, model = _load(args.checkpoint)
    opts = _options(args, model)
    tokenizer = load_tokenizer(args.tokenizer)
    if tokenizer.text_size + 2 != cfg.model.vocab_size:
        raise U2ppInputError(f"{args.tokenizer}: {tokenizer.text_size} text ids, but the model's vocab_size "
                             f"{cfg.model.vocab_size} needs {cfg.model.vocab_size - 2} (+ blank and sos/eos)")
    if cfg.model.input_dim != 80:
        raise U2ppInputError(f"the model reads {cfg.model.input_dim}-bin features; transcribe computes "
                             "80-bin fbank")
    for path in args.audio:
        wave, _ = load_audio(path, 16000)
        feats = fbank(wave).astype(np.float32)
        if opts.chunk > 0:
            hyp = decode.transcribe_streaming(model, feats, opts)
        else:
            out, enc_lengths, log_probs = decode.encode(model, feats[None], np.array([len(feats)], np.int32))
            _check_encoded(path, enc_lengths)
            hyp = decode.finish(model, opts, out, enc_lengths, log_probs)[0]
        print(f"{path}\t{tokenizer.decode([t - 1 for t in hyp.tokens])}", flush=True)
    return 0
