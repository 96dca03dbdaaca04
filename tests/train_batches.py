"""A small deterministic in-memory batch source for the trainer tests.

Batch i is a pure function of (seed, i mod distinct): rows packed with two segments each (a text
prompt followed by an audio-unit response, and the reverse), loss on the responses, then padding.
It has the iterator interface the training loop needs (`__next__`, `get_state`, `set_state`).
"""

from __future__ import annotations

import numpy as np

from most_jax.config import VocabConfig
from most_jax.data.tasks import TASK_IDS
from most_jax.vocab import modality_of_tokens


class SyntheticBatches:
    def __init__(self, vocab: VocabConfig, batch_size: int, seq_len: int, *, seed: int = 0, distinct: int | None = None,
                 padding: int = 3, poison_from: int | None = None, poison_id: int | None = None):
        """distinct: repeat the first `distinct` batches forever (memorisation); poison_from: from
        batch index `poison_from` on, the first token of every row is `poison_id`."""
        self.vocab, self.batch_size, self.seq_len = vocab, batch_size, seq_len
        self.seed, self.distinct, self.padding = seed, distinct, padding
        self.poison_from, self.poison_id = poison_from, poison_id
        self.index = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.batch(self.index)
        self.index += 1
        return batch

    def get_state(self) -> dict:
        return {"index": self.index}

    def set_state(self, state: dict) -> None:
        self.index = int(state["index"])

    def batch(self, index: int) -> dict[str, np.ndarray]:
        key = index if self.distinct is None else index % self.distinct
        rng = np.random.default_rng([self.seed, key])
        rows = [self._row(rng) for _ in range(self.batch_size)]
        batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        if self.poison_from is not None and index >= self.poison_from:
            batch["tokens"][:, 0] = self.poison_id
        return batch

    def _row(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        v = self.vocab
        used = self.seq_len - self.padding
        cut = int(rng.integers(used // 3, 2 * used // 3))
        tokens, targets, loss, segment, task = [], [], [], [], []
        for seg, (length, name) in enumerate(((cut, "asr"), (used - cut, "tts")), start=1):
            half = length // 2
            text = rng.integers(0, v.text_size - 2, size=half)
            units = v.audio_unit_offset + rng.integers(0, v.num_audio_units, size=length - half)
            seq = np.concatenate([text, units] if name == "asr" else [units, text])
            tokens.append(seq)
            targets.append(np.append(seq[1:], v.pad_id))
            mask = np.zeros(length, np.int32)
            mask[half - 1:length - 1] = 1  # predict the response part
            loss.append(mask)
            segment.append(np.full(length, seg))
            task.append(np.full(length, TASK_IDS[name]))
        pad = self.padding
        tokens = np.concatenate(tokens + [np.full(pad, v.pad_id)]).astype(np.int32)
        segment_ids = np.concatenate(segment + [np.zeros(pad)]).astype(np.int32)
        modality = np.where(segment_ids > 0, modality_of_tokens(v, tokens), -1).astype(np.int32)
        positions = np.concatenate([np.arange(cut), np.arange(used - cut), np.zeros(pad)]).astype(np.int32)
        return {
            "tokens": tokens,
            "targets": np.concatenate(targets + [np.full(pad, v.pad_id)]).astype(np.int32),
            "loss_mask": np.concatenate(loss + [np.zeros(pad)]).astype(np.int32),
            "modality": modality,
            "segment_ids": segment_ids,
            "positions": positions,
            "task": np.concatenate(task + [np.full(pad, -1)]).astype(np.int32),
        }
