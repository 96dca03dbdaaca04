"""Unit HiFi-GAN weights from PyTorch into a vocoder checkpoint.

Two layouts of the same generator (models/vocoder/generator.py):
- transformers' SeamlessM4TCodeHifiGan (`save_pretrained` directory: config.json, model.safetensors):
  unit_embedding, speaker_embedding, language_embedding, dur_predictor.{conv1,ln1,conv2,ln2,proj},
  hifi_gan.{conv_pre, upsampler.I, resblocks.J.convs{1,2}.K, conv_post};
- speech-resynthesis / SpiritLM CodeGenerator (G.pt, `{'generator': state_dict}` or a bare
  state_dict, plus its JSON config): dict, spkr (multispkr), dur_predictor.{conv1.0,ln1,conv2.0,ln2,
  proj}, conv_pre, ups.I, resblocks.J.convs{1,2}.K, conv_post.
A conv may be stored plain (`weight`), weight-normed old style (`weight_g`, `weight_v`) or through
torch's parametrizations (`parametrizations.weight.original0` = g, `original1` = v); a plain weight w
becomes v = w, g = |w|. The files hold no discriminators: the checkpoint gets freshly initialised
ones (seed 0), so it can be fine-tuned with `most vocoder train --init-from`.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np
from flax import nnx

from most_jax import config as config_lib
from most_jax.checkpoint.param_tree import flatten, unflatten
from most_jax.checkpoint.params_io import save_params
from most_jax.checkpoint.safetensors_file import SafetensorsError, SafetensorsFile
from most_jax.config import Config, VocoderConfig
from most_jax.models.family import build_model

Path_ = tuple[str, ...]
_WN_LEAVES = ("weight_v", "weight_g")


class VocoderImportError(ValueError):
    """A vocoder file or config cannot be converted (names the file, field or tensor)."""


# ----------------------------------------------------------------------------- configs


def _field(conf: dict, name: str, where: str):
    if name not in conf:
        raise VocoderImportError(f"{where}: missing field {name!r}")
    return conf[name]


def config_from_hf(conf: dict, where: str = "config.json") -> dict:
    """The model section (a dict of VocoderConfig fields) of a SeamlessM4TCodeHifiGan config."""
    f = lambda name: _field(conf, name, where)  # noqa: E731
    if f("variance_predictor_kernel_size") != 3:
        raise VocoderImportError(f"{where}: variance_predictor_kernel_size {conf['variance_predictor_kernel_size']} "
                                 "is not 3 (transformers' second predictor conv pads by 1, so only 3 keeps the length)")
    return {"family": "vocoder", "num_units": f("unit_hifi_gan_vocab_size"), "unit_embed_dim": f("unit_embed_dim"),
            "num_speakers": f("vocoder_num_spkrs"), "speaker_embed_dim": f("spkr_embed_dim"),
            "num_langs": f("vocoder_num_langs"), "lang_embed_dim": f("lang_embed_dim"),
            "duration_predictor": True, "dur_hidden_dim": f("unit_embed_dim"), "dur_kernel_size": 3,
            "dur_dropout": f("var_pred_dropout"), "upsample_rates": list(f("upsample_rates")),
            "upsample_kernel_sizes": list(f("upsample_kernel_sizes")),
            "upsample_initial_channel": f("upsample_initial_channel"),
            "resblock_kernel_sizes": list(f("resblock_kernel_sizes")),
            "resblock_dilation_sizes": [list(d) for d in f("resblock_dilation_sizes")],
            "leaky_relu_slope": f("leaky_relu_slope"), "sample_rate": f("sampling_rate")}


_SR_UNSUPPORTED = ("f0", "lambda_commit", "lambda_commit_code", "f0_quantizer_path")


def config_from_unit_hifigan(h: dict, where: str) -> dict:
    """The model section of a speech-resynthesis CodeGenerator JSON config (units + optional
    speaker; F0 / VQ-code / quantizer inputs are refused by name)."""
    f = lambda name: _field(h, name, where)  # noqa: E731
    used = [k for k in _SR_UNSUPPORTED if h.get(k)]
    if used:
        raise VocoderImportError(f"{where}: {', '.join(used)} set; only unit (+ speaker) CodeGenerators are supported")
    if str(h.get("resblock", "1")) != "1":
        raise VocoderImportError(f"{where}: resblock {h['resblock']!r}; only HiFi-GAN's ResBlock1 ('1') is supported")
    dim = f("embedding_dim")
    multispkr = bool(h.get("multispkr"))
    in_dim = h.get("model_in_dim", 128)
    if in_dim != dim * (2 if multispkr else 1):
        raise VocoderImportError(f"{where}: model_in_dim {in_dim} is not embedding_dim {dim} x "
                                 f"{2 if multispkr else 1} (units{' + speaker' if multispkr else ''}): other "
                                 "conditioning inputs are not supported")
    section: dict[str, Any] = {
        "family": "vocoder", "num_units": f("num_embeddings"), "unit_embed_dim": dim,
        "num_speakers": 200 if multispkr else 0, "speaker_embed_dim": dim if multispkr else 0,
        "duration_predictor": bool(h.get("dur_prediction_weight")),
        "upsample_rates": list(f("upsample_rates")), "upsample_kernel_sizes": list(f("upsample_kernel_sizes")),
        "upsample_initial_channel": f("upsample_initial_channel"),
        "resblock_kernel_sizes": list(f("resblock_kernel_sizes")),
        "resblock_dilation_sizes": [list(d) for d in f("resblock_dilation_sizes")],
        "leaky_relu_slope": 0.1, "sample_rate": h.get("sampling_rate", 16000)}
    if section["duration_predictor"]:
        dp = f("dur_predictor_params")
        if dp.get("encoder_embed_dim", dim) != dim:
            raise VocoderImportError(f"{where}: dur_predictor_params.encoder_embed_dim {dp['encoder_embed_dim']} is "
                                     f"not embedding_dim {dim}")
        if dp.get("var_pred_kernel_size", 3) != 3:
            raise VocoderImportError(f"{where}: dur_predictor_params.var_pred_kernel_size "
                                     f"{dp['var_pred_kernel_size']} is not 3 (the reference pads its second conv by 1)")
        section.update(dur_hidden_dim=_field(dp, "var_pred_hidden_dim", f"{where}: dur_predictor_params"),
                       dur_kernel_size=3, dur_dropout=dp.get("var_pred_dropout", 0.5))
    mel = {"mel_n_fft": "n_fft", "mel_hop": "hop_size", "mel_win": "win_size", "mel_bins": "num_mels",
           "mel_fmin": "fmin"}
    section.update({ours: h[theirs] for ours, theirs in mel.items() if h.get(theirs) is not None})
    fmax = h.get("fmax_for_loss")
    section["mel_fmax"] = section["sample_rate"] / 2 if fmax is None else fmax
    return section


def _vocoder_config(section: dict, overrides: list[str] | tuple[str, ...], where: str) -> Config:
    try:
        data = config_lib.apply_overrides({"model": section}, list(overrides))
        cfg = config_lib.config_from_dict(data)
    except config_lib.ConfigError as e:
        raise VocoderImportError(f"{where}: {e}") from None
    return cfg


# ----------------------------------------------------------------------------- tensors


def _hf_name(path: Path_) -> str:
    name = ".".join(path)
    name = name.replace("hifi_gan.ups.", "hifi_gan.upsampler.").replace("lang_embedding", "language_embedding")
    return name


def _sr_name(path: Path_) -> str:
    name = ".".join(path)
    if name.startswith("hifi_gan."):
        name = name[len("hifi_gan."):]
    name = name.replace("unit_embedding", "dict").replace("speaker_embedding", "spkr")
    return name.replace("dur_predictor.conv1", "dur_predictor.conv1.0").replace("dur_predictor.conv2",
                                                                                 "dur_predictor.conv2.0")


def _take(state: dict[str, np.ndarray], used: set[str], key: str, where: str) -> np.ndarray:
    if key not in state:
        raise VocoderImportError(f"{where}: missing tensor {key!r}")
    used.add(key)
    return np.asarray(state[key], np.float32)


def _weight_norm_pair(state, used, module: str, transposed: bool, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(v, g) in torch's layout ([O, I, K] conv, [I, O, K] transposed conv; g one per dim 0 slice)."""
    for g_key, v_key in ((f"{module}.weight_g", f"{module}.weight_v"),
                         (f"{module}.parametrizations.weight.original0", f"{module}.parametrizations.weight.original1")):
        if g_key in state or v_key in state:
            v = _take(state, used, v_key, where)
            return v, _take(state, used, g_key, where).reshape(-1)
    w = _take(state, used, f"{module}.weight", where)
    return w, np.sqrt((w.astype(np.float64) ** 2).sum(axis=(1, 2))).astype(np.float32)


def generator_params(state: dict[str, np.ndarray], shapes: dict[Path_, Any], name_of: Callable[[Path_], str],
                     where: str) -> dict[Path_, np.ndarray]:
    """{generator path: array} for every leaf of `shapes` (the generator's abstract params) from the
    torch state_dict `state`; every tensor must be used and every shape must fit."""
    used: set[str] = set()
    out: dict[Path_, np.ndarray] = {}
    for path in shapes:
        module, leaf = path[:-1], path[-1]
        if path in out:
            continue
        torch_module = name_of(module)
        if leaf in _WN_LEAVES:
            transposed = len(module) >= 2 and module[-2] == "ups"
            v, g = _weight_norm_pair(state, used, torch_module, transposed, where)
            # torch [O, I, K] (conv) or [I, O, K] (transposed) -> our [K, I, O]
            out[module + ("weight_v",)] = v.transpose(2, 1, 0) if not transposed else v.transpose(2, 0, 1)
            out[module + ("weight_g",)] = g
        elif leaf in ("unit_embedding", "speaker_embedding", "lang_embedding"):
            out[path] = _take(state, used, f"{name_of(path)}.weight", where)
        elif leaf == "kernel":
            w = _take(state, used, f"{torch_module}.weight", where)
            out[path] = w.T if w.ndim == 2 else w.transpose(2, 1, 0)
        elif leaf == "scale":
            out[path] = _take(state, used, f"{torch_module}.weight", where)
        elif leaf == "bias":
            out[path] = _take(state, used, f"{torch_module}.bias", where)
        else:
            raise AssertionError(f"no torch name for {'.'.join(path)}")
    wrong = [f"{name_of(p)} has shape {list(out[p].shape)} (as ours), the config needs {list(shapes[p].shape)}"
             for p in shapes if tuple(out[p].shape) != tuple(shapes[p].shape)]
    unused = sorted(set(state) - used)
    if wrong or unused:
        raise VocoderImportError(f"{where}: " + "; ".join(wrong + ([f"unexpected tensors {unused}"] if unused else [])))
    return out


def _write(cfg: Config, generator: dict[Path_, np.ndarray], out: str | Path) -> Config:
    model = build_model(cfg.model, 0)
    params = dict(flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param))))
    for path, value in generator.items():
        params[("generator", *path)] = value
    save_params(out, cfg, unflatten({p: np.asarray(v, np.float32) for p, v in params.items()}))
    return cfg


def _generator_shapes(cfg: Config) -> dict[Path_, Any]:
    from most_jax.checkpoint.param_tree import abstract_params

    return {p[1:]: s for p, s in abstract_params(cfg.model).items() if p[0] == "generator"}


def import_hf(hf_dir: str | Path, out: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A `SeamlessM4TCodeHifiGan.save_pretrained` directory -> vocoder checkpoint `out`."""
    hf_dir = Path(hf_dir)
    conf_path, weights = hf_dir / "config.json", hf_dir / "model.safetensors"
    for path in (conf_path, weights):
        if not path.is_file():
            raise VocoderImportError(f"{path}: missing (expected a save_pretrained directory of "
                                     "SeamlessM4TCodeHifiGan, one safetensors file)")
    try:
        conf = json.loads(conf_path.read_text())
    except ValueError as e:
        raise VocoderImportError(f"{conf_path}: not JSON ({e})") from None
    cfg = _vocoder_config(config_from_hf(conf, str(conf_path)), overrides, str(conf_path))
    try:
        file = SafetensorsFile(weights)
        state = {name: file.read(name) for name in file.tensors}
        file.close()
    except SafetensorsError as e:
        raise VocoderImportError(str(e)) from None
    return _write(cfg, generator_params(state, _generator_shapes(cfg), _hf_name, str(weights)), out)


def read_generator_pt(path: str | Path) -> dict[str, np.ndarray]:
    """The generator state_dict of a HiFi-GAN training checkpoint ({'generator': ...}) or a bare one."""
    try:
        import torch
    except ImportError:
        raise VocoderImportError("most vocoder import-unit-hifigan reads a PyTorch .pt file and needs torch "
                                 "(pip install torch)") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
        raise VocoderImportError(f"{path}: not a readable PyTorch checkpoint: {str(e).splitlines()[0]}") from None
    if isinstance(state, dict) and isinstance(state.get("generator"), dict):
        state = state["generator"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise VocoderImportError(f"{path}: expected {{'generator': state_dict}} or a state_dict of tensors")
    return {k: v.detach().float().numpy() for k, v in state.items()}


def import_unit_hifigan(generator_pt: str | Path, config_json: str | Path, out: str | Path,
                        overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A speech-resynthesis / SpiritLM CodeGenerator (G.pt + its JSON config) -> checkpoint `out`."""
    try:
        h = json.loads(Path(config_json).read_text())
    except (OSError, ValueError) as e:
        raise VocoderImportError(f"{config_json}: unreadable JSON config ({e})") from None
    cfg = _vocoder_config(config_from_unit_hifigan(h, str(config_json)), overrides, str(config_json))
    state = read_generator_pt(generator_pt)
    return _write(cfg, generator_params(state, _generator_shapes(cfg), _sr_name, str(generator_pt)), out)
