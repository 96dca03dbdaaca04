"""HuBERT against transformers' HubertModel: import, every layer's hidden states, padded batches,
the weight-norm spellings, bf16, the CLI, and errors naming the tensor."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from cli_check import cli_error
from hubert_reference import hf_hidden_states, save_tiny, waveforms
from most_jax.checkpoint.hf_import import HFImportError
from most_jax.checkpoint.hubert_hf import import_hubert
from most_jax.checkpoint.params_io import restore_model
from most_jax.cli import main
from most_jax.models.hubert.encode import encode

LENGTHS = [5003, 3701, 1900]  # unequal, not multiples of the frame: the padded batch is ragged


@pytest.mark.parametrize("variant", ["base", "large", "25hz"])
def test_every_layer_matches_transformers_alone_and_in_a_padded_batch(tmp_path, variant):
    hf = save_tiny(tmp_path / "hf", variant)
    import_hubert(tmp_path / "hf", tmp_path / "ck")
    _, model = restore_model(tmp_path / "ck")
    wave, lengths = waveforms(LENGTHS)
    hidden, last, frames = encode(model, wave, lengths)
    assert hidden.shape[:2] == (hf.config.num_hidden_layers + 1, len(LENGTHS))
    for b, n in enumerate(LENGTHS):
        ref_hidden, ref_last = hf_hidden_states(hf, wave[b, :n])
        t = ref_hidden.shape[1]
        assert frames[b] == t
        np.testing.assert_allclose(hidden[:, b, :t], ref_hidden, atol=1e-4, rtol=0)
        np.testing.assert_allclose(last[b, :t], ref_last, atol=1e-4, rtol=0)
        assert not hidden[:, b, t:].any()  # padding is zero, not garbage


def test_old_weight_norm_spelling_imports_the_same(tmp_path):
    save_tiny(tmp_path / "hf", "base")
    tensors = load_file(tmp_path / "hf" / "model.safetensors")
    prefix = "encoder.pos_conv_embed.conv."
    tensors[prefix + "weight_g"] = tensors.pop(prefix + "parametrizations.weight.original0")
    tensors[prefix + "weight_v"] = tensors.pop(prefix + "parametrizations.weight.original1")
    (tmp_path / "old").mkdir()
    save_file(tensors, tmp_path / "old" / "model.safetensors")
    (tmp_path / "old" / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    import_hubert(tmp_path / "hf", tmp_path / "new_ck")
    import_hubert(tmp_path / "old", tmp_path / "old_ck")
    wave, lengths = waveforms([2500])
    a = encode(restore_model(tmp_path / "new_ck")[1], wave, lengths)[0]
    b = encode(restore_model(tmp_path / "old_ck")[1], wave, lengths)[0]
    np.testing.assert_array_equal(a, b)


def test_bfloat16_stays_near_float32(tmp_path):
    save_tiny(tmp_path / "hf", "large")
    import_hubert(tmp_path / "hf", tmp_path / "f32")
    import_hubert(tmp_path / "hf", tmp_path / "bf16", dtype="bfloat16")
    wave, lengths = waveforms([3000, 2000])
    ref = encode(restore_model(tmp_path / "f32")[1], wave, lengths)[1]
    low = encode(restore_model(tmp_path / "bf16")[1], wave, lengths)[1]
    scale = np.abs(ref).max()
    assert np.abs(low - ref).max() < 0.1 * scale
    assert np.abs(low - ref).max() > 0  # it really ran in bf16


def test_cli_import_and_features(tmp_path, capsys):
    hf = save_tiny(tmp_path / "hf", "25hz")
    assert main(["hubert", "import-hf", str(tmp_path / "hf"), str(tmp_path / "ck")]) == 0
    wave, lengths = waveforms([4000, 2600])
    np.savez(tmp_path / "in.npz", waveforms=wave, lengths=lengths)
    assert main(["hubert", "features", str(tmp_path / "ck"), "--input", str(tmp_path / "in.npz"),
                 "--output", str(tmp_path / "out.npz")]) == 0
    out = np.load(tmp_path / "out.npz")
    ref, _ = hf_hidden_states(hf, wave[1, :2600])
    assert out["frame_lengths"].tolist()[1] == ref.shape[1]
    np.testing.assert_allclose(out["hidden_states"][:, 1, :ref.shape[1]], ref, atol=1e-4, rtol=0)
    np.savez(tmp_path / "bad.npz", waveforms=wave, lengths=np.array([4000, 100]))
    cli_error(["hubert", "features", str(tmp_path / "ck"), "--input", str(tmp_path / "bad.npz"),
               "--output", str(tmp_path / "out2.npz")],
              r"lengths\[1\] = 100")


def test_errors_name_the_tensor(tmp_path):
    save_tiny(tmp_path / "hf", "base")
    tensors = load_file(tmp_path / "hf" / "model.safetensors")
    config = (tmp_path / "hf" / "config.json").read_text()

    def write(name, tensors):
        (tmp_path / name).mkdir()
        save_file(tensors, tmp_path / name / "model.safetensors")
        (tmp_path / name / "config.json").write_text(config)
        return tmp_path / name

    bad_shape = dict(tensors, **{"encoder.layers.1.attention.q_proj.weight": np.zeros((20, 19), np.float32)})
    with pytest.raises(HFImportError, match=r"encoder\.layers\.1\.attention\.q_proj\.weight.*\[20, 19\]"):
        import_hubert(write("shape", bad_shape), tmp_path / "o1")
    missing = {k: v for k, v in tensors.items() if k != "feature_extractor.conv_layers.0.layer_norm.bias"}
    with pytest.raises(HFImportError, match=r"feature_extractor\.conv_layers\.0\.layer_norm\.bias"):
        import_hubert(write("missing", missing), tmp_path / "o2")
    extra = dict(tensors, **{"encoder.layers.0.adapter.weight": np.zeros(3, np.float32)})
    with pytest.raises(HFImportError, match=r"encoder\.layers\.0\.adapter\.weight"):
        import_hubert(write("extra", extra), tmp_path / "o3")
    no_norm = {k: v for k, v in tensors.items() if "pos_conv_embed.conv.parametrizations" not in k}
    with pytest.raises(HFImportError, match=r"weight_g"):
        import_hubert(write("no_norm", no_norm), tmp_path / "o4")
    (tmp_path / "gelu").mkdir()
    save_file(tensors, tmp_path / "gelu" / "model.safetensors")
    (tmp_path / "gelu" / "config.json").write_text(json.dumps({**json.loads(config), "hidden_act": "relu"}))
    with pytest.raises(HFImportError, match=r"hidden_act"):
        import_hubert(tmp_path / "gelu", tmp_path / "o5")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 6))
