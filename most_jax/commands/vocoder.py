"""`most vocoder ...`: the unit vocoder (unit HiFi-GAN): import, synthesise, train."""

from __future__ import annotations

import argparse
import sys

from most_jax.commands import UsageError
from most_jax.commands.group import add_config_args

OVERRIDE_HELP = ("override a field of the written model config, e.g. --set model.mpd_channels=[16,32] (sizes the "
                 "freshly initialised discriminators; repeatable)")


def register(subparsers) -> None:
    parser = subparsers.add_parser("vocoder", help="unit vocoder: import-hf, import-unit-hifigan, synth, eval, train",
                                   description=__doc__.splitlines()[0].split(": ", 1)[1])
    sub = parser.add_subparsers(dest="vocoder_command", required=True, metavar="COMMAND")

    hf = sub.add_parser("import-hf", help="convert a saved transformers SeamlessM4TCodeHifiGan",
                        description="Reads HF_DIR (SeamlessM4TCodeHifiGan.save_pretrained: config.json + "
                                    "model.safetensors) and writes the vocoder checkpoint OUT (must not exist). "
                                    "Discriminators are freshly initialised (the file has none).")
    hf.add_argument("hf_dir", metavar="HF_DIR")
    hf.add_argument("out", metavar="OUT")
    hf.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=OVERRIDE_HELP)
    hf.set_defaults(handler=run_import_hf)

    sr = sub.add_parser("import-unit-hifigan", help="convert a speech-resynthesis / SpiritLM CodeGenerator",
                        description="Reads G.pt ({'generator': state_dict} as HiFi-GAN training saves it, or a bare "
                                    "state_dict) and its JSON config (speech-resynthesis layout: units, optional "
                                    "multispkr and duration predictor; F0 inputs are refused) and writes OUT. "
                                    "Needs torch.")
    sr.add_argument("generator_pt", metavar="G.pt")
    sr.add_argument("config_json", metavar="CONFIG.json")
    sr.add_argument("out", metavar="OUT")
    sr.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=OVERRIDE_HELP)
    sr.set_defaults(handler=run_import_unit_hifigan)

    syn = sub.add_parser("synth", help="units.npy -> speech.wav / speech.npy",
                         description="Synthesises one utterance: --units holds a 1-D integer array of unit ids, "
                                     "deduplicated (re-expanded by the duration predictor) unless --frame-units. "
                                     "--out NAME.wav writes 16-bit PCM, NAME.npy the raw float32 samples.")
    syn.add_argument("checkpoint", metavar="CKPT", help="vocoder checkpoint (import output or training run)")
    syn.add_argument("--units", required=True, metavar="UNITS.npy")
    syn.add_argument("--speaker", type=int, default=None, metavar="N")
    syn.add_argument("--lang", type=int, default=None, metavar="N")
    syn.add_argument("--frame-units", action="store_true",
                     help="the units are frame-level already (one per hop): skip the duration predictor")
    syn.add_argument("--out", required=True, metavar="OUT.wav|OUT.npy")
    syn.set_defaults(handler=run_synth)

    ev = sub.add_parser("eval", help="held-out mel L1 and unit error rate of a vocoder's resynthesis",
                        description="Resynthesises the audio of --manifest from its frame-level units (the "
                                    "extractor --units) and reports the log-mel L1 against the original and the unit "
                                    "error rate of what the extractor hears in the synthesis, with the true and with "
                                    "the predicted durations (most_jax/eval/vocoder.py). Speaker ids are the "
                                    "manifest's speaker names in sorted order, as `most vocoder train` numbers them.")
    ev.add_argument("checkpoint", metavar="CKPT", help="vocoder checkpoint")
    ev.add_argument("--units", required=True, metavar="DIR", help="unit extractor directory")
    ev.add_argument("--manifest", required=True, metavar="FILE.jsonl", help="held-out utterances")
    ev.add_argument("--limit", type=int, default=100, metavar="N", help="at most N utterances (default 100)")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.set_defaults(handler=run_eval)

    tr = sub.add_parser("train", help="train the vocoder (GAN, through the common trainer)",
                        description="Trains on the audio of --manifest with the frame-level units of the extractor "
                                    "--units (from `most data train-units`): random segments of data.seq_len unit "
                                    "frames, data.batch_size per step; each step updates the discriminators, then "
                                    "the generator. Writes RUN_DIR/metrics.jsonl and RUN_DIR/checkpoints/; "
                                    "--resume continues exactly.")
    add_config_args(tr)
    tr.add_argument("--units", required=True, metavar="DIR", help="unit extractor directory")
    tr.add_argument("--manifest", required=True, metavar="FILE.jsonl")
    tr.add_argument("--max-utterances", type=int, default=2000, metavar="N",
                    help="read at most N utterances of the manifest into memory (default 2000)")
    tr.add_argument("--run-dir", required=True)
    tr.add_argument("--resume", action="store_true")
    tr.add_argument("--init-from", default=None, metavar="CKPT", help="start from a vocoder checkpoint's parameters")
    tr.add_argument("--stop-after", type=int, default=None, metavar="STEP")
    tr.set_defaults(handler=run_train)


def run_import_hf(args: argparse.Namespace) -> int:
    from most_jax.checkpoint.vocoder_import import import_hf

    cfg = import_hf(args.hf_dir, args.out, args.overrides)
    print(f"wrote {args.out}: {cfg.model.num_units} units, hop {cfg.model.hop}")
    return 0


def run_import_unit_hifigan(args: argparse.Namespace) -> int:
    from most_jax.checkpoint.vocoder_import import import_unit_hifigan

    cfg = import_unit_hifigan(args.generator_pt, args.config_json, args.out, args.overrides)
    print(f"wrote {args.out}: {cfg.model.num_units} units, hop {cfg.model.hop}")
    return 0


def run_synth(args: argparse.Namespace) -> int:
    import numpy as np

    from most_jax.infer.vocoder import SynthesisError, load_vocoder, synthesize, write_waveform

    generator = load_vocoder(args.checkpoint, "CKPT")
    try:
        units = np.load(args.units, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SynthesisError(f"--units {args.units}: unreadable .npy ({e})") from None
    wave = synthesize(generator, units, args.speaker, args.lang, use_durations=not args.frame_units)
    write_waveform(args.out, wave, generator.cfg.sample_rate)
    print(f"wrote {args.out}: {wave.size / generator.cfg.sample_rate:.2f} s")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    import json

    from most_jax.data.vocoder_batches import load_speech
    from most_jax.eval.vocoder import evaluate_vocoder
    from most_jax.infer.vocoder import load_vocoder
    from most_jax.speech.units import UnitExtractor

    generator = load_vocoder(args.checkpoint, "CKPT")
    extractor = UnitExtractor.load(args.units)
    if extractor.num_units != generator.cfg.num_units or 16000 / extractor.unit_rate != generator.cfg.hop:
        raise UsageError(f"--units {args.units}: {extractor.num_units} units at {extractor.unit_rate:g} Hz, "
                         f"the vocoder speaks {generator.cfg.num_units} units of {generator.cfg.hop} samples")
    waves, speakers, _ = load_speech(args.manifest, args.limit, generator.cfg.num_speakers,
                                     lambda m: print(m, file=sys.stderr), "vocoder eval")
    result = evaluate_vocoder(generator, extractor, waves, speakers)
    if args.json:
        print(json.dumps(result))
    else:
        pred = result["predicted_durations_unit_error_rate"]
        print(f"{result['utterances']} utterances: mel L1 {result['mel_l1']:.4f}, unit error rate "
              f"{result['unit_error_rate']:.2%} (true durations)"
              + ("" if pred is None else f", {pred:.2%} (predicted durations)") + f", {result['seconds']:.1f} s")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from most_jax.config import ConfigError, load_config
    from most_jax.data.vocoder_batches import from_manifest
    from most_jax.train.loop import run_training

    cfg = load_config(args.config, args.overrides)
    if cfg.model.family != "vocoder":
        raise ConfigError(f"model.family: {cfg.model.family!r}; `most vocoder train` trains a vocoder section")
    batches = from_manifest(cfg, args.units, args.manifest, args.max_utterances,
                            log=lambda m: print(m, file=sys.stderr))
    result = run_training(cfg, args.run_dir, batches, resume=args.resume, init_from=args.init_from,
                          stop_after=args.stop_after)
    rec = result.last_record or {}
    if rec.get("mel_l1") is not None:
        disc = f", discriminator loss {rec['loss_disc']:.4f}" if cfg.model.adversarial else ""
        print(f"step {result.step}: mel L1 {rec['mel_l1']:.4f}{disc}")
    return 0
