"""`most u2pp encode / decode / transcribe` on a tiny random U2++ checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from flax import nnx

from cli_check import cli_error
from data_corpus import make_tokenizer
from most_jax import config as config_lib
from most_jax.checkpoint.params_io import save_params
from most_jax.cli import main
from most_jax.data.tokenizers import load_tokenizer
from most_jax.models.most import MoST
from most_jax.models.u2pp import decode
from most_jax.models.u2pp.model import U2pp
from most_jax.speech.audio import load_audio
from most_jax.speech.features import fbank
from test_u2pp_decode import model_cfg

VOCAB = 322  # a 320-piece sentencepiece tokenizer + the CTC blank + sos/eos


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = config_lib.Config(model=model_cfg(bins=80, vocab=VOCAB))
    model = U2pp(cfg.model, rngs=nnx.Rngs(0))
    path = tmp_path_factory.mktemp("u2pp") / "ck"
    save_params(path, cfg, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    return path, model


@pytest.fixture(scope="module")
def feats_npz(tmp_path_factory):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(2, 30, 80)).astype(np.float32)
    lengths = np.array([30, 17], np.int32)
    path = tmp_path_factory.mktemp("in") / "feats.npz"
    np.savez(path, feats=feats, feats_lengths=lengths)
    return path, feats, lengths


def test_encode_writes_encoder_output_and_ctc_log_probs(ckpt, feats_npz, tmp_path):
    path, model = ckpt
    inp, feats, lengths = feats_npz
    out = tmp_path / "out.npz"
    assert main(["u2pp", "encode", str(path), "--input", str(inp), "--output", str(out), "--chunk", "2"]) == 0
    with np.load(out) as got:
        enc, enc_lengths, lp = got["encoder_out"], got["encoder_lengths"], got["ctc_log_probs"]
    want_enc, want_lengths, want_lp = decode.encode(model, feats, lengths, 2)
    np.testing.assert_array_equal(enc_lengths, want_lengths)
    assert enc.shape == want_enc.shape and lp.shape == enc.shape[:2] + (VOCAB,)
    np.testing.assert_allclose(lp, want_lp, atol=1e-5)


@pytest.mark.parametrize("mode", decode.MODES)
def test_decode_writes_each_modes_tokens_and_scores(ckpt, feats_npz, tmp_path, mode):
    path, model = ckpt
    inp, feats, lengths = feats_npz
    out = tmp_path / "out.json"
    assert main(["u2pp", "decode", str(path), "--input", str(inp), "--output", str(out), "--mode", mode,
                 "--beam", "3", "--reverse-weight", "0.3"]) == 0
    got = json.loads(out.read_text())
    want = decode.decode(model, feats, lengths, decode.DecodeOptions(mode=mode, beam=3, reverse_weight=0.3))
    assert got["mode"] == mode and got["options"]["beam"] == 3
    assert [u["tokens"] for u in got["utterances"]] == [list(h.tokens) for h in want]
    np.testing.assert_allclose([u["score"] for u in got["utterances"]], [h.score for h in want], atol=1e-5)


def test_transcribe_prints_one_line_per_file(ckpt, tmp_path, capsys):
    path, model = ckpt
    tok_dir = make_tokenizer(tmp_path / "tok", vocab_size=VOCAB - 2)
    rng = np.random.default_rng(1)
    wavs = []
    for i, seconds in enumerate((0.5, 0.3)):
        wav = tmp_path / f"a{i}.wav"
        sf.write(wav, (0.1 * rng.normal(size=int(16000 * seconds))).astype(np.float32), 16000)
        wavs.append(str(wav))
    capsys.readouterr()
    assert main(["u2pp", "transcribe", str(path), *wavs, "--tokenizer", str(tok_dir), "--mode", "ctc_prefix_beam",
                 "--beam", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == wavs
    tok = load_tokenizer(tok_dir)
    feats = fbank(load_audio(wavs[0])[0]).astype(np.float32)
    want = decode.decode(model, feats[None], np.array([len(feats)], np.int32),
                         decode.DecodeOptions(mode="ctc_prefix_beam", beam=2))[0]
    assert lines[0].split("\t", 1)[1] == tok.decode([t - 1 for t in want.tokens])
    # Streaming (--chunk) equals the chunk-masked decode of the same file.
    assert main(["u2pp", "transcribe", str(path), wavs[0], "--tokenizer", str(tok_dir), "--mode",
                 "attention_rescoring", "--beam", "2", "--chunk", "2"]) == 0
    streamed = capsys.readouterr().out.splitlines()[0].split("\t", 1)[1]
    chunked = decode.decode(model, feats[None], np.array([len(feats)], np.int32),
                            decode.DecodeOptions(beam=2, chunk=2))[0]
    assert streamed == tok.decode([t - 1 for t in chunked.tokens])


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_bad_input_is_named(ckpt, tmp_path):
    path, _ = ckpt
    out = str(tmp_path / "o.json")
    feats = np.zeros((2, 30, 80), np.float32)
    cases = [
        (_npz(tmp_path / "a.npz", feats=feats), r"no 'feats_lengths' array"),
        (_npz(tmp_path / "b.npz", feats=feats[:, :, :40], feats_lengths=np.array([30, 3])),
         r"feats must be float \[B, T, 80\], got float32 \[2, 30, 40\]"),
        (_npz(tmp_path / "c.npz", feats=feats, feats_lengths=np.array([31, 3])),
         r"feats_lengths\[0\] = 31 is outside 1..T=30"),
        (_npz(tmp_path / "d.npz", feats=feats, feats_lengths=np.array([30, 3])),
         r"utterance 1 is too short for the encoder's subsampling"),
        (_npz(tmp_path / "e.npz", feats=feats, feats_lengths=np.array([30])), r"feats_lengths must be int \[B=2\]"),
        (str(tmp_path / "missing.npz"), r"missing.npz: no such input file"),
    ]
    for inp, message in cases:
        cli_error(["u2pp", "decode", str(path), "--input", inp, "--output", out, "--mode", "ctc_greedy"], message)
    good = _npz(tmp_path / "g.npz", feats=feats, feats_lengths=np.array([30, 20]))
    cli_error(["u2pp", "decode", str(path), "--input", good, "--output", out, "--beam", "0"],
              r"beam must be >= 1, got 0")
    cli_error(["u2pp", "decode", str(path), "--input", good, "--output", out, "--chunk", "0"],
              r"chunk must be -1 \(full context\) or a positive")
    cli_error(["u2pp", "decode", str(path), "--input", good, "--output", str(tmp_path / "o.npz")],
              r"o.npz: the output file name must end in .json")


def test_a_most_checkpoint_is_refused(tmp_path, feats_npz):
    cfg = config_lib.load_config("configs/most_tiny.yaml")
    params = nnx.to_pure_dict(nnx.state(MoST(cfg.model, rngs=nnx.Rngs(0)), nnx.Param))
    save_params(tmp_path / "most", cfg, params)
    cli_error(["u2pp", "encode", str(tmp_path / "most"), "--input", str(feats_npz[0]), "--output",
               str(tmp_path / "o.npz")],
              r"most u2pp encode: error: .*most: a 'most' checkpoint, not a U2\+\+ one")
