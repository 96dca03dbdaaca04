"""Vocoder import: waveform parity with transformers' SeamlessM4TCodeHifiGan (its duration
predictor included) through `most vocoder import-hf` + `synth`, and the speech-resynthesis
CodeGenerator layout (weight_g / weight_v, {'generator': ...}) built from the same tensors."""

import json

import numpy as np
import pytest
import torch
from transformers import SeamlessM4TConfig
from transformers.models.seamless_m4t.modeling_seamless_m4t import SeamlessM4TCodeHifiGan

from most_jax.cli import main

SMALL_DISC = ["--set", "model.mpd_channels=[4,4]", "--set", "model.msd_channels=[4,4,4,4,4,4,4]",
              "--set", "model.msd_groups=[1,1,1,1,1,1,1]", "--set", "model.msd_scales=1"]
UNITS = np.array([1, 5, 7, 2, 12, 0, 3, 3, 9])


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    torch.manual_seed(0)
    conf = SeamlessM4TConfig(unit_hifi_gan_vocab_size=13, unit_embed_dim=7, lang_embed_dim=3, spkr_embed_dim=5,
                             vocoder_num_langs=4, vocoder_num_spkrs=3, variance_predictor_kernel_size=3,
                             upsample_initial_channel=16, upsample_rates=[5, 4, 2], upsample_kernel_sizes=[11, 8, 4],
                             resblock_kernel_sizes=[3, 5], resblock_dilation_sizes=[[1, 3], [1, 2]])
    model = SeamlessM4TCodeHifiGan(conf).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.15)
        model.dur_predictor.proj.bias.fill_(1.2)  # durations of 2-3 frames: the expansion is exercised
    model.save_pretrained(root / "hf")
    with torch.no_grad():
        wave, _ = model(torch.from_numpy(UNITS)[None], torch.tensor([[2]]), torch.tensor([[1]]))
        dur = torch.clamp(torch.round(torch.expm1(model.dur_predictor(model.unit_embedding(
            torch.from_numpy(UNITS)[None])))), min=1)
    np.save(root / "units.npy", UNITS)
    return root, model, wave[0].numpy(), dur[0].numpy()


def test_import_hf_synth_matches_transformers(hf, capsys):
    root, _, ref, dur = hf
    assert dur.max() > 1 and 0.02 < np.abs(ref).mean() < 0.9  # expansion exercised, tanh not saturated
    assert main(["vocoder", "import-hf", str(root / "hf"), str(root / "ours"), *SMALL_DISC]) == 0
    assert main(["vocoder", "synth", str(root / "ours"), "--units", str(root / "units.npy"), "--speaker", "2",
                 "--lang", "1", "--out", str(root / "out.npy")]) == 0
    ours = np.load(root / "out.npy")
    assert ours.shape == ref.shape == (int(dur.sum()) * 40,)
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    assert main(["vocoder", "synth", str(root / "ours"), "--units", str(root / "units.npy"), "--speaker", "2",
                 "--lang", "1", "--out", str(root / "out.wav")]) == 0
    import soundfile as sf

    pcm, sr = sf.read(root / "out.wav")
    assert sr == 16000 and np.abs(pcm - ref).max() < 1e-4 + 1 / 32768


def test_synth_refuses_bad_ids(hf, capsys):
    root = hf[0]
    np.save(root / "bad.npy", np.array([1, 13]))
    assert main(["vocoder", "synth", str(root / "ours"), "--units", str(root / "bad.npy"), "--out",
                 str(root / "x.npy")]) == 2
    assert "0..12" in capsys.readouterr().err
    assert main(["vocoder", "synth", str(root / "ours"), "--units", str(root / "units.npy"), "--speaker", "3",
                 "--out", str(root / "x.npy")]) == 2
    assert "--speaker 3" in capsys.readouterr().err and not (root / "x.npy").exists()


def _speech_resynthesis_state(model) -> dict:
    """The HF model's tensors under CodeGenerator's names, convs weight-normed the old way."""
    state = {}
    for name, t in model.state_dict().items():
        sr = name.replace("hifi_gan.", "").replace("upsampler.", "ups.").replace("unit_embedding", "dict")
        sr = sr.replace("dur_predictor.conv1.", "dur_predictor.conv1.0.").replace("dur_predictor.conv2.",
                                                                                  "dur_predictor.conv2.0.")
        if name.startswith(("speaker_embedding", "language_embedding")):
            continue
        if name == "hifi_gan.conv_pre.weight":
            t = t[:, 3:10]  # HF conditions on [lang 3, unit 7, speaker 5]; this CodeGenerator on units only
        if name.startswith("hifi_gan.") and name.endswith(".weight"):
            g = t.flatten(1).norm(dim=1).reshape(-1, 1, 1) * 1.7  # g != |v|: the direction is rescaled
            state[sr[:-len("weight")] + "weight_g"], state[sr[:-len("weight")] + "weight_v"] = g, t
        else:
            state[sr] = t
    return state


def test_import_unit_hifigan_layout(hf, tmp_path):
    _, model, _, _ = hf
    conf = model.config
    h = {"resblock": "1", "upsample_rates": conf.upsample_rates, "upsample_kernel_sizes": conf.upsample_kernel_sizes,
         "upsample_initial_channel": 16, "resblock_kernel_sizes": conf.resblock_kernel_sizes,
         "resblock_dilation_sizes": conf.resblock_dilation_sizes, "num_embeddings": 13, "embedding_dim": 7,
         "model_in_dim": 7, "dur_prediction_weight": 1.0,
         "dur_predictor_params": {"encoder_embed_dim": 7, "var_pred_hidden_dim": 7, "var_pred_kernel_size": 3,
                                  "var_pred_dropout": 0.5}, "sampling_rate": 16000}
    (tmp_path / "config.json").write_text(json.dumps(h))
    state = _speech_resynthesis_state(model)
    torch.save({"generator": state}, tmp_path / "g.pt")
    assert main(["vocoder", "import-unit-hifigan", str(tmp_path / "g.pt"), str(tmp_path / "config.json"),
                 str(tmp_path / "ours"), *SMALL_DISC]) == 0

    # the reference: CodeGenerator's forward = the HF generator on [unit] embeddings, weights g * v / |v|
    from most_jax.checkpoint.params_io import restore_model
    from most_jax.infer.vocoder import synthesize

    _, ours = restore_model(tmp_path / "ours")
    frames = np.repeat(UNITS, 2)
    hifi = model.hifi_gan
    with torch.no_grad():
        x = model.unit_embedding(torch.from_numpy(frames)[None]).transpose(1, 2)
        x = torch.cat([torch.zeros(1, 3, x.shape[2]), x, torch.zeros(1, 5, x.shape[2])], dim=1)  # no lang/speaker
        for mod in [hifi.conv_pre, *hifi.upsampler, *(c for b in hifi.resblocks for c in (*b.convs1, *b.convs2)),
                    hifi.conv_post]:
            mod.weight.mul_(1.7)
        ref = hifi(x)[0].numpy()
    np.testing.assert_allclose(synthesize(ours.generator, frames, use_durations=False), ref, atol=1e-4)

    del state["conv_post.bias"]
    torch.save(state, tmp_path / "bare.pt")
    from most_jax.checkpoint.vocoder_import import VocoderImportError, import_unit_hifigan

    with pytest.raises(VocoderImportError, match="missing tensor 'conv_post.bias'"):
        import_unit_hifigan(tmp_path / "bare.pt", tmp_path / "config.json", tmp_path / "x")
    assert not (tmp_path / "x").exists()
