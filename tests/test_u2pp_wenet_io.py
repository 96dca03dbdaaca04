"""WeNet U2++ checkpoints in and out (checkpoint/wenet.py, `most u2pp import-wenet/export-wenet`),
against the PyTorch transcription of WeNet in tests/wenet_ref."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cli_check import cli_error
from most_jax.checkpoint import wenet  # noqa: E402
from wenet_ref.asr_model import init_asr_model  # noqa: E402

VOCAB = 13
FEAT = 23


def train_yaml(mlp_type="moe", input_layer="conv2d", bias=True, cmvn_file=None) -> dict:
    """A WeNet U2++ training YAML (AISHELL's layout, shrunk; odd widths)."""
    ffn = {"mlp_type": mlp_type, "mlp_bias": bias, "n_expert": 3, "n_expert_activated": 2}
    conf = {
        "input_dim": FEAT,
        "output_dim": VOCAB,
        "encoder": "conformer",
        "encoder_conf": {
            "output_size": 12, "attention_heads": 3, "linear_units": 10, "num_blocks": 2, "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1, "attention_dropout_rate": 0.1, "input_layer": input_layer,
            "normalize_before": True, "cnn_module_kernel": 5, "use_cnn_module": True, "activation_type": "swish",
            "pos_enc_layer_type": "rel_pos", "selfattention_layer_type": "rel_selfattn", "causal": True,
            "use_dynamic_chunk": True, "cnn_module_norm": "layer_norm", "use_dynamic_left_chunk": False, **ffn,
        },
        "decoder": "bitransformer",
        "decoder_conf": {
            "attention_heads": 3, "linear_units": 14, "num_blocks": 2, "r_num_blocks": 1, "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1, "self_attention_dropout_rate": 0.1, "src_attention_dropout_rate": 0.1,
            **ffn,
        },
        "tokenizer_conf": {"special_tokens": {"<blank>": 0, "<unk>": 1, "<sos>": VOCAB - 1, "<eos>": VOCAB - 1}},
        "ctc": "ctc",
        "ctc_conf": {"ctc_blank_id": 0},
        "model": "asr_model",
        "model_conf": {"ctc_weight": 0.3, "lsm_weight": 0.1, "length_normalized_loss": False, "reverse_weight": 0.3},
    }
    if cmvn_file is not None:
        conf["cmvn"] = "global_cmvn"
        conf["cmvn_conf"] = {"cmvn_file": str(cmvn_file), "is_json_cmvn": True}
    return conf


def reference(conf: dict, seed: int = 0):
    """WeNet's ASRModel for `conf`, its parameters perturbed so biases and norms are not regular."""
    torch.manual_seed(seed)
    model = init_asr_model(copy.deepcopy(conf))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def state_arrays(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def write_cmvn(path, seed=0):
    rng = np.random.default_rng(seed)
    frames = rng.normal(2.0, 3.0, size=(200, FEAT))
    path.write_text(json.dumps({"mean_stat": frames.sum(0).tolist(), "var_stat": (frames ** 2).sum(0).tolist(),
                                "frame_num": 200}))
    return path


# ----------------------------------------------------------------------------- the name table


@pytest.mark.parametrize("mlp_type,input_layer,bias", [("moe", "conv2d", True), ("moe", "conv2d6", False),
                                                       ("position_wise_feed_forward", "conv2d8", True),
                                                       ("position_wise_feed_forward", "conv2d", False)])
def test_table_covers_wenets_state_dict_and_inverts(mlp_type, input_layer, bias):
    conf = train_yaml(mlp_type, input_layer, bias)
    ref = reference(conf)
    state = state_arrays(ref)
    cfg = wenet.config_from_wenet(copy.deepcopy(conf))
    assert list(wenet.wenet_shapes(cfg, with_cmvn=False)) == list(state)  # same names, WeNet's order
    params = wenet.params_from_wenet(state, cfg, wenet.param_shapes(cfg), np.float32)
    back = wenet.wenet_from_params(params, cfg)
    assert set(state) - set(back) == {"encoder.embed.pos_enc.pe", "decoder.left_decoder.embed.1.pe",
                                      "decoder.right_decoder.embed.1.pe"}
    for key, value in back.items():
        assert value.tobytes() == state[key].tobytes(), key
    # identity CMVN when the WeNet model has none
    np.testing.assert_array_equal(params[("encoder", "global_cmvn", "istd")], np.ones(FEAT, np.float32))


def test_experts_are_stacked_and_transposed():
    conf = train_yaml()
    state = state_arrays(reference(conf))
    cfg = wenet.config_from_wenet(copy.deepcopy(conf))
    params = wenet.params_from_wenet(state, cfg, wenet.param_shapes(cfg), np.float32)
    w_1 = params[("encoder", "encoders", "feed_forward_macaron", "w_1")]
    assert w_1.shape == (2, 3, 12, 10)  # [L, E, D, F]
    np.testing.assert_array_equal(w_1[1, 2], state["encoder.encoders.1.feed_forward_macaron.experts.2.w_1.weight"].T)
    gate = params[("decoder", "right_decoder", "decoders", "feed_forward", "gate")]
    np.testing.assert_array_equal(gate[0], state["decoder.right_decoder.decoders.0.feed_forward.gate.weight"].T)
    depthwise = params[("encoder", "encoders", "conv_module", "depthwise_conv", "kernel")]
    np.testing.assert_array_equal(depthwise[0], state["encoder.encoders.0.conv_module.depthwise_conv.weight"][:, 0].T)


def test_tensor_errors_name_the_tensor():
    conf = train_yaml()
    cfg = wenet.config_from_wenet(copy.deepcopy(conf))
    state = state_arrays(reference(conf))
    shapes = wenet.param_shapes(cfg)

    missing = dict(state)
    del missing["encoder.encoders.1.conv_module.depthwise_conv.bias"]
    with pytest.raises(wenet.WenetError, match=r"missing tensor.*encoders\.1\.conv_module\.depthwise_conv\.bias"):
        wenet.params_from_wenet(missing, cfg, shapes, np.float32)

    extra = {**state, "encoder.encoders.0.feed_forward.experts.3.w_1.weight": np.zeros((10, 12), np.float32)}
    with pytest.raises(wenet.WenetError, match=r"unexpected tensor.*experts\.3\.w_1\.weight"):
        wenet.params_from_wenet(extra, cfg, shapes, np.float32)

    alien = {**state, "encoder.encoders.0.conv_module.norm.running_mean": np.zeros(12, np.float32)}
    with pytest.raises(wenet.WenetError, match=r"running_mean.*no part of a U2\+\+"):
        wenet.params_from_wenet(alien, cfg, shapes, np.float32)

    misshapen = {**state, "ctc.ctc_lo.weight": np.zeros((VOCAB, 11), np.float32)}
    with pytest.raises(wenet.WenetError, match=r"'ctc\.ctc_lo\.weight' has shape \[13, 11\].*\[13, 12\]"):
        wenet.params_from_wenet(misshapen, cfg, shapes, np.float32)

    half_cmvn = {**state, "encoder.global_cmvn.mean": np.zeros(FEAT, np.float32)}
    with pytest.raises(wenet.WenetError, match=r"missing tensor 'encoder\.global_cmvn\.istd'"):
        wenet.params_from_wenet(half_cmvn, cfg, shapes, np.float32)

    wrong_model = dict(shapes)
    wrong_model[("ctc", "ctc_lo", "kernel")] = (12, 99)
    with pytest.raises(wenet.WenetError, match=r"ctc/ctc_lo/kernel: table gives \[12, 13\], model has \[12, 99\]"):
        wenet.params_from_wenet(state, cfg, wrong_model, np.float32)


# ----------------------------------------------------------------------------- YAML


def test_yaml_maps_to_u2pp_config_and_back():
    conf = train_yaml()
    cfg = wenet.config_from_wenet(copy.deepcopy(conf))
    enc, dec = cfg.encoder, cfg.decoder
    assert (enc.output_size, enc.attention_heads, enc.linear_units, enc.num_blocks, enc.cnn_module_kernel) == (12, 3, 10, 2, 5)
    assert enc.causal and enc.use_dynamic_chunk and enc.attention_dropout_rate == 0.1
    assert (enc.moe.num_experts, enc.moe.top_k, enc.moe.expert_ffn_dim, enc.moe.activation) == (3, 2, 10, "silu")
    assert (dec.num_blocks, dec.r_num_blocks, dec.moe.expert_ffn_dim, dec.moe.activation) == (2, 1, 14, "relu")
    assert (cfg.vocab_size, cfg.input_dim, cfg.ctc_weight, cfg.reverse_weight, cfg.lsm_weight) == (VOCAB, FEAT, 0.3, 0.3, 0.1)
    again = wenet.config_from_wenet(wenet.wenet_yaml(cfg, None))
    assert again == cfg
    # WeNet's init_model builds the same model from the exported YAML
    ref = init_asr_model(wenet.wenet_yaml(cfg, None))
    assert {k: tuple(v.shape) for k, v in ref.state_dict().items()} == wenet.wenet_shapes(cfg, with_cmvn=False)


@pytest.mark.parametrize("edit,culprit", [
    (lambda c: c.update(encoder="squeezeformer"), "encoder: 'squeezeformer'"),
    (lambda c: c.update(decoder="transformer"), "decoder: 'transformer'"),
    (lambda c: c["encoder_conf"].update(cnn_module_norm="batch_norm"), "encoder_conf.cnn_module_norm"),
    (lambda c: c["encoder_conf"].pop("cnn_module_norm"), "encoder_conf.cnn_module_norm"),  # WeNet's default
    (lambda c: c["encoder_conf"].update(pos_enc_layer_type="abs_pos"), "encoder_conf.pos_enc_layer_type"),
    (lambda c: c["encoder_conf"].update(use_sdpa=True), "encoder_conf.use_sdpa"),
    (lambda c: c["encoder_conf"].update(mlp_type="gated"), "encoder_conf.mlp_type"),
    (lambda c: c["encoder_conf"].update(brand_new_option=1), "encoder_conf.brand_new_option"),
    (lambda c: c["decoder_conf"].update(tie_word_embedding=True), "decoder_conf.tie_word_embedding"),
    (lambda c: c["decoder_conf"].update(r_num_blocks=0), "decoder_conf.r_num_blocks"),
    (lambda c: c["tokenizer_conf"]["special_tokens"].update({"<sos>": 2}), "special_tokens.<sos>"),
    (lambda c: c["ctc_conf"].update(ctc_blank_id=3), "ctc_conf.ctc_blank_id"),
    (lambda c: c["model_conf"].update(apply_non_blank_embedding=True), "model_conf.apply_non_blank_embedding"),
    (lambda c: c["encoder_conf"].update(attention_heads=5), "attention_heads"),
])
def test_unsupported_yaml_options_are_named(edit, culprit):
    conf = train_yaml()
    edit(conf)
    with pytest.raises(wenet.WenetError) as err:
        wenet.config_from_wenet(conf)
    assert culprit in str(err.value)


def test_cmvn_stats_round_trip(tmp_path):
    mean, istd = wenet.read_cmvn_json(write_cmvn(tmp_path / "global_cmvn"))
    again = tmp_path / "again"
    again.write_text(json.dumps(wenet.cmvn_stats(mean, istd)))
    mean2, istd2 = wenet.read_cmvn_json(again)
    np.testing.assert_array_equal(mean2, mean)
    np.testing.assert_allclose(istd2, istd, rtol=1e-7)
    # WeNet's loader (the reference's transcription of it) reads the same numbers
    ref = init_asr_model(train_yaml(cmvn_file=tmp_path / "global_cmvn"))
    np.testing.assert_array_equal(ref.state_dict()["encoder.global_cmvn.istd"].numpy(), istd)


def test_kaldi_text_cmvn_reads_as_the_json_stats(tmp_path):
    stats = json.loads(write_cmvn(tmp_path / "global_cmvn").read_text())
    kaldi = tmp_path / "global_cmvn.kaldi"
    kaldi.write_text(" [\n  " + " ".join(map(repr, stats["mean_stat"])) + f" {stats['frame_num']}\n  "
                     + " ".join(map(repr, stats["var_stat"])) + " 0 ]\n")
    for got, want in zip(wenet.read_cmvn_kaldi(kaldi), wenet.read_cmvn_json(tmp_path / "global_cmvn")):
        np.testing.assert_array_equal(got, want)
    binary = tmp_path / "binary"
    binary.write_bytes(b"\0BCM \x04\x02\xff")
    with pytest.raises(wenet.WenetError, match="binary Kaldi CMVN stats"):
        wenet.read_cmvn_kaldi(binary)
    broken = tmp_path / "broken"
    broken.write_text("[ 1 2 3 ]")
    with pytest.raises(wenet.WenetError, match="not Kaldi text CMVN stats"):
        wenet.read_cmvn_kaldi(broken)


@pytest.mark.parametrize("d", [12, 256])
def test_sinusoid_table_matches_wenets(d):
    """Close enough to tell WeNet's table from anything else (float32 sin of large arguments
    differs between libraries by ~5e-4)."""
    from wenet_ref.modules import PositionalEncoding

    np.testing.assert_allclose(wenet.sinusoid_table(d), PositionalEncoding(d, 0.0).pe.numpy(), atol=1e-3)


# ----------------------------------------------------------------------------- the commands


def convert(argv: list[str]) -> int:
    """Runs `most u2pp import-wenet|export-wenet ...` as the u2pp group registers them."""
    import argparse

    from most_jax.commands import u2pp_convert

    parser = argparse.ArgumentParser(prog="most u2pp")
    sub = parser.add_subparsers(required=True)
    u2pp_convert.register_import(sub)
    u2pp_convert.register_export(sub)
    args = parser.parse_args(argv)
    return args.handler(args)


@pytest.fixture(scope="module")
def wenet_dir(tmp_path_factory):
    """A WeNet experiment directory: final.pt (MoE, with CMVN) and train.yaml, plus the model."""
    import yaml

    root = tmp_path_factory.mktemp("wenet")
    conf = train_yaml(cmvn_file=write_cmvn(root / "global_cmvn"))
    ref = reference(conf, seed=3)
    torch.save(ref.state_dict(), root / "final.pt")
    (root / "train.yaml").write_text(yaml.safe_dump(conf))
    return root, ref


def test_import_then_export_is_byte_equal_and_wenet_loads_it(wenet_dir, tmp_path):
    import yaml

    root, ref = wenet_dir
    assert convert(["import-wenet", str(root / "final.pt"), str(root / "train.yaml"), str(tmp_path / "ckpt")]) == 0
    assert convert(["export-wenet", str(tmp_path / "ckpt"), str(tmp_path / "out")]) == 0
    original = torch.load(root / "final.pt", weights_only=True)
    exported = torch.load(tmp_path / "out" / "final.pt", weights_only=True)
    assert list(exported) == list(original)
    for key, value in original.items():
        assert exported[key].dtype == value.dtype and exported[key].shape == value.shape, key
        assert exported[key].numpy().tobytes() == value.numpy().tobytes(), key
    again = init_asr_model(yaml.safe_load((tmp_path / "out" / "train.yaml").read_text()))
    again.load_state_dict(exported, strict=True)


def test_import_without_cmvn_round_trips(tmp_path, monkeypatch):
    """Also with relative paths, as typed in a WeNet experiment directory."""
    import yaml

    conf = train_yaml(mlp_type="position_wise_feed_forward", input_layer="conv2d6", bias=False)
    ref = reference(conf, seed=4)
    torch.save(ref.state_dict(), tmp_path / "final.pt")
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(conf))
    monkeypatch.chdir(tmp_path)
    convert(["import-wenet", "final.pt", "train.yaml", "ckpt"])
    convert(["export-wenet", "ckpt", "out"])
    exported = torch.load(tmp_path / "out" / "final.pt", weights_only=True)
    assert not any(k.startswith("encoder.global_cmvn") for k in exported)
    assert not (tmp_path / "out" / "global_cmvn").exists()
    for key, value in ref.state_dict().items():
        assert exported[key].numpy().tobytes() == value.numpy().tobytes(), key
    init_asr_model(yaml.safe_load((tmp_path / "out" / "train.yaml").read_text())).load_state_dict(exported, strict=True)
    # the checkpoint serves the other commands: restored, it computes WeNet's CTC posteriors
    import jax.numpy as jnp

    from most_jax.checkpoint.params_io import restore_model

    _, model = restore_model(tmp_path / "ckpt")
    feats = torch.randn(1, 40, FEAT)
    out, _, _ = model.encode(jnp.asarray(feats.numpy()), jnp.asarray([40]))
    with torch.no_grad():
        ref_logp = ref.ctc.log_softmax(ref.encoder(feats, torch.tensor([40]), -1, -1)[0])
    assert np.abs(np.asarray(model.ctc_log_probs(out)) - ref_logp.numpy()).max() < 1e-4


def test_cmvn_from_the_yaml_file_when_the_state_dict_has_none(wenet_dir, tmp_path):
    from most_jax.checkpoint.params_io import load_checkpoint

    root, ref = wenet_dir
    state = {k: v for k, v in ref.state_dict().items() if not k.startswith("encoder.global_cmvn")}
    torch.save(state, tmp_path / "final.pt")
    convert(["import-wenet", str(tmp_path / "final.pt"), str(root / "train.yaml"), str(tmp_path / "ckpt")])
    _, params = load_checkpoint(tmp_path / "ckpt")
    np.testing.assert_array_equal(np.asarray(params["encoder"]["global_cmvn"]["istd"]),
                                  ref.state_dict()["encoder.global_cmvn.istd"].numpy())


def test_command_errors_are_one_line_and_name_the_culprit(wenet_dir, tmp_path):
    import yaml

    root, ref = wenet_dir
    state = dict(ref.state_dict())
    state["decoder.left_decoder.decoders.0.src_attn.linear_k.weight"] = torch.zeros(12, 7)
    torch.save(state, tmp_path / "bad.pt")
    cli_error(["u2pp", "import-wenet", str(tmp_path / "bad.pt"), str(root / "train.yaml"), str(tmp_path / "c1")],
              r"import-wenet: error: .*src_attn\.linear_k\.weight' has shape \[12, 7\]")
    conf = yaml.safe_load((root / "train.yaml").read_text())
    conf["encoder"] = "branchformer"
    (tmp_path / "branch.yaml").write_text(yaml.safe_dump(conf))
    cli_error(["u2pp", "import-wenet", str(root / "final.pt"), str(tmp_path / "branch.yaml"), str(tmp_path / "c2")],
              r"encoder: 'branchformer' is not supported")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    cli_error(["u2pp", "import-wenet", str(tmp_path / "junk.pt"), str(root / "train.yaml"), str(tmp_path / "c3")],
              r"junk\.pt: not a readable PyTorch state_dict")
    assert not any((tmp_path / c).exists() for c in ("c1", "c2", "c3"))


def model_with(params: dict, cfg):
    """U2pp(cfg) holding `params` (flat), built without random initialisation."""
    import jax.numpy as jnp
    from flax import nnx

    from most_jax.checkpoint.param_tree import unflatten
    from most_jax.models.u2pp.model import U2pp

    graphdef, state = nnx.split(nnx.eval_shape(lambda: U2pp(cfg, rngs=nnx.Rngs(0))))
    nnx.replace_by_pure_dict(state, unflatten({p: jnp.asarray(v) for p, v in params.items()}))
    return nnx.merge(graphdef, state)


def model_shapes(cfg) -> dict:
    from flax import nnx

    from most_jax.checkpoint.param_tree import flatten
    from most_jax.models.u2pp.model import U2pp

    model = nnx.eval_shape(lambda: U2pp(cfg, rngs=nnx.Rngs(0)))
    return {p: tuple(v.shape) for p, v in flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param)))}


@pytest.mark.parametrize("mlp_type,input_layer,bias", [("moe", "conv2d", True), ("moe", "conv2d8", False),
                                                       ("position_wise_feed_forward", "conv2d6", True)])
def test_table_gives_exactly_the_models_parameters(mlp_type, input_layer, bias):
    cfg = wenet.config_from_wenet(train_yaml(mlp_type, input_layer, bias))
    assert wenet.param_shapes(cfg) == model_shapes(cfg)


@pytest.mark.parametrize("mlp_type,chunk,left", [("moe", -1, -1), ("moe", 4, 1),
                                                 ("position_wise_feed_forward", -1, -1),
                                                 ("position_wise_feed_forward", 1, 2)])
def test_imported_model_computes_what_wenet_computes(tmp_path, mlp_type, chunk, left):
    """Encoder output and CTC log-probs of the imported weights equal WeNet's within 1e-4
    (CMVN, odd widths, padded batch, full and chunked attention)."""
    import jax.numpy as jnp

    conf = train_yaml(mlp_type, cmvn_file=write_cmvn(tmp_path / "global_cmvn"))
    ref = reference(conf, seed=6)
    cfg = wenet.config_from_wenet(copy.deepcopy(conf))
    model = model_with(wenet.params_from_wenet(state_arrays(ref), cfg, model_shapes(cfg), np.float32), cfg)
    torch.manual_seed(5)
    feats = torch.randn(2, 61, FEAT) * 3.0 + 2.0
    lens = torch.tensor([61, 44])
    with torch.no_grad():
        ref_out, ref_mask = ref.encoder(feats, lens, chunk, left)
        ref_logp = ref.ctc.log_softmax(ref_out)
    out, valid, _ = model.encode(jnp.asarray(feats.numpy()), jnp.asarray(lens.numpy()), chunk_size=chunk,
                                 num_left_chunks=left)
    valid = np.asarray(valid)
    np.testing.assert_array_equal(valid, ref_mask[:, 0].numpy())
    assert np.abs(np.asarray(out)[valid] - ref_out.numpy()[valid]).max() < 1e-4
    assert np.abs(np.asarray(model.ctc_log_probs(out))[valid] - ref_logp.numpy()[valid]).max() < 1e-4


def test_bfloat16_import_exports_the_rounded_weights(tmp_path):
    import yaml

    conf = train_yaml(mlp_type="position_wise_feed_forward")
    ref = reference(conf, seed=7)
    torch.save(ref.state_dict(), tmp_path / "final.pt")
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(conf))
    convert(["import-wenet", str(tmp_path / "final.pt"), str(tmp_path / "train.yaml"), str(tmp_path / "ckpt"),
             "--dtype", "bfloat16"])
    convert(["export-wenet", str(tmp_path / "ckpt"), str(tmp_path / "out")])
    exported = torch.load(tmp_path / "out" / "final.pt", weights_only=True)
    for key, value in ref.state_dict().items():
        if key.endswith(".pe"):
            assert torch.equal(exported[key], value), key  # regenerated in float32 as WeNet does
        else:
            assert exported[key].dtype == torch.bfloat16 and torch.equal(exported[key], value.bfloat16()), key
    init_asr_model(yaml.safe_load((tmp_path / "out" / "train.yaml").read_text())).load_state_dict(exported, strict=True)


def test_export_refuses_what_is_not_a_new_u2pp_export(tmp_path):
    from most_jax.checkpoint.params_io import save_params
    from most_jax.config import load_config as load_yaml_config

    most_cfg = load_yaml_config("configs/most_tiny.yaml")
    from most_jax.checkpoint.param_tree import abstract_params, unflatten

    params = unflatten({p: np.zeros(s.shape, s.dtype) for p, s in abstract_params(most_cfg.model).items()})
    save_params(tmp_path / "most", most_cfg, params)
    cli_error(["u2pp", "export-wenet", str(tmp_path / "most"), str(tmp_path / "out")], r"a most checkpoint, not u2pp")
    (tmp_path / "there").mkdir()
    cli_error(["u2pp", "export-wenet", str(tmp_path / "most"), str(tmp_path / "there")], r"there: already exists")


def test_torch_missing_is_said(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(wenet.WenetError, match=r"import-wenet reads and writes PyTorch \.pt files and needs torch"):
        wenet.read_pt(tmp_path / "final.pt")
