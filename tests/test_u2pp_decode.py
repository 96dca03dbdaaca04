"""U2++ decoding: CTC search against exhaustive path sums, and every decoding mode against WeNet."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import types

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from most_jax.checkpoint import wenet
from most_jax.models.u2pp import ctc_search, decode
from most_jax.models.u2pp import loss as loss_lib
from most_jax.models.u2pp.model import U2pp
from test_u2pp_decoder import paired_decoders, tiny_cfg
from wenet_ref import asr_model as ref_asr


def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _random_log_probs(seed, b, t, v, sharp=2.0):
    rng = np.random.default_rng(seed)
    return _log_softmax(sharp * rng.normal(size=(b, t, v))).astype(np.float32)


def _exhaustive_marginals(log_probs_TV):
    """label sequence -> log sum over every frame path collapsing to it (V^T paths)."""
    totals: dict[tuple[int, ...], float] = {}
    t, v = log_probs_TV.shape
    lp = log_probs_TV.astype(np.float64)
    for path in itertools.product(range(v), repeat=t):
        label = ctc_search.collapse(path)
        score = float(sum(lp[i, u] for i, u in enumerate(path)))
        totals[label] = ctc_search.log_add(totals.get(label, -math.inf), score)
    return totals


def test_collapse_merges_repeats_then_drops_blanks():
    assert ctc_search.collapse([0, 1, 1, 0, 1, 2, 2, 0]) == (1, 1, 2)
    assert ctc_search.collapse([3, 3, 3]) == (3,)
    assert ctc_search.collapse([0, 0]) == ()


def test_greedy_is_the_collapsed_argmax_path_and_respects_lengths():
    lp = _random_log_probs(0, 3, 7, 5)
    lengths = np.array([7, 4, 0])
    hyps = ctc_search.ctc_greedy(lp, lengths)
    for b, n in enumerate(lengths):
        best = lp[b, :n].argmax(-1)
        assert hyps[b] == ctc_search.collapse(best)
        # The argmax path is the most likely path, and its label is at least as likely as that path.
        totals = _exhaustive_marginals(lp[b, :n]) if n <= 5 and n > 0 else None
        if totals is not None:
            assert totals[hyps[b]] >= float(lp[b, np.arange(n), best].astype(np.float64).sum()) - 1e-9
    assert hyps[2] == ()
    # Padding beyond the length never reaches the result.
    padded = lp.copy()
    padded[1, 4:] = _random_log_probs(9, 1, 3, 5)[0]
    assert ctc_search.ctc_greedy(padded, lengths) == hyps


@pytest.mark.parametrize("seed,t,v", [(1, 4, 3), (2, 5, 3), (3, 3, 4)])
def test_prefix_beam_wide_enough_gives_exact_marginals(seed, t, v):
    lp = _random_log_probs(seed, 1, t, v, sharp=1.0)
    totals = _exhaustive_marginals(lp[0])
    # A beam that holds every prefix and every label: nothing is pruned.
    nbest = ctc_search.ctc_prefix_beam(lp, np.array([t]), beam_size=len(totals) + v)[0]
    # As in WeNet, a prefix that no path of this length reaches can stay in the beam at -inf.
    reached = {h: s for h, s in zip(nbest.hyps, nbest.scores) if s > -math.inf}
    assert set(reached) == set(totals)
    for hyp, score in reached.items():
        assert score == pytest.approx(totals[hyp], abs=1e-9)
    assert list(nbest.scores) == sorted(nbest.scores, reverse=True)
    # Probabilities of all labels sum to one.
    assert ctc_search.log_add(*nbest.scores) == pytest.approx(0.0, abs=1e-5)  # float32 inputs


def test_prefix_beam_narrow_beam_is_a_best_first_subset():
    lp = _random_log_probs(4, 2, 6, 4)
    lengths = np.array([6, 3])
    results = ctc_search.ctc_prefix_beam(lp, lengths, beam_size=2)
    for b, res in enumerate(results):
        assert len(res.hyps) <= 2 and len(set(res.hyps)) == len(res.hyps)
        assert list(res.scores) == sorted(res.scores, reverse=True)
        totals = _exhaustive_marginals(lp[b, : lengths[b]])
        # Pruned scores only ever lose paths: each is at most the exact marginal.
        for hyp, score in zip(res.hyps, res.scores):
            assert score <= totals[hyp] + 1e-9


def test_ctc_search_rejects_bad_input():
    lp = _random_log_probs(5, 2, 4, 3)
    with pytest.raises(ValueError, match="lengths must lie in"):
        ctc_search.ctc_greedy(lp, np.array([5, 1]))
    with pytest.raises(ValueError, match=r"\[B, T, V\]"):
        ctc_search.ctc_greedy(lp[0], np.array([4]))
    with pytest.raises(ValueError, match="lengths must be"):
        ctc_search.ctc_prefix_beam(lp, np.array([4]), beam_size=2)
    with pytest.raises(ValueError, match="beam_size"):
        ctc_search.ctc_prefix_beam(lp, np.array([4, 4]), beam_size=0)


# ----------------------------------------------------------------------------- against WeNet's reference


def _encoder_batch(cfg, seed, lengths=(6, 4, 2)):
    rng = np.random.default_rng(seed)
    s = max(lengths)
    out = rng.normal(size=(len(lengths), s, cfg.encoder.output_size)).astype(np.float32)
    mask = np.arange(s)[None, :] < np.array(lengths)[:, None]
    return out, mask, np.array(lengths)


def test_ctc_modes_match_wenet():
    lp = _random_log_probs(7, 3, 9, 6)
    lengths = np.array([9, 5, 1])
    ref_greedy = ref_asr.ctc_greedy_search(torch.tensor(lp), torch.tensor(lengths))
    ours_greedy = decode.ctc_greedy(lp, lengths)
    assert [h.tokens for h in ours_greedy] == [tuple(r.tokens) for r in ref_greedy]
    for b, h in enumerate(ours_greedy):
        assert h.score == pytest.approx(float(lp[b, : lengths[b]].max(-1).sum()), abs=1e-5)
    ref_beam = ref_asr.ctc_prefix_beam_search(torch.tensor(lp), torch.tensor(lengths), 3)
    ours_beam = ctc_search.ctc_prefix_beam(lp, lengths, 3)
    for r, o in zip(ref_beam, ours_beam):
        assert [tuple(h) for h in r.nbest] == list(o.hyps)
        np.testing.assert_allclose(o.scores, r.nbest_scores, atol=1e-9)


@pytest.mark.parametrize("mlp_type,beam", [("position_wise_feed_forward", 3), ("moe", 2),
                                           ("position_wise_feed_forward", 1)])
def test_attention_beam_search_matches_wenet(mlp_type, beam):
    cfg = tiny_cfg(mlp_type=mlp_type, vocab=7)
    ref, ours = paired_decoders(cfg, seed=3)
    out, mask, _ = _encoder_batch(cfg, 4)
    sos = eos = cfg.vocab_size - 1
    stub = types.SimpleNamespace(decoder=ref, sos=sos, eos=eos)
    with torch.no_grad():
        want = ref_asr.attention_beam_search(stub, torch.tensor(out), torch.tensor(mask)[:, None, :], beam)
    got = decode.attention_beam_search(ours.left_decoder, jnp.asarray(out), jnp.asarray(mask), beam, sos, eos)
    assert [h.tokens for h in got] == [tuple(r.tokens) for r in want]
    assert all(np.isfinite(h.score) for h in got)


@pytest.mark.parametrize("mlp_type,ctc_weight,reverse_weight", [("position_wise_feed_forward", 0.5, 0.3),
                                                                ("position_wise_feed_forward", 0.0, 0.0),
                                                                ("moe", 0.3, 0.5)])
def test_attention_rescoring_matches_wenet(mlp_type, ctc_weight, reverse_weight):
    cfg = tiny_cfg(mlp_type=mlp_type, vocab=7)
    ref, ours = paired_decoders(cfg, seed=5)
    out, _, lengths = _encoder_batch(cfg, 6)
    lp = _random_log_probs(8, 3, out.shape[1], cfg.vocab_size, sharp=1.0)
    sos = eos = cfg.vocab_size - 1
    ref_nbest = ref_asr.ctc_prefix_beam_search(torch.tensor(lp), torch.tensor(lengths), 4)
    stub = types.SimpleNamespace(decoder=ref, sos=sos, eos=eos, ignore_id=-1)
    stub.forward_attention_decoder = types.MethodType(ref_asr.ASRModel.forward_attention_decoder, stub)
    with torch.no_grad():
        want = ref_asr.attention_rescoring(stub, ref_nbest, torch.tensor(out), torch.tensor(lengths), ctc_weight,
                                           reverse_weight)
    nbest = ctc_search.ctc_prefix_beam(lp, lengths, 4)
    got = decode.attention_rescoring(ours, nbest, jnp.asarray(out), lengths, ctc_weight, reverse_weight, sos, eos)
    assert [h.tokens for h in got] == [tuple(r.tokens) for r in want]
    np.testing.assert_allclose([h.score for h in got], [r.score for r in want], atol=1e-4)
    # The chosen hypothesis is the n-best's maximum of the combined score.
    att = decode.rescoring_scores(ours, nbest, jnp.asarray(out), lengths, reverse_weight, sos, eos)
    for res, scores, h in zip(nbest, att, got):
        total = np.asarray(scores) + ctc_weight * np.asarray(res.scores)
        assert h.tokens == res.hyps[int(np.argmax(total))]


def test_batched_decoding_equals_one_by_one():
    cfg = tiny_cfg(vocab=7)
    _, ours = paired_decoders(cfg, seed=9)
    out, mask, lengths = _encoder_batch(cfg, 10)
    lp = _random_log_probs(11, 3, out.shape[1], cfg.vocab_size, sharp=1.0)
    sos = eos = cfg.vocab_size - 1
    batched = decode.attention_beam_search(ours.left_decoder, jnp.asarray(out), jnp.asarray(mask), 3, sos, eos)
    nbest = ctc_search.ctc_prefix_beam(lp, lengths, 3)
    rescored = decode.attention_rescoring(ours, nbest, jnp.asarray(out), lengths, 0.5, 0.3, sos, eos)
    for b in range(3):
        alone = decode.attention_beam_search(ours.left_decoder, jnp.asarray(out[b:b + 1]), jnp.asarray(mask[b:b + 1]),
                                             3, sos, eos)[0]
        assert alone.tokens == batched[b].tokens and alone.score == pytest.approx(batched[b].score, abs=1e-5)
        one = decode.attention_rescoring(ours, nbest[b:b + 1], jnp.asarray(out[b:b + 1, : lengths[b]]),
                                         lengths[b:b + 1], 0.5, 0.3, sos, eos)[0]
        assert one.tokens == rescored[b].tokens and one.score == pytest.approx(rescored[b].score, abs=1e-5)


def test_prefix_beam_fed_in_pieces_equals_one_pass():
    lp = _random_log_probs(12, 1, 11, 5)[0]
    whole = ctc_search.PrefixBeam(3)
    whole.advance(lp)
    pieces = ctc_search.PrefixBeam(3)
    for piece in np.split(lp, [4, 5, 9]):
        pieces.advance(piece)
    assert pieces.result() == whole.result()


# ----------------------------------------------------------------------------- the whole model


def model_cfg(mlp_type="position_wise_feed_forward", bins=23, dynamic=True, **kw):
    cfg = tiny_cfg(mlp_type=mlp_type, **kw)
    enc = dataclasses.replace(cfg.encoder, num_blocks=2, cnn_module_kernel=3, use_dynamic_chunk=dynamic,
                              mlp_type=mlp_type,
                              moe=dataclasses.replace(cfg.decoder.moe, activation="silu"))
    cfg = dataclasses.replace(cfg, encoder=enc, input_dim=bins)
    cfg.validate()
    return cfg


def model_pair(cfg, seed=0):
    """WeNet's ASRModel (perturbed parameters) and our U2pp holding the same numbers, imported
    through the product's name table."""
    torch.manual_seed(seed)
    ref = ref_asr.init_asr_model(copy.deepcopy(wenet.wenet_yaml(cfg, None)))
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ref.eval()
    model = U2pp(cfg, rngs=nnx.Rngs(seed))
    params = nnx.state(model, nnx.Param)
    variables = {tuple(str(k) for k in path): var for path, var in nnx.to_flat_state(params)}
    state = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    flat = wenet.params_from_wenet(state, cfg, {p: tuple(v.shape) for p, v in variables.items()}, np.float32)
    for path, var in variables.items():
        var[...] = jnp.asarray(flat[path])
    nnx.update(model, params)
    return ref, model


def _feats(cfg, seed, lengths=(40, 29, 13)):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(len(lengths), max(lengths), cfg.input_dim)).astype(np.float32)
    return feats, np.array(lengths, np.int32)


@pytest.mark.parametrize("chunk", [-1, 2])
def test_encoder_and_ctc_log_probs_match_wenet(chunk):
    cfg = model_cfg()
    ref, model = model_pair(cfg, seed=1)
    feats, lengths = _feats(cfg, 2)
    with torch.no_grad():
        out, mask = ref._forward_encoder(torch.tensor(feats), torch.tensor(lengths), chunk)
        want = ref.ctc_logprobs(out).numpy()
    got_out, got_lengths, got = decode.encode(model, feats, lengths, chunk)
    np.testing.assert_array_equal(got_lengths, mask.squeeze(1).sum(1).numpy())
    for b, n in enumerate(got_lengths):
        np.testing.assert_allclose(got[b, :n], want[b, :n], atol=1e-4)


@pytest.mark.parametrize("ctc_weight,reverse_weight,normalize,mlp_type", [
    (0.3, 0.3, False, "position_wise_feed_forward"), (0.0, 0.5, True, "position_wise_feed_forward"),
    (1.0, 0.0, False, "position_wise_feed_forward"), (0.3, 0.3, False, "moe")])
def test_training_loss_matches_wenet(ctc_weight, reverse_weight, normalize, mlp_type):
    cfg = dataclasses.replace(model_cfg(mlp_type, dynamic=False), ctc_weight=ctc_weight, reverse_weight=reverse_weight,
                              length_normalized_loss=normalize)
    ref, model = model_pair(cfg, seed=3)
    feats, lengths = _feats(cfg, 4)
    target = np.array([[3, 4, 4, 2], [5, 1, 0, 0], [7, 0, 0, 0]])
    target_lengths = np.array([4, 2, 1])
    batch = {"feats": torch.tensor(feats), "feats_lengths": torch.tensor(lengths),
             "target": torch.tensor(np.where(target > 0, target, -1)), "target_lengths": torch.tensor(target_lengths)}
    with torch.no_grad():
        want = ref(batch)
    loss, metrics = loss_lib.u2pp_loss(model, {"feats": jnp.asarray(feats), "feats_lengths": jnp.asarray(lengths),
                                               "target": jnp.asarray(target),
                                               "target_lengths": jnp.asarray(target_lengths)}, None)
    assert float(loss) == pytest.approx(float(want["loss"]), abs=1e-4, rel=1e-5)
    for key in ("loss_ctc", "loss_att"):
        if want[key] is not None:
            assert float(metrics[key]) == pytest.approx(float(want[key]), abs=1e-4, rel=1e-5)
        else:
            assert key not in metrics


WENET_METHOD = {"ctc_greedy": "ctc_greedy_search", "ctc_prefix_beam": "ctc_prefix_beam_search",
                "attention": "attention", "attention_rescoring": "attention_rescoring"}


@pytest.mark.parametrize("chunk,mlp_type", [(-1, "position_wise_feed_forward"), (3, "position_wise_feed_forward"),
                                            (2, "moe")])
def test_every_mode_matches_wenet(chunk, mlp_type):
    cfg = model_cfg(mlp_type)
    ref, model = model_pair(cfg, seed=5)
    feats, lengths = _feats(cfg, 6)
    with torch.no_grad():
        want = ref.decode(list(WENET_METHOD.values()), torch.tensor(feats), torch.tensor(lengths), beam_size=3,
                          decoding_chunk_size=chunk, ctc_weight=0.5, reverse_weight=0.3)
    for mode, method in WENET_METHOD.items():
        got = decode.decode(model, feats, lengths, decode.DecodeOptions(mode=mode, beam=3, ctc_weight=0.5,
                                                                        reverse_weight=0.3, chunk=chunk))
        assert [h.tokens for h in got] == [tuple(r.tokens) for r in want[method]], mode
        if mode in ("ctc_prefix_beam", "attention_rescoring"):
            np.testing.assert_allclose([h.score for h in got], [r.score for r in want[method]], atol=1e-4)


@pytest.mark.parametrize("mode,chunk,left", [("attention_rescoring", 3, -1), ("ctc_prefix_beam", 2, 1),
                                             ("ctc_greedy", 1, 2), ("attention", 4, -1)])
def test_streaming_equals_chunk_masked_decoding(mode, chunk, left):
    cfg = model_cfg()
    _, model = model_pair(cfg, seed=7)
    feats, lengths = _feats(cfg, 8)
    opts = decode.DecodeOptions(mode=mode, beam=3, reverse_weight=0.3, chunk=chunk, left_chunks=left)
    for b in (0, 2):
        utt = feats[b, : lengths[b]]
        streamed = decode.transcribe_streaming(model, utt, opts)
        whole = decode.decode(model, utt[None], lengths[b:b + 1], opts)[0]
        assert streamed.tokens == whole.tokens
        assert streamed.score == pytest.approx(whole.score, abs=1e-4)
