"""`most data train-tokenizer --text FILE... --out DIR --vocab-size N`: train a sentencepiece model."""

from __future__ import annotations

from most_jax.data.tasks import TEMPLATE_TEXTS
from most_jax.data.tokenizers import train_sentencepiece


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-tokenizer", help="train a sentencepiece text tokenizer on corpus text",
        description="Trains a sentencepiece model (BPE by default) on the lines of the given text files plus the "
                    "MoST prompt templates, with byte fallback (no <unk> for unseen characters) and newlines kept. "
                    "Writes DIR/spm.model atomically; `most data prepare --tokenizer DIR` uses it. The vocabulary "
                    "layout adds bos/eos and the audio units after its ids.")
    parser.add_argument("--text", nargs="+", required=True, metavar="FILE",
                        help="text files, one sentence per line (e.g. the corpus's text_lm.txt)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--vocab-size", type=int, default=1000,
                        help="number of text pieces, >= 300 (256 byte pieces included; default 1000)")
    parser.add_argument("--model-type", default="bpe", choices=("bpe", "unigram"), help="sentencepiece model type")
    parser.set_defaults(handler=_run)


def _run(args) -> int:
    tok = train_sentencepiece(args.text, args.out, args.vocab_size, extra_lines=TEMPLATE_TEXTS,
                              model_type=args.model_type)
    sample = TEMPLATE_TEXTS[0]
    print(f"train-tokenizer: wrote {tok.path} ({tok.text_size} pieces); {sample!r} -> {len(tok.encode(sample))} "
          f"pieces")
    return 0
