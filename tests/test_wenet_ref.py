"""The PyTorch WeNet reference (tests/wenet_ref) checked against WeNet's own properties."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from wenet_ref.asr_model import (  # noqa: E402
    ctc_greedy_search,
    ctc_prefix_beam_search,
    init_asr_model,
    load_cmvn_json,
)
from wenet_ref.modules import add_optional_chunk_mask, subsequent_chunk_mask, subsequent_mask  # noqa: E402

VOCAB = 11
FEAT = 20


def tiny_yaml(mlp_type="moe", cmvn_file=None):
    """A U2++ train YAML in WeNet's layout, shrunk (causal conv, dynamic chunk, MoE FFNs)."""
    conf = {
        "input_dim": FEAT,
        "output_dim": VOCAB,
        "encoder": "conformer",
        "encoder_conf": {
            "output_size": 16,
            "attention_heads": 2,
            "linear_units": 24,
            "num_blocks": 2,
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "attention_dropout_rate": 0.1,
            "input_layer": "conv2d",
            "normalize_before": True,
            "cnn_module_kernel": 4,
            "use_cnn_module": True,
            "activation_type": "swish",
            "pos_enc_layer_type": "rel_pos",
            "selfattention_layer_type": "rel_selfattn",
            "causal": True,
            "use_dynamic_chunk": True,
            "cnn_module_norm": "layer_norm",
            "use_dynamic_left_chunk": False,
            "mlp_type": mlp_type,
            "n_expert": 3,
            "n_expert_activated": 2,
        },
        "decoder": "bitransformer",
        "decoder_conf": {
            "attention_heads": 2,
            "linear_units": 24,
            "num_blocks": 2,
            "r_num_blocks": 1,
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "self_attention_dropout_rate": 0.1,
            "src_attention_dropout_rate": 0.1,
            "mlp_type": mlp_type,
            "n_expert": 3,
            "n_expert_activated": 2,
        },
        "tokenizer_conf": {"special_tokens": {"<blank>": 0, "<unk>": 1, "<sos>": 2, "<eos>": 2}},
        "ctc": "ctc",
        "ctc_conf": {"ctc_blank_id": 0},
        "model": "asr_model",
        "model_conf": {"ctc_weight": 0.3, "lsm_weight": 0.1, "length_normalized_loss": False, "reverse_weight": 0.3},
    }
    if cmvn_file is not None:
        conf["cmvn"] = "global_cmvn"
        conf["cmvn_conf"] = {"cmvn_file": cmvn_file, "is_json_cmvn": True}
    return conf


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return init_asr_model(tiny_yaml()).eval()


def test_state_dict_keys_are_wenets(model):
    keys = set(model.state_dict())
    expected = [
        "encoder.embed.conv.0.weight",
        "encoder.embed.conv.2.bias",
        "encoder.embed.out.0.weight",
        "encoder.embed.pos_enc.pe",
        "encoder.after_norm.weight",
        "encoder.encoders.0.self_attn.linear_q.weight",
        "encoder.encoders.0.self_attn.linear_pos.weight",
        "encoder.encoders.0.self_attn.pos_bias_u",
        "encoder.encoders.1.self_attn.pos_bias_v",
        "encoder.encoders.0.feed_forward.gate.weight",
        "encoder.encoders.0.feed_forward.experts.2.w_1.bias",
        "encoder.encoders.1.feed_forward_macaron.experts.0.w_2.weight",
        "encoder.encoders.0.norm_ff_macaron.weight",
        "encoder.encoders.0.conv_module.pointwise_conv1.weight",
        "encoder.encoders.0.conv_module.depthwise_conv.weight",
        "encoder.encoders.0.conv_module.norm.bias",
        "encoder.encoders.0.norm_final.weight",
        "decoder.left_decoder.embed.0.weight",
        "decoder.left_decoder.embed.1.pe",
        "decoder.left_decoder.decoders.0.self_attn.linear_v.bias",
        "decoder.left_decoder.decoders.1.src_attn.linear_k.weight",
        "decoder.left_decoder.decoders.0.feed_forward.experts.1.w_1.weight",
        "decoder.left_decoder.after_norm.weight",
        "decoder.left_decoder.output_layer.bias",
        "decoder.right_decoder.decoders.0.norm3.weight",
        "ctc.ctc_lo.weight",
    ]
    for key in expected:
        assert key in keys, key
    assert "encoder.encoders.0.self_attn.linear_pos.bias" not in keys
    assert "encoder.encoders.0.feed_forward.gate.bias" not in keys
    assert "decoder.right_decoder.decoders.1.norm1.weight" not in keys  # r_num_blocks = 1
    assert not any(k.startswith("encoder.global_cmvn") for k in keys)  # no cmvn in the YAML


def test_forward_loss_and_shapes(model):
    torch.manual_seed(1)
    feats = torch.randn(2, 41, FEAT)
    lens = torch.tensor([41, 30])
    target = torch.tensor([[3, 4, 5, 6], [7, 8, -1, -1]])
    out = model({"feats": feats, "feats_lengths": lens, "target": target, "target_lengths": torch.tensor([4, 2])})
    combined = 0.3 * out["loss_ctc"] + 0.7 * out["loss_att"]
    assert torch.isfinite(out["loss"]) and torch.allclose(out["loss"], combined)
    enc, mask = model.encoder(feats, lens, -1, -1)
    assert enc.shape == (2, ((41 - 1) // 2 - 1) // 2, 16)
    assert mask.squeeze(1).sum(1).tolist() == [9, ((30 - 1) // 2 - 1) // 2]


@pytest.mark.parametrize("chunk,left", [(4, -1), (2, 1), (3, 0)])
def test_chunk_by_chunk_equals_chunk_masked_forward(model, chunk, left):
    torch.manual_seed(2)
    feats = torch.randn(1, 4 * 13 + 3, FEAT)
    with torch.no_grad():
        full, _ = model.encoder(feats, torch.tensor([feats.size(1)]), chunk, left)
        streamed, _ = model.encoder.forward_chunk_by_chunk(feats, chunk, left)
    assert streamed.shape == full.shape
    assert (streamed - full).abs().max().item() < 1e-5


def test_chunk_mask_hides_the_future(model):
    """With chunk 4 the first chunk's output ignores input after its receptive field; full context
    does not."""
    torch.manual_seed(2)
    feats = torch.randn(1, 55, FEAT)
    later = feats.clone()
    later[:, 30:] += 1.0  # first 4 output frames read input frames 0..18 only
    lens = torch.tensor([55])
    with torch.no_grad():
        chunk_a, _ = model.encoder(feats, lens, 4, -1)
        chunk_b, _ = model.encoder(later, lens, 4, -1)
        full_a, _ = model.encoder(feats, lens, -1, -1)
        full_b, _ = model.encoder(later, lens, -1, -1)
    assert (chunk_a[:, :4] - chunk_b[:, :4]).abs().max().item() < 1e-6
    assert (chunk_a[:, 4:] - chunk_b[:, 4:]).abs().max().item() > 1e-3
    assert (full_a[:, :4] - full_b[:, :4]).abs().max().item() > 1e-3


def test_dynamic_chunk_rule():
    """WeNet's training draw: randint(1, T); above T//2 full context, else chunk % 25 + 1."""
    T = 60
    xs = torch.zeros(1, T, 4)
    pad = torch.ones(1, 1, T, dtype=torch.bool)
    seen = set()
    for seed in range(40):
        torch.manual_seed(seed)
        drawn = torch.randint(1, T, (1,)).item()
        expected_chunk = T if drawn > T // 2 else drawn % 25 + 1
        torch.manual_seed(seed)
        mask = add_optional_chunk_mask(xs, pad, True, False, 0, 0, -1)
        assert torch.equal(mask[0], subsequent_chunk_mask(T, expected_chunk))
        seen.add(expected_chunk == T)
    assert seen == {True, False}


def test_decoder_one_step_cache_equals_full_pass(model):
    torch.manual_seed(3)
    memory = torch.randn(2, 9, 16)
    memory_mask = torch.ones(2, 1, 9, dtype=torch.bool)
    tokens = torch.tensor([[2, 5, 7, 3], [2, 4, 4, 9]])
    dec = model.decoder.left_decoder
    with torch.no_grad():
        logits, _, _ = dec(memory, memory_mask, tokens, torch.tensor([4, 4]))
        cache = {"self_att_cache": {}, "cross_att_cache": {}}
        for i in range(1, 5):
            step = dec.forward_one_step(memory, memory_mask, tokens[:, :i], subsequent_mask(i).unsqueeze(0), cache)
            assert (step - torch.log_softmax(logits[:, i - 1], -1)).abs().max().item() < 1e-5


def test_ctc_prefix_beam_best_equals_greedy_when_peaked():
    torch.manual_seed(4)
    T, V = 12, 6
    path = torch.tensor([0, 3, 3, 0, 0, 5, 1, 1, 0, 3, 0, 0])
    logits = torch.randn(1, T, V) + 8.0 * torch.nn.functional.one_hot(path, V)
    probs = logits.log_softmax(-1)
    lens = torch.tensor([T])
    greedy = ctc_greedy_search(probs, lens)[0].tokens
    beam = ctc_prefix_beam_search(probs, lens, beam_size=4)[0]
    assert greedy == [3, 5, 1, 3]
    assert list(beam.tokens) == greedy
    assert len(beam.nbest) == 4 and beam.nbest_scores == sorted(beam.nbest_scores, reverse=True)


def test_all_decoding_methods_run(model):
    torch.manual_seed(5)
    feats = torch.randn(2, 47, FEAT)
    lens = torch.tensor([47, 35])
    with torch.no_grad():
        res = model.decode(
            ["attention", "ctc_greedy_search", "ctc_prefix_beam_search", "attention_rescoring"],
            feats,
            lens,
            beam_size=3,
            ctc_weight=0.5,
            reverse_weight=0.3,
        )
        streamed = model.decode(["ctc_greedy_search"], feats[:1], lens[:1], decoding_chunk_size=4, simulate_streaming=True)
        chunked = model.decode(["ctc_greedy_search"], feats[:1], lens[:1], decoding_chunk_size=4)
    for method, hyps in res.items():
        assert len(hyps) == 2, method
        for hyp in hyps:
            assert all(0 <= int(t) < VOCAB for t in hyp.tokens), method
    assert res["attention_rescoring"][0].tokens in res["ctc_prefix_beam_search"][0].nbest
    assert streamed["ctc_greedy_search"][0].tokens == chunked["ctc_greedy_search"][0].tokens


def test_cmvn_from_json_stats(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.normal(3.0, 2.0, size=(500, FEAT))
    stats = {"mean_stat": frames.sum(0).tolist(), "var_stat": (frames**2).sum(0).tolist(), "frame_num": 500}
    path = tmp_path / "global_cmvn"
    path.write_text(json.dumps(stats))
    mean, istd = load_cmvn_json(str(path))
    np.testing.assert_allclose(mean, frames.mean(0), rtol=1e-10)
    np.testing.assert_allclose(istd, 1.0 / frames.std(0), rtol=1e-8)
    m = init_asr_model(tiny_yaml(cmvn_file=str(path)))
    np.testing.assert_allclose(m.state_dict()["encoder.global_cmvn.istd"].numpy(), istd, rtol=1e-6)


def test_untranscribed_options_are_refused():
    conf = tiny_yaml()
    conf["encoder"] = "squeezeformer"
    with pytest.raises(ValueError, match="squeezeformer"):
        init_asr_model(conf)
    conf = tiny_yaml()
    conf["encoder_conf"]["use_sdpa"] = True
    with pytest.raises(ValueError, match="use_sdpa"):
        init_asr_model(conf)
    conf = tiny_yaml()
    conf["encoder_conf"]["cnn_module_norm"] = "batch_norm"
    with pytest.raises(ValueError, match="batch_norm"):
        init_asr_model(conf)
