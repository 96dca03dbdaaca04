"""`most data sqa OUT_DIR`: the built-in spoken question-answering set (most_jax/corpus/qa.py)."""

from __future__ import annotations

import json
import random
import sys

from most_jax.commands import UsageError
from most_jax.commands.voice_args import add_voice_args, speaker_set

DESCRIPTION = """\
Makes a small world of facts about people (where they live, their pet, the instrument they play,
their birth month, the food they like), writes every fact as a sentence to OUT_DIR/facts.txt
(text-LM lines for `most data prepare --text`), and speaks two questions per fact and the short
spoken answer with eSpeak (one speaker of --voices x --pitches per dialog) into OUT_DIR/audio/.
OUT_DIR/{train,dev,test}.jsonl are dialog manifests, the facts split at random between them:
{id, prompt: {text, audio}, response: {text, audio}} (audio paths relative to OUT_DIR), which
`most data prepare` turns into spoken_qa_text and spoken_qa_speech records and `most eval sqa`
scores.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("sqa", help="the built-in spoken QA set (facts, spoken questions and answers)",
                                   description=DESCRIPTION)
    parser.add_argument("out_dir", metavar="OUT_DIR", help="directory to create")
    parser.add_argument("--people", type=int, default=60, metavar="N", help="people in the world (default 60)")
    parser.add_argument("--dev-fraction", type=float, default=0.1, help="facts whose questions are dev (0.1)")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="facts whose questions are test (0.1)")
    parser.add_argument("--seed", type=int, default=0)
    add_voice_args(parser, rate_wpm=(150, 185))
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    parser.set_defaults(handler=_run)


def _run(args) -> int:
    from most_jax.atomic import atomic_directory
    from most_jax.corpus import qa
    from most_jax.corpus.synth import Utterance, render

    try:
        facts = qa.world(args.people, args.seed)
        dialogs = qa.dialogs(facts, args.seed, args.dev_fraction, args.test_fraction)
    except ValueError as e:
        raise UsageError(f"--people/--dev-fraction/--test-fraction: {e}") from None
    voices = speaker_set(args)
    speakers = voices.speakers
    rng = random.Random(f"qa-speech-{args.seed}")
    with atomic_directory(args.out_dir, overwrite=args.overwrite) as tmp:
        (tmp / "audio").mkdir()
        (tmp / "facts.txt").write_text("".join(f.statement + "\n" for f in facts))
        lines: dict[str, list[str]] = {split: [] for split in qa.SPLITS}
        for i, d in enumerate(dialogs):
            speaker, rate, seed = rng.choice(speakers), rng.randint(*voices.rate_wpm), rng.randrange(2 ** 31)
            for side, text in (("q", d.question), ("a", d.spoken_answer)):
                render(Utterance(f"{d.id}-{side}", d.split, text, speaker, rate, seed), str(tmp / "audio"))
            lines[d.split].append(json.dumps({"id": d.id, "prompt": {"text": d.question, "audio": f"audio/{d.id}-q.wav"},
                                              "response": {"text": d.answer, "audio": f"audio/{d.id}-a.wav"}}))
            if (i + 1) % 200 == 0:
                print(f"sqa: spoke {i + 1}/{len(dialogs)} dialogs", file=sys.stderr)
        for split, split_lines in lines.items():
            (tmp / f"{split}.jsonl").write_text("".join(line + "\n" for line in split_lines))
    counts = ", ".join(f"{len(v)} {k}" for k, v in lines.items())
    print(f"wrote {args.out_dir}: {len(facts)} facts, dialogs {counts}")
    return 0
