"""Text tokenizers behind one small interface: sentencepiece (trained here) and HF `tokenizer.json`.

A tokenizer directory holds either `spm.model` (written by `train_sentencepiece`) or
`tokenizer.json` (e.g. the DeepSeek-V2 / MoST vocabulary). `load_tokenizer(dir)` picks the kind.

Every tokenizer reports `text_size` (it emits ids 0..text_size-1 only) and its own bos/eos ids,
or None when it has none; `most_jax.vocab.VocabLayout.after_text` then places the missing
specials and the audio units after the text ids.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

SPM_FILE = "spm.model"
HF_FILE = "tokenizer.json"
EXTRA_LINE_WEIGHT = 100
# DeepSeek-V2's sentence markers (full-width bars, U+2581 spaces): the MoST bos/eos.
DEEPSEEK_BOS = "<\uff5cbegin\u2581of\u2581sentence\uff5c>"
DEEPSEEK_EOS = "<\uff5cend\u2581of\u2581sentence\uff5c>"


class TokenizerError(ValueError):
    """A tokenizer cannot be trained, loaded, or emitted an id outside its text range."""


class TextTokenizer(Protocol):
    text_size: int
    bos_id: int | None
    eos_id: int | None

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class SentencePieceTokenizer:
    """A sentencepiece model without its own bos/eos/pad (the vocabulary layout adds them)."""

    bos_id = None
    eos_id = None

    def __init__(self, model_path: str | os.PathLike):
        import sentencepiece as spm

        self.path = Path(model_path)
        try:
            self._sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (OSError, RuntimeError) as err:
            raise TokenizerError(f"{self.path}: not a sentencepiece model ({err})") from None
        self.text_size = self._sp.get_piece_size()

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._sp.encode(text), np.int32)

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])


class HFTokenizer:
    """A Hugging Face `tokenizer.json` through the `tokenizers` package.

    Text ids run up to the end-of-sentence token (the DeepSeek / MoST convention: MoST put its
    audio units right after eos 100001); added tokens beyond it (DeepSeek's FIM and chat markers)
    are not text here and `encode` refuses to emit them.
    """

    def __init__(self, path: str | os.PathLike, bos_token: str = DEEPSEEK_BOS, eos_token: str = DEEPSEEK_EOS):
        from tokenizers import Tokenizer

        self.path = Path(path)
        try:
            self._tok = Tokenizer.from_file(str(self.path))
        except Exception as err:  # the Rust loader raises a bare Exception on malformed JSON
            raise TokenizerError(f"{self.path}: not a tokenizer.json ({err})") from None
        self.bos_id = self._tok.token_to_id(bos_token)
        self.eos_id = self._tok.token_to_id(eos_token)
        markers = [i for i in (self.bos_id, self.eos_id) if i is not None]
        self.text_size = max(markers) + 1 if markers else self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> np.ndarray:
        ids = np.asarray(self._tok.encode(text, add_special_tokens=False).ids, np.int32)
        if ids.size and ids.max() >= self.text_size:
            raise TokenizerError(f"{self.path}: text {text[:40]!r} encodes to id {int(ids.max())}, beyond the "
                                 f"text ids 0..{self.text_size - 1}")
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


def load_tokenizer(directory: str | os.PathLike) -> TextTokenizer:
    directory = Path(directory)
    if (directory / SPM_FILE).is_file():
        return SentencePieceTokenizer(directory / SPM_FILE)
    if (directory / HF_FILE).is_file():
        return HFTokenizer(directory / HF_FILE)
    raise TokenizerError(f"{directory}: no {SPM_FILE} or {HF_FILE} in this tokenizer directory")


def copy_tokenizer(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copies the tokenizer file of directory `src` into directory `dst`."""
    src, dst = Path(src), Path(dst)
    for name in (SPM_FILE, HF_FILE):
        if (src / name).is_file():
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / name, dst / name)
            return
    raise TokenizerError(f"{src}: no {SPM_FILE} or {HF_FILE} in this tokenizer directory")


def train_sentencepiece(text_files: Sequence[str | os.PathLike], out_dir: str | os.PathLike, vocab_size: int,
                        extra_lines: Sequence[str] = (), model_type: str = "bpe") -> SentencePieceTokenizer:
    """Trains a sentencepiece model on the lines of `text_files` plus `extra_lines` (the prompt
    templates, so they tokenise compactly); writes OUT_DIR/spm.model atomically.

    Newlines are kept as a piece of their own (the MoST template separates its parts with
    "\\n\\n"), whitespace is not collapsed, and characters never seen in training fall back to
    byte pieces instead of <unk>, so decode(encode(s)) == s for any text.
    """
    import sentencepiece as spm

    paths = [Path(p) for p in text_files]
    for p in paths:
        if not p.is_file():
            raise TokenizerError(f"{p}: text file does not exist")
    if vocab_size < 300:
        raise TokenizerError(f"vocab_size must be >= 300 (256 byte pieces + text pieces), got {vocab_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".spm-") as tmp:
        inputs = [str(p) for p in paths]
        if extra_lines:
            extra = Path(tmp) / "extra.txt"
            # The template occurs in every training sequence; weight it like a frequent sentence.
            lines = "".join(line.replace("\n", " ") + "\n" for line in extra_lines)
            extra.write_text(lines * EXTRA_LINE_WEIGHT, encoding="utf-8")
            inputs.append(str(extra))
        try:
            spm.SentencePieceTrainer.train(
                input=",".join(inputs), model_prefix=str(Path(tmp) / "spm"), vocab_size=vocab_size,
                model_type=model_type, character_coverage=1.0, bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0,
                user_defined_symbols=["\n"], normalization_rule_name="identity", remove_extra_whitespaces=False,
                add_dummy_prefix=False, byte_fallback=True, num_threads=1, minloglevel=2)
        except RuntimeError as err:
            raise TokenizerError(f"sentencepiece training on {[str(p) for p in paths]} failed: {err}") from None
        os.replace(Path(tmp) / "spm.model", out_dir / SPM_FILE)
    return SentencePieceTokenizer(out_dir / SPM_FILE)
