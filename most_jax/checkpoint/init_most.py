"""A MoST checkpoint from a DeepSeek-V2 one (SPEC section 1, "Initialisation from DeepSeek-V2-Lite").

upcycle="none" is the paper's recipe: every tensor maps one-to-one, experts j -> j, the first half
of the routed experts becomes the text group and the second half the audio group (0..31 / 32..63
for DeepSeek-V2-Lite), and the gate is unchanged. The alternatives start the audio group from the
text experts instead:

* "copy-text": same expert count; audio expert E/2 + j is a copy of text expert j.
* "grow": all E original experts form the text group and `audio_experts` new experts are added
  as the audio group, new expert E + i a copy of text expert floor(i * E / audio_experts).

In both, each copied expert's gate row is copied along with it, so an audio token starts with the
routing preferences that a text token has over the corresponding text experts.
`reinit_audio_rows` draws the embedding rows and head columns of the audio units and the
audio/waveform markers afresh from N(0, init_std) (DeepSeek never trained those ids).
The conversion streams like `most import-hf`: expert slices are re-indexed layer by layer.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np

from most_jax import config as config_lib
from most_jax.checkpoint.hf_import import HFImportError, open_hf
from most_jax.checkpoint.hf_layout import EXPERT_PATHS, Path_
from most_jax.checkpoint.param_tree import unflatten
from most_jax.checkpoint.params_io import CheckpointError, save_params
from most_jax.checkpoint.streamed import StreamedArray
from most_jax.vocab import AUDIO, TEXT

UPCYCLE = ("none", "copy-text", "grow")


def most_layout(moe: config_lib.MoEConfig, upcycle: str, audio_experts: int | None
                ) -> tuple[config_lib.MoEConfig, list[int]]:
    """(the MoST MoE config, for each new expert the source expert it starts from)."""
    e = moe.num_experts
    if moe.modality_groups:
        raise HFImportError("the source model already routes by modality; init-most starts from plain DeepSeek-V2")
    if upcycle not in UPCYCLE:
        raise HFImportError(f"--upcycle: expected one of {', '.join(UPCYCLE)}, got {upcycle!r}")
    if (audio_experts is not None) != (upcycle == "grow"):
        raise HFImportError("--audio-experts goes with --upcycle grow (and only with it)")
    if upcycle == "grow":
        if audio_experts <= 0:
            raise HFImportError(f"--audio-experts: must be positive, got {audio_experts}")
        text, audio = e, audio_experts
        sources = list(range(e)) + [i * e // audio_experts for i in range(audio_experts)]
    else:
        if e % 2:
            raise HFImportError(f"the source model has {e} routed experts; splitting them into a text and an "
                                "audio half needs an even number (or use --upcycle grow)")
        text = audio = e // 2
        sources = list(range(e)) if upcycle == "none" else list(range(text)) * 2
    groups = (config_lib.ModalityGroup(name="text", modality=TEXT, first_expert=0, num_experts=text),
              config_lib.ModalityGroup(name="audio", modality=AUDIO, first_expert=text, num_experts=audio))
    return dataclasses.replace(moe, num_experts=text + audio, modality_groups=groups), sources


def audio_token_ids(cfg: config_lib.ModelConfig) -> np.ndarray:
    """Ids of the audio units and the audio / waveform markers that exist in the vocabulary."""
    v = cfg.vocab
    ids = np.concatenate([np.arange(v.audio_unit_offset, v.audio_unit_offset + v.num_audio_units),
                          [v.begin_audio_id, v.end_audio_id, v.begin_wave_id, v.end_wave_id]])
    return np.unique(ids[ids < cfg.vocab_size])


def _reindexed(source: StreamedArray, sources: list[int], axis: int) -> StreamedArray:
    """`source` with its expert axis (`axis` of each layer slice) gathered at `sources`."""
    shape = list(source.shape)
    shape[axis + 1] = len(sources)
    index = np.asarray(sources)
    return dataclasses.replace(source, shape=tuple(shape),
                               read=lambda i: np.take(source.read(i), index, axis=axis))


def _fresh_rows(source: StreamedArray, ids: np.ndarray, axis: int, std: float, seed: int) -> StreamedArray:
    def read(i: int) -> np.ndarray:
        value = np.array(source.read(i))
        shape = list(value.shape)
        shape[axis] = len(ids)
        fresh = np.random.default_rng(seed).normal(0.0, std, shape).astype(value.dtype)
        if axis == 0:
            value[ids] = fresh
        else:
            value[:, ids] = fresh
        return value
    return dataclasses.replace(source, read=read)


def init_most(hf_dir: str | Path, out_dir: str | Path, *, upcycle: str = "none", audio_experts: int | None = None,
              reinit_audio_rows: bool = False, seed: int = 0, dtype: str = "float32",
              progress: Callable[[str], None] | None = None) -> config_lib.Config:
    """Writes the MoST parameter checkpoint initialised from the DeepSeek-V2 directory `hf_dir`."""
    if Path(out_dir).exists():
        raise CheckpointError(f"{out_dir}: already exists; choose a new output directory")
    cfg, sources, tensors = open_hf(hf_dir, dtype)
    try:
        if cfg.model.num_moe_layers == 0:
            raise HFImportError(f"{hf_dir}: the model has no MoE layers, so there are no experts to split")
        moe, expert_sources = most_layout(cfg.model.moe, upcycle, audio_experts)
        model = dataclasses.replace(cfg.model, moe=moe)
        try:
            model.validate("model")
        except config_lib.ConfigError as e:
            raise HFImportError(f"the MoST layout does not fit this model: {e}") from None
        cfg = dataclasses.replace(cfg, model=model)
        out: dict[Path_, StreamedArray] = dict(sources)
        if upcycle != "none":
            for leaf in EXPERT_PATHS.values():
                out[("moe_layers",) + leaf] = _reindexed(sources[("moe_layers",) + leaf], expert_sources, axis=0)
            out[("moe_layers", "moe", "gate")] = _reindexed(sources[("moe_layers", "moe", "gate")], expert_sources,
                                                            axis=1)
        if reinit_audio_rows:
            ids = audio_token_ids(model)
            out[("embed", "embedding")] = _fresh_rows(sources[("embed", "embedding")], ids, 0, model.init_std, seed)
            out[("lm_head",)] = _fresh_rows(sources[("lm_head",)], ids, 1, model.init_std, seed + 1)
        save_params(out_dir, cfg, unflatten(out), progress)
    finally:
        tensors.close()
    return cfg
