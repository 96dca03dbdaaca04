"""U2++ decoding, WeNet's four modes: ctc_greedy, ctc_prefix_beam, attention, attention_rescoring.

The neural parts run batched in JAX (encoder, CTC head, one jitted decoder step for the beam
search, one teacher-forced L2R + R2L pass over every utterance's n-best for rescoring); the
data-dependent bookkeeping (prefix beam, n-best selection) runs on the host in numpy.
Ids: 0 is the CTC blank, vocab_size - 1 is sos = eos (WeNet's convention).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from most_jax.models.u2pp import ctc_search, streaming
from most_jax.models.u2pp.decoder import BiTransformerDecoder, TransformerDecoder
from most_jax.models.u2pp.loss import add_sos_eos, reverse_targets

MODES = ("ctc_greedy", "ctc_prefix_beam", "attention", "attention_rescoring")
TOKEN_QUANTUM = 8  # rescoring pads hypotheses to a multiple of this many tokens


@dataclasses.dataclass(frozen=True)
class Hypothesis:
    """One utterance's result: token ids (no blank, sos or eos) and the mode's score
    (ctc_greedy: the best path's log-probability; ctc_prefix_beam: log P(prefix); attention: the
    beam's summed log-probability / length ** length_penalty; attention_rescoring: the combined score)."""

    tokens: tuple[int, ...]
    score: float


def ctc_greedy(log_probs_BTV: np.ndarray, lengths_B: np.ndarray) -> list[Hypothesis]:
    log_probs_BTV = np.asarray(log_probs_BTV)
    hyps = ctc_search.ctc_greedy(log_probs_BTV, lengths_B)
    best_BT = log_probs_BTV.max(axis=-1).astype(np.float64)
    return [Hypothesis(h, float(best_BT[b, : int(lengths_B[b])].sum())) for b, h in enumerate(hyps)]


def attention_beam_search(decoder: TransformerDecoder, encoder_out_BSD: jax.Array, encoder_mask_BS: jax.Array,
                          beam_size: int, sos: int, eos: int, length_penalty: float = 0.0) -> list[Hypothesis]:
    """WeNet's attention_beam_search: autoregressive L2R beam search of up to S steps (S = the padded
    encoder length), a finished beam keeping one zero-cost eos branch; the best of the K final beams
    by score / (tokens other than sos/eos) ** length_penalty."""
    b, s, _ = encoder_out_BSD.shape
    k, n = beam_size, b * beam_size
    memory_NSD = jnp.repeat(encoder_out_BSD, k, axis=0)
    mask_NS = jnp.repeat(encoder_mask_BS, k, axis=0)
    cache = decoder.init_cache(memory_NSD, max(s, 1))
    hyps_NT = np.full((n, 1), sos, np.int64)
    scores_N = np.tile(np.array([0.0] + [-np.inf] * (k - 1), np.float32), b)
    ended_N = np.zeros(n, bool)
    for i in range(1, s + 1):
        if ended_N.all():
            break
        cache, parent_N, token_N, scores = _beam_step(decoder, cache, jnp.asarray(hyps_NT[:, -1]), jnp.int32(i - 1),
                                                      mask_NS, jnp.asarray(scores_N), jnp.asarray(ended_N),
                                                      k=k, eos=eos)
        parent_N, token_N, scores_N = np.asarray(parent_N), np.asarray(token_N), np.asarray(scores)
        hyps_NT = np.concatenate([hyps_NT[parent_N], token_N[:, None]], axis=1)
        ended_N = hyps_NT[:, -1] == eos
    lengths_BK = (hyps_NT != eos).sum(axis=1).reshape(b, k).astype(np.float32)
    final_BK = scores_N.reshape(b, k) / lengths_BK ** np.float32(length_penalty)
    best_B = final_BK.argmax(axis=1)
    out = []
    for i in range(b):
        row = hyps_NT[i * k + best_B[i], 1:]
        out.append(Hypothesis(tuple(int(t) for t in row[row != eos]), float(final_BK[i, best_B[i]])))
    return out


@nnx.jit(static_argnames=("k", "eos"))
def _beam_step(decoder: TransformerDecoder, cache, last_N, pos, mask_NS, scores_N, ended_N, *, k: int, eos: int):
    """One step for B utterances x k beams (N = B*k): (cache of the survivors, parent row [N], new
    token [N], scores [N]); WeNet's two prunings (k per beam, then k of the k*k per utterance)."""
    logp_NV, cache = decoder.step(cache, last_N, pos, mask_NS)
    n = last_N.shape[0]
    top_logp_NK, top_tok_NK = jax.lax.top_k(logp_NV, k)
    # A finished beam keeps exactly one branch, eos at no cost (WeNet's mask_finished_*).
    first_1K = (jnp.arange(k) == 0)[None, :]
    top_logp_NK = jnp.where(ended_N[:, None], jnp.where(first_1K, 0.0, -jnp.inf), top_logp_NK)
    top_tok_NK = jnp.where(ended_N[:, None], eos, top_tok_NK)
    cand_BKK = (scores_N[:, None] + top_logp_NK).reshape(n // k, k * k)  # [B, K*K]: every beam's k extensions
    scores_BK, offset_BK = jax.lax.top_k(cand_BKK, k)
    parent_N = ((jnp.arange(n // k) * k)[:, None] + offset_BK // k).reshape(n)
    token_N = jnp.take_along_axis(top_tok_NK.reshape(n // k, k * k), offset_BK, axis=1).reshape(n)
    cache = cache._replace(self_k=cache.self_k[:, parent_N], self_v=cache.self_v[:, parent_N])
    return cache, parent_N, token_N, scores_BK.reshape(n)


def rescoring_scores(decoder: BiTransformerDecoder, nbest: list[ctc_search.NBest], encoder_out_BSD: jax.Array,
                     encoder_lens_B: np.ndarray, reverse_weight: float, sos: int, eos: int) -> list[np.ndarray]:
    """Per utterance, the attention score of each n-best hypothesis (float32):
    (1 - rw) x L2R + rw x R2L (rw = 0: L2R alone), each the summed log-probability of the tokens and
    the closing eos, from one batched teacher-forced pass over all utterances' hypotheses
    (N rows: every utterance's hypotheses, flattened)."""
    rows = [(b, hyp) for b, res in enumerate(nbest) for hyp in res.hyps]
    if not rows:
        return [np.zeros(0, np.float32) for _ in nbest]
    n = len(rows)
    # Padded to a power of two of rows and a multiple of TOKEN_QUANTUM tokens, so the decoder pass
    # compiles for a few shapes instead of once per batch; padding rows (empty, owner 0) are dropped.
    rows_padded = 1 << (n - 1).bit_length()
    lmax = -(-max(1, max(len(h) for _, h in rows)) // TOKEN_QUANTUM) * TOKEN_QUANTUM
    ys_NT = np.zeros((rows_padded, lmax), np.int32)
    lens_N = np.zeros(rows_padded, np.int32)
    owner_N = np.zeros(rows_padded, np.int64)
    for i, (b, hyp) in enumerate(rows):
        ys_NT[i, : len(hyp)] = hyp
        lens_N[i], owner_N[i] = len(hyp), b
    s = encoder_out_BSD.shape[1]
    memory_NSD = jnp.asarray(encoder_out_BSD)[owner_N]
    mask_NS = jnp.asarray(np.arange(s)[None, :] < np.asarray(encoder_lens_B)[owner_N][:, None])
    ys, lens = jnp.asarray(ys_NT), jnp.asarray(lens_N)
    ys_in, _, _ = add_sos_eos(ys, lens, sos, eos)
    r_ys_in = add_sos_eos(reverse_targets(ys, lens), lens, sos, eos)[0] if reverse_weight > 0 else None
    left_NTV, right_NTV, _ = _rescoring_forward(decoder, memory_NSD, mask_NS, ys_in, lens + 1, r_ys_in)
    score_N = _token_scores(np.asarray(jax.nn.log_softmax(left_NTV[:n], axis=-1)), ys_NT, lens_N[:n], eos,
                            reverse=False)
    if reverse_weight > 0:
        r_score_N = _token_scores(np.asarray(jax.nn.log_softmax(right_NTV[:n], axis=-1)), ys_NT, lens_N[:n], eos,
                                  reverse=True)
        score_N = score_N * np.float32(1 - reverse_weight) + r_score_N * np.float32(reverse_weight)
    return [score_N[owner_N[:n] == b] for b in range(len(nbest))]


@nnx.jit
def _rescoring_forward(decoder, memory, mask, ys_in, ys_in_lens, r_ys_in):
    return decoder(memory, mask, ys_in, ys_in_lens, r_ys_in)


def _token_scores(logp_NTV: np.ndarray, ys_NT: np.ndarray, lens_N: np.ndarray, eos: int, reverse: bool) -> np.ndarray:
    """sum_j logp[r, j, y_j] + logp[r, n, eos]; R2L reads token j at position n - 1 - j."""
    out = np.zeros(len(lens_N), np.float32)
    for i, n in enumerate(lens_N):
        j = np.arange(n)
        pos = n - 1 - j if reverse else j
        out[i] = np.float32(logp_NTV[i, pos, ys_NT[i, :n]].sum(dtype=np.float32) + logp_NTV[i, n, eos])
    return out


def attention_rescoring(decoder: BiTransformerDecoder, nbest: list[ctc_search.NBest], encoder_out_BSD: jax.Array,
                        encoder_lens_B: np.ndarray, ctc_weight: float, reverse_weight: float, sos: int,
                        eos: int) -> list[Hypothesis]:
    """WeNet's attention_rescoring: the n-best hypothesis maximising attention score + ctc_weight x
    its prefix-beam score (the first of equals; no hypothesis at all gives the empty one at -inf)."""
    att = rescoring_scores(decoder, nbest, encoder_out_BSD, encoder_lens_B, reverse_weight, sos, eos)
    out = []
    for res, att_scores in zip(nbest, att):
        best, best_score = 0, -np.inf
        for i, (a, c) in enumerate(zip(att_scores, res.scores)):
            total = float(a + np.float32(c * ctc_weight))
            if total > best_score:
                best, best_score = i, total
        out.append(Hypothesis(res.hyps[best] if res.hyps else (), best_score))
    return out


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
    """WeNet's decoding knobs: beam (CTC prefix beam and attention beam), ctc_weight and
    reverse_weight (rescoring), chunk (-1 full context, N > 0 chunk-masked attention as in
    streaming), left_chunks (-1 all), length_penalty (attention beam)."""

    mode: str = "attention_rescoring"
    beam: int = 10
    ctc_weight: float = 0.5
    reverse_weight: float = 0.0
    chunk: int = -1
    left_chunks: int = -1
    length_penalty: float = 0.0

    def validate(self, model) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.beam < 1:
            raise ValueError(f"beam must be >= 1, got {self.beam}")
        if self.chunk == 0 or self.chunk < -1:
            raise ValueError(f"chunk must be -1 (full context) or a positive number of frames, got {self.chunk}")
        if not 0 <= self.reverse_weight <= 1:
            raise ValueError(f"reverse_weight must be in [0, 1], got {self.reverse_weight}")
        if self.reverse_weight > 0 and model.decoder.right_decoder is None:
            raise ValueError("reverse_weight > 0 needs a right-to-left decoder; this model has decoder.r_num_blocks 0")


@nnx.jit(static_argnames=("chunk", "left_chunks"))
def _encode(model, feats_BUI, feats_lengths_B, chunk: int, left_chunks: int):
    encoder_out_BTD, mask_BT, _ = model.encode(feats_BUI, feats_lengths_B, chunk_size=chunk,
                                               num_left_chunks=left_chunks)
    return encoder_out_BTD, mask_BT, model.ctc_log_probs(encoder_out_BTD)


def encode(model, feats_BUI: np.ndarray, feats_lengths_B: np.ndarray, chunk: int = -1, left_chunks: int = -1):
    """(encoder_out [B, T, D], encoder_lengths [B], ctc_log_probs [B, T, V]) as numpy."""
    out, mask, log_probs = _encode(model, jnp.asarray(feats_BUI), jnp.asarray(feats_lengths_B), chunk, left_chunks)
    return np.asarray(out), np.asarray(mask).sum(axis=1), np.asarray(log_probs)


def finish(model, opts: DecodeOptions, encoder_out_BTD: np.ndarray, encoder_lengths_B: np.ndarray,
           ctc_log_probs_BTV: np.ndarray, nbest: list[ctc_search.NBest] | None = None) -> list[Hypothesis]:
    """The mode's search over encoder outputs; `nbest` (prefix beam results already computed, e.g.
    while streaming) spares recomputing them."""
    if opts.mode == "ctc_greedy":
        return ctc_greedy(ctc_log_probs_BTV, encoder_lengths_B)
    if opts.mode == "attention":
        mask_BT = np.arange(encoder_out_BTD.shape[1])[None, :] < encoder_lengths_B[:, None]
        return attention_beam_search(model.decoder.left_decoder, jnp.asarray(encoder_out_BTD), jnp.asarray(mask_BT),
                                     opts.beam, model.sos, model.eos, opts.length_penalty)
    if nbest is None:
        nbest = ctc_search.ctc_prefix_beam(ctc_log_probs_BTV, encoder_lengths_B, opts.beam)
    if opts.mode == "ctc_prefix_beam":
        return [Hypothesis(r.hyps[0], r.scores[0]) for r in nbest]
    return attention_rescoring(model.decoder, nbest, jnp.asarray(encoder_out_BTD), encoder_lengths_B, opts.ctc_weight,
                               opts.reverse_weight, model.sos, model.eos)


def decode(model, feats_BUI: np.ndarray, feats_lengths_B: np.ndarray, opts: DecodeOptions) -> list[Hypothesis]:
    """WeNet's ASRModel.decode for one mode: encoder (full or chunk-masked), CTC, the mode's search."""
    opts.validate(model)
    out, lengths, log_probs = encode(model, feats_BUI, feats_lengths_B, opts.chunk, opts.left_chunks)
    return finish(model, opts, out, lengths, log_probs)


@nnx.jit(static_argnames=("required_cache_size",))
def _stream_chunk(model, xs_BUI, offset, required_cache_size: int, att_cache, cnn_cache):
    y_BTD, att_cache, cnn_cache = streaming.forward_chunk(model.encoder, xs_BUI, offset, required_cache_size,
                                                          att_cache, cnn_cache)
    return y_BTD, model.ctc_log_probs(y_BTD), att_cache, cnn_cache


def transcribe_streaming(model, feats_UI: np.ndarray, opts: DecodeOptions) -> Hypothesis:
    """One utterance decoded as WeNet's runtime streams it: the encoder chunk by chunk with its
    caches (opts.chunk frames after subsampling, opts.left_chunks of history), the CTC prefix beam
    advanced after every chunk, and the mode finished on the whole encoder output at the end.
    Equals decode(..., chunk=opts.chunk) on the same utterance (the chunk-masked full forward)."""
    opts.validate(model)
    encoder, enc_cfg = model.encoder, model.cfg.encoder
    if opts.chunk <= 0:
        raise ValueError(f"streaming needs a positive chunk, got {opts.chunk}")
    if not (enc_cfg.use_dynamic_chunk or enc_cfg.static_chunk_size > 0):
        raise ValueError("streaming needs a model trained with chunks (encoder.use_dynamic_chunk or static_chunk_size)")
    rate, context = encoder.embed.rate, encoder.embed.right_context + 1  # + 1: the current frame
    stride, window = rate * opts.chunk, (opts.chunk - 1) * rate + context
    frames = feats_UI.shape[0]
    if frames < context:
        raise ValueError(f"{frames} input frames are fewer than one output frame needs ({context})")
    att_cache, cnn_cache = streaming.empty_caches(encoder, 1, jnp.float32)
    search = ctc_search.PrefixBeam(opts.beam) if opts.mode in ("ctc_prefix_beam", "attention_rescoring") else None
    outs, log_probs, offset = [], [], 0
    xs_1UI = jnp.asarray(feats_UI, jnp.float32)[None]
    for cur in range(0, frames - context + 1, stride):
        y_1TD, lp_1TV, att_cache, cnn_cache = _stream_chunk(model, xs_1UI[:, cur:min(cur + window, frames)],
                                                            jnp.asarray(offset, jnp.int32),
                                                            opts.chunk * opts.left_chunks, att_cache, cnn_cache)
        lp_TV = np.asarray(lp_1TV[0])
        if search is not None:
            search.advance(lp_TV)
        outs.append(np.asarray(y_1TD[0]))
        log_probs.append(lp_TV)
        offset += lp_TV.shape[0]
    encoder_out_1TD = np.concatenate(outs)[None]
    nbest = None if search is None else [search.result()]
    return finish(model, opts, encoder_out_1TD, np.array([offset]), np.concatenate(log_probs)[None], nbest)[0]
