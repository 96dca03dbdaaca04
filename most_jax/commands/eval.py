"""`most eval asr|tts`: held-out evaluation by generation."""

from __future__ import annotations

import argparse
import functools
import json
import sys

import numpy as np

from most_jax.commands import UsageError
from most_jax.commands.speech_args import add_model_args, load_model_and_assets
from most_jax.eval.speech import evaluate_asr, evaluate_tts, load_eval_set

DESCRIPTION = """\
DATA is a manifest (JSONL with id, audio, text; units are extracted with the assets' unit
extractor) or a prepared directory (its speech/transcript records). ASR reports the word error
rate after normalisation (lowercase; characters other than a-z, 0-9 and apostrophes become
spaces). TTS reports the unit error rate (edit distance / reference units) and position-wise unit
accuracy of the generated units against the reference units. With --asr ASR_CKPT and --vocoder V
it also reports TTS WER: the generated units spoken by the vocoder, given units by the ASR
checkpoint's unit extractor and transcribed by it (greedy), against the input texts; next to two
floors the same ASR sets: the original audio of DATA (a manifest, then), and the vocoder's
resynthesis of the reference units.
"""


AUDIO_LM_DESCRIPTION = """\
Scores each (real, fake) pair by the model's log-likelihood of the items' units in the unit-LM
format (BOS BOA units EOA EOS; the units and EOA are scored): summed, and divided by the scored
tokens (length-normalised). A pair counts 1 when the real item scores higher, 0.5 on a tie, 0
otherwise (ZeroSpeech 2021); accuracy is reported for both scores, overall and per category. Items
given as audio get their units from the assets' unit extractor.
"""


SQA_DESCRIPTION = """\
Answers each spoken question of a dialog manifest (`most data sqa`: prompt.audio, the expected
answer in response.text; units from the assets' unit extractor) in text (S->T) and, with --asr and
--vocoder, in speech (S->S: the generated units spoken by the vocoder and transcribed by the ASR
checkpoint). An answer is right when the expected answer's normalised words (as for WER) occur as
a contiguous run of the response's normalised words.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="held-out ASR WER, TTS unit error / WER, spoken QA, audio-LM scores")
    sub = parser.add_subparsers(dest="eval_command", required=True, metavar="TASK")
    for task, max_new in (("asr", 128), ("tts", 512)):
        p = sub.add_parser(task, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
                           help=f"evaluate {task.upper()}")
        add_model_args(p, max_new_tokens=max_new)
        p.add_argument("--data", required=True, metavar="DATA", help="manifest .jsonl or prepared directory")
        p.add_argument("--limit", type=int, default=None, help="evaluate only the first N utterances")
        p.add_argument("--json", action="store_true", help="print the result as one JSON object")
        if task == "tts":
            _add_judge_args(p, "TTS WER")
        p.set_defaults(handler=run, task=task)
    sqa = sub.add_parser("sqa", help="spoken question answering: S->T (and S->S) accuracy",
                         description=SQA_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(sqa, max_new_tokens=64)
    sqa.add_argument("--data", required=True, metavar="MANIFEST", help="dialog manifest (`most data sqa`'s test.jsonl)")
    sqa.add_argument("--limit", type=int, default=None, help="evaluate only the first N questions")
    sqa.add_argument("--json", action="store_true", help="print the result as one JSON object")
    _add_judge_args(sqa, "S->S accuracy")
    sqa.set_defaults(handler=run_sqa)
    lm = sub.add_parser("audio-lm", help="pair accuracy of unit log-likelihoods (sWUGGY / sBLIMP style)",
                        description=AUDIO_LM_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    lm.add_argument("checkpoint", metavar="CKPT", help="MoST checkpoint")
    lm.add_argument("--pairs", required=True, metavar="FILE",
                    help="pairs JSONL (`most data audio-lm-pairs`) or a ZeroSpeech 2021 lexical/syntactic directory")
    lm.add_argument("--assets", default=None, metavar="PREPARED_DIR",
                    help="prepared data directory (tokenizer, unit extractor, layout; default: data.records)")
    lm.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass (default 16)")
    lm.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a field of the checkpoint's config")
    lm.add_argument("--json", action="store_true", help="print the result as one JSON object")
    lm.set_defaults(handler=run_audio_lm)
    units = sub.add_parser("units", help="voice dependence of speech units: same-sentence vs different-sentence "
                                         "unit edit distance across two voices",
                           description=UNITS_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    units.add_argument("units", nargs="+", metavar="UNITS_DIR", help="unit extractors (`most data train-units`)")
    units.add_argument("--sentences", type=int, default=50, help="sentences spoken by each voice (default 50)")
    units.add_argument("--voices", default="en-us,en-gb-x-rp", metavar="A,B",
                       help="the two eSpeak voices (default en-us,en-gb-x-rp)")
    units.add_argument("--rate-wpm", type=int, default=170, help="speaking rate of both voices (default 170)")
    units.add_argument("--vocabulary", type=int, default=500,
                       help="sentences over the generator's N most frequent words (default 500, the demo's)")
    units.add_argument("--seed", type=int, default=12345, help="sentence seed (default 12345)")
    units.add_argument("--json", action="store_true", help="print the result as one JSON object")
    units.set_defaults(handler=run_units)


UNITS_DESCRIPTION = """\
Speaks --sentences built-in sentences (corpus generator, --seed) in two eSpeak voices and reports, for
each unit extractor, the mean normalised unit edit distance (Levenshtein / the longer sequence)
between the two voices' units of the same sentence ("same") and of different sentences
("different"), and their ratio: units that carry what was said rather than who said it score
"same" far below "different". No model is needed.
"""


def _add_judge_args(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--asr", default=None, metavar="ASR_CKPT",
                        help=f"a MoST checkpoint that transcribes the model's speech ({what}); it may be CKPT")
    parser.add_argument("--asr-assets", default=None, metavar="PREPARED_DIR",
                        help="the ASR checkpoint's tokenizer, unit extractor and layout (default: its data.records)")
    parser.add_argument("--vocoder", default=None, metavar="V", help="vocoder checkpoint speaking the units")
    parser.add_argument("--speaker", type=int, default=None, metavar="N", help="the vocoder's speaker id")
    parser.add_argument("--lang", type=int, default=None, metavar="N", help="the vocoder's language id")


def _judged(args: argparse.Namespace, what: str) -> bool:
    """Whether --asr and --vocoder ask for a spoken-output figure (both, or neither)."""
    if (args.asr is None) != (args.vocoder is None):
        raise UsageError(f"{what} needs both --asr ASR_CKPT (who listens) and --vocoder V (who speaks)")
    return args.asr is not None


def run(args: argparse.Namespace) -> int:
    judged = args.task == "tts" and _judged(args, "TTS WER")
    model, data, sampling = load_model_and_assets(args)
    try:
        items = load_eval_set(args.data, data, args.limit, keep_audio=judged)
    except ValueError as e:
        raise UsageError(f"--data {e}") from None
    if not items:
        raise UsageError(f"{args.data}: no usable utterances")
    if args.task == "asr":
        result = evaluate_asr(model, data, items, sampling=sampling, batch_size=args.batch_size)
    else:
        result = evaluate_tts(model, data, items, sampling=sampling, batch_size=args.batch_size,
                              judge=_judge(args, data) if judged else None)
    if args.json:
        print(json.dumps(result))
    elif args.task == "asr":
        for ex in result["examples"][:5]:
            print(f"REF: {ex['reference']}\nHYP: {ex['hypothesis']}\n", file=sys.stderr)
        print(f"ASR WER {100 * result['wer']:.2f}% ({result['word_errors']} errors / {result['words']} words, "
              f"{result['utterances']} utterances, {result['seconds']:.1f} s)")
    else:
        print(f"TTS unit error rate {100 * result['unit_error_rate']:.2f}%, unit accuracy "
              f"{100 * result['unit_accuracy']:.2f}% ({result['utterances']} utterances, {result['seconds']:.1f} s)")
        if judged:
            for ex in result["examples"][:3]:
                print(f"TEXT: {ex['text']}\nTTS -> ASR: {ex['tts']}\n", file=sys.stderr)
            floors = result["floors"]
            print(f"TTS WER {100 * result['tts_wer']['wer']:.2f}% through {args.asr} (floors: original audio "
                  f"{100 * floors['original']['wer']:.2f}%, vocoder resynthesis of the reference units "
                  f"{100 * floors['resynthesis']['wer']:.2f}%)")
    return 0


def run_sqa(args: argparse.Namespace) -> int:
    from most_jax.eval.sqa import evaluate_sqa, load_questions

    judged = _judged(args, "S->S accuracy")
    model, data, sampling = load_model_and_assets(args)
    questions = load_questions(args.data, data, args.limit)
    if not questions:
        raise UsageError(f"--data {args.data}: no usable questions")
    result = evaluate_sqa(model, data, questions, sampling=sampling, batch_size=args.batch_size,
                          judge=_judge(args, data) if judged else None)
    if args.json:
        print(json.dumps(result))
        return 0
    for ex in result["examples"][:5]:
        print(f"ANSWER: {ex['answer']}\nS->T: {ex['text']}" + (f"\nS->S: {ex['speech']}" if judged else "") + "\n",
              file=sys.stderr)
    line = f"spoken QA over {result['questions']} questions: S->T accuracy {100 * result['s2t']['accuracy']:.2f}%"
    if judged:
        line += f", S->S accuracy {100 * result['s2s']['accuracy']:.2f}% (through {args.asr})"
    print(line)
    return 0


def _judge(args: argparse.Namespace, data):
    """The ASR model, its assets and the vocoder that hear the model's speech (TTS WER, S->S), checked
    against the units the model speaks."""
    from most_jax.checkpoint.params_io import restore_model
    from most_jax.data.pipeline import PreparedData
    from most_jax.eval.speech import AsrJudge
    from most_jax.infer.speech import check_assets
    from most_jax.infer.vocoder import SynthesisError, check_ids, load_vocoder

    vocoder = load_vocoder(args.vocoder)
    if vocoder.cfg.num_units != data.layout.config.num_audio_units:
        raise UsageError(f"--vocoder {args.vocoder}: {vocoder.cfg.num_units} units, the TTS checkpoint speaks "
                         f"{data.layout.config.num_audio_units}")
    try:
        check_ids(vocoder, np.zeros(1, np.int32), args.speaker, args.lang, "--vocoder")
    except SynthesisError as e:
        raise UsageError(str(e)) from None
    asr_cfg, asr_model = restore_model(args.asr, ["model.moe.dispatch=dropless"])
    if asr_cfg.model.family != "most":
        raise UsageError(f"--asr {args.asr}: a {asr_cfg.model.family!r} checkpoint; the ASR must be a MoST checkpoint")
    asr_data = PreparedData(args.asr_assets or asr_cfg.data.records)
    try:
        check_assets(asr_model, asr_data)
    except ValueError as e:
        raise UsageError(f"--asr-assets {e}") from None
    return AsrJudge(asr_model, asr_data, vocoder, args.speaker, args.lang)


def run_audio_lm(args: argparse.Namespace) -> int:
    from most_jax.checkpoint.params_io import restore_model
    from most_jax.data.pipeline import PreparedData
    from most_jax.eval.audio_lm import SCORES, score_pairs
    from most_jax.eval.pair_sets import read_pair_set
    from most_jax.infer.speech import check_assets

    if args.batch_size <= 0:
        raise UsageError(f"--batch-size must be positive, got {args.batch_size}")
    cfg, model = restore_model(args.checkpoint, ["model.moe.dispatch=dropless", *args.overrides])
    data = PreparedData(args.assets or cfg.data.records)
    check_assets(model, data)
    extractor = functools.cache(data.unit_extractor)  # loaded for the first item given as audio
    pairs = read_pair_set(args.pairs, lambda wave: extractor().extract(wave))
    num_units = data.layout.config.num_audio_units
    for pair in pairs:
        for side in ("real", "fake"):
            if getattr(pair, side).max() >= num_units:
                raise UsageError(f"--pairs {args.pairs}: pair {pair.id!r} {side} has unit "
                                 f"{getattr(pair, side).max()}, the checkpoint has {num_units} units")
    result = score_pairs(model, data.formatter, pairs, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(result))
        return 0
    for name, label in zip(SCORES, ("summed", "length-normalised")):
        acc = result[name]
        cats = ", ".join(f"{k} {100 * v['accuracy']:.1f}% ({v['pairs']})" for k, v in acc["by_category"].items())
        print(f"audio-LM accuracy ({label} log-likelihood) {100 * acc['accuracy']:.2f}% over {acc['pairs']} pairs: "
              f"{cats}")
    return 0


def run_units(args: argparse.Namespace) -> int:
    from most_jax.corpus.espeak import ESpeakError
    from most_jax.corpus.sentences import unique_sentences
    from most_jax.eval.unit_consistency import spoken, unit_consistency
    from most_jax.speech.units import UnitExtractor

    voices = [v.strip() for v in args.voices.split(",") if v.strip()]
    if len(voices) != 2:
        raise UsageError(f"--voices needs exactly two voices, got {args.voices!r}")
    if args.sentences < 2:
        raise UsageError(f"--sentences must be >= 2, got {args.sentences}")
    extractors = {}
    for path in args.units:
        try:
            extractors[path] = UnitExtractor.load(path)
        except (OSError, ValueError) as e:
            raise UsageError(f"{path}: not a unit extractor ({e})") from None
    texts = unique_sentences(args.seed, args.sentences, args.vocabulary)
    waves = {}
    for voice in voices:
        try:
            waves[voice] = spoken(texts, voice, args.rate_wpm)
        except (ValueError, ESpeakError) as e:
            raise UsageError(f"--voices {voice} at --rate-wpm {args.rate_wpm}: {e}") from None
    results = {path: unit_consistency(extractor.extract, waves[voices[0]], waves[voices[1]])
               for path, extractor in extractors.items()}
    if args.json:
        print(json.dumps({"voices": voices, "sentences": len(texts), "extractors": results}))
        return 0
    for path, r in results.items():
        print(f"{path}: same sentence {r['same']:.3f}, different sentences {r['different']:.3f}, ratio "
              f"{r['same_over_different']:.3f} ({r['units_per_second']:.1f} units/s; {voices[0]} vs {voices[1]}, "
              f"{r['sentences']} sentences)")
    return 0
