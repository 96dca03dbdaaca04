"""Small corpora for the data tests: a trained sentencepiece model and prepared record directories.

Records are written through the real writer (prepare.ShardWriter) from tokenised sentences and
random unit ids, so pipeline tests do not need speech synthesis.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from most_jax.data import records as rec
from most_jax.data.prepare import ShardWriter
from most_jax.data.tasks import TEMPLATE_TEXTS
from most_jax.data.tokenizers import copy_tokenizer, load_tokenizer, train_sentencepiece
from most_jax.vocab import VocabLayout

WORDS = ("the a red blue green small large quick slow dog cat bird fish house river tree road city "
         "runs walks sees finds likes near under over into from with and but then today").split()
NUM_UNITS = 50


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, 12))).capitalize() + "." for _ in range(n)]


def make_tokenizer(directory: Path, vocab_size: int = 400) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    text = directory / "corpus.txt"
    text.write_text("\n".join(sentences(400, seed=1)) + "\n")
    train_sentencepiece([text], directory / "tok", vocab_size, extra_lines=TEMPLATE_TEXTS)
    return directory / "tok"


def make_prepared(directory: Path, tokenizer_dir: Path, num_pairs: int = 60, num_text: int = 30,
                  num_dialogs: int = 10, num_shards: int = 2, seed: int = 0) -> Path:
    """A prepared directory with pair, text and dialog records of varied lengths."""
    rng = np.random.default_rng(seed)
    tok = load_tokenizer(tokenizer_dir)
    layout = VocabLayout.after_text(tok.text_size, NUM_UNITS)
    directory.mkdir(parents=True)
    writer = ShardWriter(directory, num_shards)

    def units():
        return rng.integers(0, NUM_UNITS, size=rng.integers(10, 120)).astype(np.int32)

    for i, s in enumerate(sentences(num_pairs, seed)):
        u = units()
        writer.write("pair", rec.encode_record(rec.Record(f"p{i}", "pair", {"text": tok.encode(s), "units": u},
                                                          len(u) / 25)))
    for i, s in enumerate(sentences(num_text, seed + 1)):
        writer.write("text", rec.encode_record(rec.Record(f"t{i}", "text", {"text": tok.encode(s)})))
    for i, (q, a) in enumerate(zip(sentences(num_dialogs, seed + 2), sentences(num_dialogs, seed + 3))):
        writer.write("spoken_qa_text", rec.encode_record(rec.Record(
            f"d{i}", "spoken_qa_text", {"prompt_units": units(), "response_text": tok.encode(a)})))
        writer.write("spoken_qa_speech", rec.encode_record(rec.Record(
            f"d{i}", "spoken_qa_speech", {"prompt_units": units(), "response_units": units()})))
        writer.write("instruct", rec.encode_record(rec.Record(
            f"d{i}", "instruct", {"instruction": tok.encode("Repeat."), "prompt_text": tok.encode(q),
                                  "response_text": tok.encode(q)})))
    writer.close()
    (directory / rec.LAYOUT_FILE).write_text(json.dumps(layout.to_dict()))
    copy_tokenizer(tokenizer_dir, directory / rec.TOKENIZER_DIR)
    return directory


def tiny_most(prepared: Path, seed: int = 0):
    """(config, random 2-layer MoST) of configs/most_tiny.yaml sized to the vocabulary of `prepared`
    (data.records points there, so a saved checkpoint finds its assets)."""
    import dataclasses

    from flax import nnx

    from most_jax.config import config_from_dict, load_config, to_dict
    from most_jax.models.most import MoST

    layout = VocabLayout.from_dict(json.loads((prepared / rec.LAYOUT_FILE).read_text()))
    cfg = load_config(Path(__file__).parent.parent / "configs" / "most_tiny.yaml",
                      ["model.num_layers=2", "model.moe.dispatch=reference", f"data.records={prepared}"])
    cfg = config_from_dict(to_dict(dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, vocab=layout.config, vocab_size=layout.vocab_size))))
    return cfg, MoST(cfg.model, rngs=nnx.Rngs(seed))


def tiny_model_config(prepared: Path) -> dict:
    """configs/most_tiny.yaml as a dict, 2 unrolled layers, its vocabulary that of `prepared`."""
    layout = json.loads((prepared / rec.LAYOUT_FILE).read_text())
    cfg = yaml.safe_load(open("configs/most_tiny.yaml"))
    cfg["model"].update(vocab_size=layout["vocab_size"], vocab=layout["vocab"], num_layers=2, scan_layers=False)
    return cfg
