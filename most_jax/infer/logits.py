"""Teacher-forced logits of a checkpoint on token batches: the tool for checking a conversion.

Input is an .npz with `tokens` (integer [B, T]) and optionally `modality` (integer [B, T]; without
it the model derives modality from token ids through the config's vocabulary layout). Output is an
.npz with `logits` (float32 [B, T, V]), written to a temporary file and renamed on success.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from most_jax.atomic import atomic_file
from most_jax.config import ModelConfig
from most_jax.models.most import MoST
from most_jax.vocab import NO_GROUP

INPUT_KEYS = ("tokens", "modality")


class LogitsInputError(ValueError):
    """The input .npz is missing, malformed or inconsistent with the model (names the array and file)."""


def read_token_batch(path: str | Path, cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """(tokens int32 [B, T], modality int32 [B, T] or None), validated against `cfg`."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise LogitsInputError(f"{path}: no such input file") from None
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise LogitsInputError(f"{path}: not a readable .npz file ({e})") from None
    unknown = sorted(set(arrays) - set(INPUT_KEYS))
    if unknown:
        raise LogitsInputError(f"{path}: unexpected arrays {unknown}; expected 'tokens' and optionally 'modality'")
    if "tokens" not in arrays:
        raise LogitsInputError(f"{path}: no 'tokens' array (int32 [B, T])")
    tokens = _int_matrix(arrays["tokens"], "tokens", path)
    bad = (tokens < 0) | (tokens >= cfg.vocab_size)
    if bad.any():
        b, t = np.argwhere(bad)[0]
        raise LogitsInputError(f"{path}: tokens[{b}, {t}] = {tokens[b, t]} is outside the vocabulary "
                               f"0..{cfg.vocab_size - 1} ({int(bad.sum())} such ids)")
    if "modality" not in arrays:
        return tokens.astype(np.int32), None
    modality = _int_matrix(arrays["modality"], "modality", path)
    if modality.shape != tokens.shape:
        raise LogitsInputError(f"{path}: modality has shape {list(modality.shape)}, tokens {list(tokens.shape)}")
    allowed = {NO_GROUP} | {g.modality for g in cfg.moe.modality_groups}
    if cfg.moe.modality_groups:
        bad = ~np.isin(modality, sorted(allowed))
    else:
        bad = modality < NO_GROUP
    if bad.any():
        b, t = np.argwhere(bad)[0]
        raise LogitsInputError(f"{path}: modality[{b}, {t}] = {modality[b, t]} is not a modality of this model "
                               f"(allowed: {sorted(allowed) if cfg.moe.modality_groups else '>= -1'})")
    return tokens.astype(np.int32), modality.astype(np.int32)


def _int_matrix(a: np.ndarray, name: str, path: Path) -> np.ndarray:
    if a.ndim != 2 or 0 in a.shape:
        raise LogitsInputError(f"{path}: {name} must be a non-empty [B, T] matrix, got shape {list(a.shape)}")
    if not np.issubdtype(a.dtype, np.integer):
        raise LogitsInputError(f"{path}: {name} must hold integers (int32), got dtype {a.dtype}")
    if a.size and (a.min() < np.iinfo(np.int32).min or a.max() > np.iinfo(np.int32).max):
        raise LogitsInputError(f"{path}: {name} values do not fit int32")
    return a


def batched_logits(model: MoST, tokens_BT: np.ndarray, modality_BT: np.ndarray | None = None,
                   batch_size: int = 0, row_multiple: int = 1) -> np.ndarray:
    """float32 [B, T, V] logits, `batch_size` rows per forward pass (0: all at once), rounded up to
    a multiple of `row_multiple` (the data-parallel ways of a mesh). A short chunk is padded with
    copies of its first row, whose logits are dropped, so one compiled shape serves every chunk."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, tokens, modality):
        logits, _ = nnx.merge(graphdef, state)(tokens, modality_BT=modality)
        return logits

    rows = tokens_BT.shape[0]
    step = rows if batch_size <= 0 else min(batch_size, rows)
    step = -(-step // row_multiple) * row_multiple
    chunks = []
    for start in range(0, rows, step):
        real = min(step, rows - start)
        idx = np.concatenate([np.arange(start, start + real), np.full(step - real, start)])
        modality = None if modality_BT is None else jnp.asarray(modality_BT[idx])
        out = forward(state, jnp.asarray(tokens_BT[idx]), modality)
        chunks.append(np.asarray(out, np.float32)[:real])
    return np.concatenate(chunks, axis=0)


def write_npz_atomic(path: str | Path, **arrays: np.ndarray) -> Path:
    """np.savez to a temporary sibling, renamed over `path` once complete."""
    path = Path(path)
    if path.suffix != ".npz":
        raise LogitsInputError(f"{path}: the output file name must end in .npz")
    with atomic_file(path) as tmp:
        np.savez(tmp, **arrays)
    return path
