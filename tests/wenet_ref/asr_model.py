"""WeNet's ASRModel with its losses and decoding (wenet/models/transformer/{asr_model,ctc,
label_smoothing_loss,search}.py, wenet/utils/{common,ctc_utils,cmvn,init_model}.py at the commit
in __init__.py), plus init_asr_model, WeNet's init_model restricted to conformer + (bi)transformer.

Decoding follows search.py line by line (no context graph, no whisper tokens, no blank penalty
beyond WeNet's, no timestamps confidence beyond what attention_rescoring computes).
"""

import json
import math
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from wenet_ref.decoder import BiTransformerDecoder, TransformerDecoder
from wenet_ref.encoder import ConformerEncoder
from wenet_ref.modules import GlobalCMVN, make_pad_mask, subsequent_mask

IGNORE_ID = -1


# ----------------------------------------------------------------------------- wenet.utils.common


def pad_list(xs: List[torch.Tensor], pad_value: int) -> torch.Tensor:
    max_len = max(len(item) for item in xs)
    pad_res = torch.zeros((len(xs), max_len) + tuple(xs[0].shape[1:]), dtype=xs[0].dtype, device=xs[0].device)
    pad_res.fill_(pad_value)
    for i, x in enumerate(xs):
        pad_res[i, : len(x)] = x
    return pad_res


def add_sos_eos(ys_pad: torch.Tensor, sos: int, eos: int, ignore_id: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """ys_in = [sos, y...] padded with eos; ys_out = [y..., eos] padded with ignore_id."""
    _sos = torch.tensor([sos], dtype=torch.long, device=ys_pad.device)
    _eos = torch.tensor([eos], dtype=torch.long, device=ys_pad.device)
    ys = [y[y != ignore_id] for y in ys_pad]
    ys_in = [torch.cat([_sos, y], dim=0) for y in ys]
    ys_out = [torch.cat([y, _eos], dim=0) for y in ys]
    return pad_list(ys_in, eos), pad_list(ys_out, ignore_id)


def reverse_pad_list(ys_pad: torch.Tensor, ys_lens: torch.Tensor, pad_value: float = -1.0) -> torch.Tensor:
    return pad_sequence([torch.flip(y.int()[:i], [0]) for y, i in zip(ys_pad, ys_lens)], True, pad_value)


def th_accuracy(pad_outputs: torch.Tensor, pad_targets: torch.Tensor, ignore_label: int) -> torch.Tensor:
    pad_pred = pad_outputs.view(pad_targets.size(0), pad_targets.size(1), pad_outputs.size(1)).argmax(2)
    mask = pad_targets != ignore_label
    numerator = torch.sum(pad_pred.masked_select(mask) == pad_targets.masked_select(mask))
    return (numerator / torch.sum(mask)).detach()


def log_add(*args) -> float:
    if all(a == -float("inf") for a in args):
        return -float("inf")
    a_max = max(args)
    return a_max + math.log(sum(math.exp(a - a_max) for a in args))


def remove_duplicates_and_blank(hyp: List[int], blank_id: int = 0) -> List[int]:
    new_hyp: List[int] = []
    cur = 0
    while cur < len(hyp):
        if hyp[cur] != blank_id:
            new_hyp.append(hyp[cur])
        prev = cur
        while cur < len(hyp) and hyp[cur] == hyp[prev]:
            cur += 1
    return new_hyp


def mask_finished_scores(score: torch.Tensor, flag: torch.Tensor) -> torch.Tensor:
    beam_size = score.size(-1)
    zero_mask = torch.zeros_like(flag, dtype=torch.bool)
    if beam_size > 1:
        unfinished = torch.cat((zero_mask, flag.repeat([1, beam_size - 1])), dim=1)
        finished = torch.cat((flag, zero_mask.repeat([1, beam_size - 1])), dim=1)
    else:
        unfinished = zero_mask
        finished = flag
    score.masked_fill_(unfinished, -float("inf"))
    score.masked_fill_(finished, 0)
    return score


def mask_finished_preds(pred: torch.Tensor, flag: torch.Tensor, eos: int) -> torch.Tensor:
    return pred.masked_fill_(flag.repeat([1, pred.size(-1)]), eos)


def load_cmvn_json(json_cmvn_file: str) -> Tuple[np.ndarray, np.ndarray]:
    """WeNet's _load_json_cmvn: mean and inverse std from mean_stat / var_stat / frame_num."""
    with open(json_cmvn_file) as f:
        stats = json.load(f)
    means = stats["mean_stat"]
    variance = stats["var_stat"]
    count = stats["frame_num"]
    for i in range(len(means)):
        means[i] /= count
        variance[i] = variance[i] / count - means[i] * means[i]
        if variance[i] < 1.0e-20:
            variance[i] = 1.0e-20
        variance[i] = 1.0 / math.sqrt(variance[i])
    cmvn = np.array([means, variance])
    return cmvn[0], cmvn[1]


# ----------------------------------------------------------------------------- losses


class CTC(torch.nn.Module):
    """ctc_lo Linear; loss summed over the batch and divided by the batch size."""

    def __init__(self, odim: int, encoder_output_size: int, dropout_rate: float = 0.0, reduce: bool = True, blank_id: int = 0):
        super().__init__()
        self.dropout_rate = dropout_rate
        self.ctc_lo = torch.nn.Linear(encoder_output_size, odim)
        self.ctc_loss = torch.nn.CTCLoss(blank=blank_id, reduction="sum" if reduce else "none", zero_infinity=True)

    def forward(self, hs_pad, hlens, ys_pad, ys_lens):
        ys_hat = self.ctc_lo(F.dropout(hs_pad, p=self.dropout_rate))
        ys_hat = ys_hat.transpose(0, 1).log_softmax(2)
        loss = self.ctc_loss(ys_hat, ys_pad, hlens, ys_lens)
        loss = loss / ys_hat.size(1)
        return loss, ys_hat.transpose(0, 1)

    def log_softmax(self, hs_pad: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.ctc_lo(hs_pad), dim=2)

    def argmax(self, hs_pad: torch.Tensor) -> torch.Tensor:
        return torch.argmax(self.ctc_lo(hs_pad), dim=2)


class LabelSmoothingLoss(torch.nn.Module):
    """KL(smoothed one-hot || softmax) summed, over the batch size (or token count)."""

    def __init__(self, size: int, padding_idx: int, smoothing: float, normalize_length: bool = False):
        super().__init__()
        self.criterion = torch.nn.KLDivLoss(reduction="none")
        self.padding_idx = padding_idx
        self.confidence = 1.0 - smoothing
        self.smoothing = smoothing
        self.size = size
        self.normalize_length = normalize_length

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        assert x.size(2) == self.size
        batch_size = x.size(0)
        x = x.view(-1, self.size)
        target = target.view(-1)
        true_dist = torch.zeros_like(x)
        true_dist.fill_(self.smoothing / (self.size - 1))
        ignore = target == self.padding_idx
        total = len(target) - ignore.sum().item()
        target = target.masked_fill(ignore, 0)
        true_dist.scatter_(1, target.unsqueeze(1), self.confidence)
        kl = self.criterion(torch.log_softmax(x, dim=1), true_dist)
        denom = total if self.normalize_length else batch_size
        return kl.masked_fill(ignore.unsqueeze(1), 0).sum() / denom


# ----------------------------------------------------------------------------- search


class DecodeResult:
    def __init__(
        self,
        tokens: List[int],
        score: float = 0.0,
        confidence: float = 0.0,
        tokens_confidence: List[float] = None,
        times: List[int] = None,
        nbest: List[List[int]] = None,
        nbest_scores: List[float] = None,
        nbest_times: List[List[int]] = None,
    ):
        self.tokens = tokens
        self.score = score
        self.confidence = confidence
        self.tokens_confidence = tokens_confidence
        self.times = times
        self.nbest = nbest
        self.nbest_scores = nbest_scores
        self.nbest_times = nbest_times


class PrefixScore:
    """Blank-ending (s) and non-blank-ending (ns) log scores of a prefix, plus Viterbi times."""

    def __init__(self, s: float = float("-inf"), ns: float = float("-inf"), v_s: float = float("-inf"), v_ns: float = float("-inf")):
        self.s = s
        self.ns = ns
        self.v_s = v_s
        self.v_ns = v_ns
        self.cur_token_prob = float("-inf")
        self.times_s = []
        self.times_ns = []

    def score(self):
        return log_add(self.s, self.ns)

    def viterbi_score(self):
        return self.v_s if self.v_s > self.v_ns else self.v_ns

    def times(self):
        return self.times_s if self.v_s > self.v_ns else self.times_ns

    def total_score(self):
        return self.score()


def ctc_greedy_search(ctc_probs: torch.Tensor, ctc_lens: torch.Tensor, blank_id: int = 0) -> List[DecodeResult]:
    batch_size = ctc_probs.shape[0]
    maxlen = ctc_probs.size(1)
    _, topk_index = ctc_probs.topk(1, dim=2)
    topk_index = topk_index.view(batch_size, maxlen)
    topk_index = topk_index.masked_fill_(make_pad_mask(ctc_lens, maxlen), blank_id)
    return [DecodeResult(remove_duplicates_and_blank(hyp.tolist(), blank_id)) for hyp in topk_index]


def ctc_prefix_beam_search(ctc_probs: torch.Tensor, ctc_lens: torch.Tensor, beam_size: int, blank_id: int = 0) -> List[DecodeResult]:
    results = []
    for i in range(ctc_probs.shape[0]):
        ctc_prob = ctc_probs[i]
        cur_hyps = [(tuple(), PrefixScore(s=0.0, ns=-float("inf"), v_s=0.0, v_ns=0.0))]
        for t in range(0, ctc_lens[i]):
            logp = ctc_prob[t]
            next_hyps = defaultdict(lambda: PrefixScore())
            _, top_k_index = logp.topk(beam_size)
            for u in top_k_index:
                u = u.item()
                prob = logp[u].item()
                for prefix, prefix_score in cur_hyps:
                    last = prefix[-1] if len(prefix) > 0 else None
                    if u == blank_id:
                        next_score = next_hyps[prefix]
                        next_score.s = log_add(next_score.s, prefix_score.score() + prob)
                        next_score.v_s = prefix_score.viterbi_score() + prob
                        next_score.times_s = prefix_score.times().copy()
                    elif u == last:
                        # *uu -> *u
                        next_score1 = next_hyps[prefix]
                        next_score1.ns = log_add(next_score1.ns, prefix_score.ns + prob)
                        if next_score1.v_ns < prefix_score.v_ns + prob:
                            next_score1.v_ns = prefix_score.v_ns + prob
                            if next_score1.cur_token_prob < prob:
                                next_score1.cur_token_prob = prob
                                next_score1.times_ns = prefix_score.times_ns.copy()
                                next_score1.times_ns[-1] = t
                        # *u-u -> *uu
                        n_prefix = prefix + (u,)
                        next_score2 = next_hyps[n_prefix]
                        next_score2.ns = log_add(next_score2.ns, prefix_score.s + prob)
                        if next_score2.v_ns < prefix_score.v_s + prob:
                            next_score2.v_ns = prefix_score.v_s + prob
                            next_score2.cur_token_prob = prob
                            next_score2.times_ns = prefix_score.times_s.copy()
                            next_score2.times_ns.append(t)
                    else:
                        n_prefix = prefix + (u,)
                        next_score = next_hyps[n_prefix]
                        next_score.ns = log_add(next_score.ns, prefix_score.score() + prob)
                        if next_score.v_ns < prefix_score.viterbi_score() + prob:
                            next_score.v_ns = prefix_score.viterbi_score() + prob
                            next_score.cur_token_prob = prob
                            next_score.times_ns = prefix_score.times().copy()
                            next_score.times_ns.append(t)
            next_hyps = sorted(next_hyps.items(), key=lambda x: x[1].total_score(), reverse=True)
            cur_hyps = next_hyps[:beam_size]
        nbest = [y[0] for y in cur_hyps]
        nbest_scores = [y[1].total_score() for y in cur_hyps]
        nbest_times = [y[1].times() for y in cur_hyps]
        results.append(
            DecodeResult(
                tokens=nbest[0],
                score=nbest_scores[0],
                times=nbest_times[0],
                nbest=nbest,
                nbest_scores=nbest_scores,
                nbest_times=nbest_times,
            )
        )
    return results


def attention_beam_search(model, encoder_out: torch.Tensor, encoder_mask: torch.Tensor, beam_size: int = 10, length_penalty: float = 0.0) -> List[DecodeResult]:
    device = encoder_out.device
    batch_size = encoder_out.shape[0]
    maxlen = encoder_out.size(1)
    running_size = batch_size * beam_size
    hyps = torch.ones([running_size, 1], dtype=torch.long, device=device).fill_(model.sos)
    prefix_len = hyps.size(1)
    scores = torch.tensor([0.0] + [-float("inf")] * (beam_size - 1), dtype=torch.float)
    scores = scores.to(device).repeat([batch_size]).unsqueeze(1)
    end_flag = torch.zeros_like(scores, dtype=torch.bool, device=device)
    cache = {"self_att_cache": {}, "cross_att_cache": {}}
    for i in range(prefix_len, maxlen + 1):
        if end_flag.sum() == running_size:
            break
        hyps_mask = subsequent_mask(i).unsqueeze(0).repeat(running_size, 1, 1).to(device)
        logp = model.decoder.forward_one_step(encoder_out, encoder_mask, hyps, hyps_mask, cache)
        top_k_logp, top_k_index = logp.topk(beam_size)
        top_k_logp = mask_finished_scores(top_k_logp, end_flag)
        top_k_index = mask_finished_preds(top_k_index, end_flag, model.eos)
        scores = scores + top_k_logp
        scores = scores.view(batch_size, beam_size * beam_size)
        scores, offset_k_index = scores.topk(k=beam_size)
        cache_index = (offset_k_index // beam_size).view(-1)
        base_cache_index = (torch.arange(batch_size, device=device).view(-1, 1).repeat([1, beam_size]) * beam_size).view(-1)
        cache_index = base_cache_index + cache_index
        cache["self_att_cache"] = {
            i_layer: (
                torch.index_select(value[0], dim=0, index=cache_index),
                torch.index_select(value[1], dim=0, index=cache_index),
            )
            for (i_layer, value) in cache["self_att_cache"].items()
        }
        scores = scores.view(-1, 1)
        base_k_index = torch.arange(batch_size, device=device).view(-1, 1).repeat([1, beam_size])
        base_k_index = base_k_index * beam_size * beam_size
        best_k_index = base_k_index.view(-1) + offset_k_index.view(-1)
        best_k_pred = torch.index_select(top_k_index.view(-1), dim=-1, index=best_k_index)
        best_hyps_index = best_k_index // beam_size
        last_best_k_hyps = torch.index_select(hyps, dim=0, index=best_hyps_index)
        hyps = torch.cat((last_best_k_hyps, best_k_pred.view(-1, 1)), dim=1)
        end_flag = torch.eq(hyps[:, -1], model.eos).view(-1, 1)

    scores = scores.view(batch_size, beam_size)
    lengths = hyps.ne(model.eos).sum(dim=1).view(batch_size, beam_size).float()
    scores = scores / lengths.pow(length_penalty)
    _, best_index = scores.max(dim=-1)
    best_hyps_index = best_index + torch.arange(batch_size, dtype=torch.long, device=device) * beam_size
    best_hyps = torch.index_select(hyps, dim=0, index=best_hyps_index)[:, prefix_len:]
    results = []
    for i in range(batch_size):
        hyp = best_hyps[i]
        results.append(DecodeResult(hyp[hyp != model.eos].tolist()))
    return results


def attention_rescoring(
    model,
    ctc_prefix_results: List[DecodeResult],
    encoder_outs: torch.Tensor,
    encoder_lens: torch.Tensor,
    ctc_weight: float = 0.0,
    reverse_weight: float = 0.0,
) -> List[DecodeResult]:
    """Rescore each utterance's CTC n-best with one batched L2R (and R2L) decoder pass."""
    sos, eos = model.sos, model.eos
    device = encoder_outs.device
    assert encoder_outs.shape[0] == len(ctc_prefix_results)
    results = []
    for b in range(encoder_outs.shape[0]):
        encoder_out = encoder_outs[b, : encoder_lens[b], :].unsqueeze(0)
        hyps = ctc_prefix_results[b].nbest
        ctc_scores = ctc_prefix_results[b].nbest_scores
        hyps_pad = pad_sequence([torch.tensor(hyp, device=device, dtype=torch.long) for hyp in hyps], True, model.ignore_id)
        hyps_lens = torch.tensor([len(hyp) for hyp in hyps], device=device, dtype=torch.long)
        hyps_pad, _ = add_sos_eos(hyps_pad, sos, eos, model.ignore_id)
        hyps_lens = hyps_lens + 1
        prefix_len = 1
        decoder_out, r_decoder_out = model.forward_attention_decoder(hyps_pad, hyps_lens, encoder_out, reverse_weight)
        best_score = -float("inf")
        best_index = 0
        confidences = []
        tokens_confidences = []
        for i, hyp in enumerate(hyps):
            score = 0.0
            tc = []
            for j, w in enumerate(hyp):
                s = decoder_out[i][j + (prefix_len - 1)][w]
                score += s
                tc.append(math.exp(s))
            score += decoder_out[i][len(hyp) + (prefix_len - 1)][eos]
            if reverse_weight > 0 and r_decoder_out.dim() > 0:
                r_score = 0.0
                for j, w in enumerate(hyp):
                    s = r_decoder_out[i][len(hyp) - j - 1 + (prefix_len - 1)][w]
                    r_score += s
                    tc[j] = (tc[j] + math.exp(s)) / 2
                r_score += r_decoder_out[i][len(hyp) + (prefix_len - 1)][eos]
                score = score * (1 - reverse_weight) + r_score * reverse_weight
            confidences.append(math.exp(score / (len(hyp) + 1)))
            score += ctc_scores[i] * ctc_weight
            if score > best_score:
                best_score = score.item()
                best_index = i
            tokens_confidences.append(tc)
        results.append(
            DecodeResult(
                hyps[best_index],
                best_score,
                confidence=confidences[best_index],
                times=ctc_prefix_results[b].nbest_times[best_index],
                tokens_confidence=tokens_confidences[best_index],
            )
        )
    return results


# ----------------------------------------------------------------------------- the model


class ASRModel(torch.nn.Module):
    """CTC-attention hybrid: encoder, decoder, ctc; loss = w*ctc + (1-w)*att."""

    def __init__(
        self,
        vocab_size: int,
        encoder: ConformerEncoder,
        decoder: torch.nn.Module,
        ctc: CTC,
        ctc_weight: float = 0.5,
        ignore_id: int = IGNORE_ID,
        reverse_weight: float = 0.0,
        lsm_weight: float = 0.0,
        length_normalized_loss: bool = False,
        special_tokens: Optional[dict] = None,
    ):
        assert 0.0 <= ctc_weight <= 1.0, ctc_weight
        super().__init__()
        self.sos = vocab_size - 1 if special_tokens is None else special_tokens.get("<sos>", vocab_size - 1)
        self.eos = vocab_size - 1 if special_tokens is None else special_tokens.get("<eos>", vocab_size - 1)
        self.vocab_size = vocab_size
        self.special_tokens = special_tokens
        self.ignore_id = ignore_id
        self.ctc_weight = ctc_weight
        self.reverse_weight = reverse_weight
        self.encoder = encoder
        self.decoder = decoder
        self.ctc = ctc
        self.criterion_att = LabelSmoothingLoss(
            size=vocab_size, padding_idx=ignore_id, smoothing=lsm_weight, normalize_length=length_normalized_loss
        )

    def forward(self, batch: dict, device: torch.device = torch.device("cpu")) -> Dict[str, Optional[torch.Tensor]]:
        """batch: feats (B, U, I), feats_lengths, target (B, L) padded with ignore_id, target_lengths."""
        speech = batch["feats"].to(device)
        speech_lengths = batch["feats_lengths"].to(device)
        text = batch["target"].to(device)
        text_lengths = batch["target_lengths"].to(device)
        assert text_lengths.dim() == 1, text_lengths.shape
        assert speech.shape[0] == speech_lengths.shape[0] == text.shape[0] == text_lengths.shape[0]
        encoder_out, encoder_mask = self.encoder(speech, speech_lengths)
        encoder_out_lens = encoder_mask.squeeze(1).sum(1)
        if self.ctc_weight != 0.0:
            loss_ctc, _ = self.ctc(encoder_out, encoder_out_lens, text, text_lengths)
        else:
            loss_ctc = None
        if self.ctc_weight != 1.0:
            loss_att, acc_att = self._calc_att_loss(encoder_out, encoder_mask, text, text_lengths)
        else:
            loss_att, acc_att = None, None
        if loss_ctc is None:
            loss = loss_att
        elif loss_att is None:
            loss = loss_ctc
        else:
            loss = self.ctc_weight * loss_ctc + (1 - self.ctc_weight) * loss_att
        return {"loss": loss, "loss_att": loss_att, "loss_ctc": loss_ctc, "th_accuracy": acc_att}

    def _calc_att_loss(self, encoder_out, encoder_mask, ys_pad, ys_pad_lens):
        ys_in_pad, ys_out_pad = add_sos_eos(ys_pad, self.sos, self.eos, self.ignore_id)
        ys_in_lens = ys_pad_lens + 1
        r_ys_pad = reverse_pad_list(ys_pad, ys_pad_lens, float(self.ignore_id))
        r_ys_in_pad, r_ys_out_pad = add_sos_eos(r_ys_pad, self.sos, self.eos, self.ignore_id)
        decoder_out, r_decoder_out, _ = self.decoder(
            encoder_out, encoder_mask, ys_in_pad, ys_in_lens, r_ys_in_pad, self.reverse_weight
        )
        loss_att = self.criterion_att(decoder_out, ys_out_pad)
        r_loss_att = torch.tensor(0.0)
        if self.reverse_weight > 0.0:
            r_loss_att = self.criterion_att(r_decoder_out, r_ys_out_pad)
        loss_att = loss_att * (1 - self.reverse_weight) + r_loss_att * self.reverse_weight
        acc_att = th_accuracy(decoder_out.view(-1, self.vocab_size), ys_out_pad, ignore_label=self.ignore_id)
        return loss_att, acc_att

    def _forward_encoder(self, speech, speech_lengths, decoding_chunk_size=-1, num_decoding_left_chunks=-1, simulate_streaming=False):
        if simulate_streaming and decoding_chunk_size > 0:
            return self.encoder.forward_chunk_by_chunk(
                speech, decoding_chunk_size=decoding_chunk_size, num_decoding_left_chunks=num_decoding_left_chunks
            )
        return self.encoder(
            speech, speech_lengths, decoding_chunk_size=decoding_chunk_size, num_decoding_left_chunks=num_decoding_left_chunks
        )

    def ctc_logprobs(self, encoder_out: torch.Tensor, blank_penalty: float = 0.0, blank_id: int = 0):
        if blank_penalty > 0.0:
            logits = self.ctc.ctc_lo(encoder_out)
            logits[:, :, blank_id] -= blank_penalty
            return logits.log_softmax(dim=2)
        return self.ctc.log_softmax(encoder_out)

    def decode(
        self,
        methods: List[str],
        speech: torch.Tensor,
        speech_lengths: torch.Tensor,
        beam_size: int = 1,
        decoding_chunk_size: int = -1,
        num_decoding_left_chunks: int = -1,
        ctc_weight: float = 0.0,
        simulate_streaming: bool = False,
        reverse_weight: float = 0.0,
        blank_id: int = 0,
        blank_penalty: float = 0.0,
        length_penalty: float = 0.0,
    ) -> Dict[str, List[DecodeResult]]:
        """methods: any of attention, ctc_greedy_search, ctc_prefix_beam_search, attention_rescoring."""
        assert speech.shape[0] == speech_lengths.shape[0]
        assert decoding_chunk_size != 0
        encoder_out, encoder_mask = self._forward_encoder(
            speech, speech_lengths, decoding_chunk_size, num_decoding_left_chunks, simulate_streaming
        )
        encoder_lens = encoder_mask.squeeze(1).sum(1)
        ctc_probs = self.ctc_logprobs(encoder_out, blank_penalty, blank_id)
        results = {}
        if "attention" in methods:
            results["attention"] = attention_beam_search(self, encoder_out, encoder_mask, beam_size, length_penalty)
        if "ctc_greedy_search" in methods:
            results["ctc_greedy_search"] = ctc_greedy_search(ctc_probs, encoder_lens, blank_id)
        if "ctc_prefix_beam_search" in methods:
            results["ctc_prefix_beam_search"] = ctc_prefix_beam_search(ctc_probs, encoder_lens, beam_size, blank_id)
        if "attention_rescoring" in methods:
            if "ctc_prefix_beam_search" in results:
                ctc_prefix_result = results["ctc_prefix_beam_search"]
            else:
                ctc_prefix_result = ctc_prefix_beam_search(ctc_probs, encoder_lens, beam_size, blank_id)
            results["attention_rescoring"] = attention_rescoring(
                self, ctc_prefix_result, encoder_out, encoder_lens, ctc_weight, reverse_weight
            )
        return results

    def forward_attention_decoder(self, hyps, hyps_lens, encoder_out, reverse_weight: float = 0):
        """Log-probs of L2R and R2L decoders for num_hyps sos-prefixed hypotheses on one utterance."""
        assert encoder_out.size(0) == 1
        num_hyps = hyps.size(0)
        assert hyps_lens.size(0) == num_hyps
        encoder_out = encoder_out.repeat(num_hyps, 1, 1)
        encoder_mask = torch.ones(num_hyps, 1, encoder_out.size(1), dtype=torch.bool, device=encoder_out.device)
        r_hyps_lens = hyps_lens - 1
        r_hyps = hyps[:, 1:]
        max_len = torch.max(r_hyps_lens)
        index_range = torch.arange(0, max_len, 1).to(encoder_out.device)
        seq_len_expand = r_hyps_lens.unsqueeze(1)
        seq_mask = seq_len_expand > index_range
        index = ((seq_len_expand - 1) - index_range) * seq_mask
        r_hyps = torch.gather(r_hyps, 1, index)
        r_hyps = torch.where(seq_mask, r_hyps, self.eos)
        r_hyps = torch.cat([hyps[:, 0:1], r_hyps], dim=1)
        decoder_out, r_decoder_out, _ = self.decoder(encoder_out, encoder_mask, hyps, hyps_lens, r_hyps, reverse_weight)
        decoder_out = torch.nn.functional.log_softmax(decoder_out, dim=-1)
        r_decoder_out = torch.nn.functional.log_softmax(r_decoder_out, dim=-1)
        return decoder_out, r_decoder_out


# ----------------------------------------------------------------------------- init_model

DECODER_CLASSES = {"transformer": TransformerDecoder, "bitransformer": BiTransformerDecoder}

# WeNet options this transcription does not implement, with the only value it reproduces
# (None: the option does not change the numbers, any value is accepted).
_FIXED_ENCODER_OPTIONS = {
    "use_sdpa": False,
    "layer_norm_type": "layer_norm",
    "n_kv_head": None,
    "head_dim": None,
    "gradient_checkpointing": None,
    "positionwise_conv_kernel_size": None,
}
_FIXED_DECODER_OPTIONS = {
    "use_sdpa": False,
    "layer_norm_type": "layer_norm",
    "n_kv_head": None,
    "head_dim": None,
    "gradient_checkpointing": None,
    "tie_word_embedding": False,
}


def _split_conf(conf: dict, fixed: dict, where: str) -> dict:
    kept = {}
    for key, value in conf.items():
        if key in fixed:
            if fixed[key] is not None and value != fixed[key] and value is not None:
                raise ValueError(f"{where}.{key}={value!r} is not transcribed (only {fixed[key]!r})")
            continue
        kept[key] = value
    return kept


def init_asr_model(configs: dict) -> ASRModel:
    """ASRModel from a WeNet train YAML dict, as wenet.utils.init_model.init_speech_model builds
    a conformer encoder + transformer/bitransformer decoder + CTC model."""
    if configs.get("model", "asr_model") != "asr_model":
        raise ValueError(f"model {configs['model']!r}: only asr_model is transcribed")
    encoder_type = configs.get("encoder", "conformer")
    if encoder_type != "conformer":
        raise ValueError(f"encoder {encoder_type!r}: only conformer is transcribed")
    decoder_type = configs.get("decoder", "bitransformer")
    if decoder_type not in DECODER_CLASSES:
        raise ValueError(f"decoder {decoder_type!r}: only {sorted(DECODER_CLASSES)} are transcribed")
    if configs.get("cmvn", None) == "global_cmvn":
        cmvn_conf = configs["cmvn_conf"]
        if not cmvn_conf.get("is_json_cmvn", True):
            raise ValueError("cmvn_conf.is_json_cmvn=false (Kaldi text stats) is not transcribed")
        mean, istd = load_cmvn_json(cmvn_conf["cmvn_file"])
        global_cmvn = GlobalCMVN(torch.from_numpy(mean).float(), torch.from_numpy(istd).float())
    else:
        global_cmvn = None
    vocab_size = configs["output_dim"]
    encoder = ConformerEncoder(
        configs["input_dim"],
        global_cmvn=global_cmvn,
        **_split_conf(configs["encoder_conf"], _FIXED_ENCODER_OPTIONS, "encoder_conf"),
    )
    decoder = DECODER_CLASSES[decoder_type](
        vocab_size, encoder.output_size(), **_split_conf(configs["decoder_conf"], _FIXED_DECODER_OPTIONS, "decoder_conf")
    )
    ctc = CTC(vocab_size, encoder.output_size(), blank_id=configs["ctc_conf"]["ctc_blank_id"] if "ctc_conf" in configs else 0)
    return ASRModel(
        vocab_size=vocab_size,
        encoder=encoder,
        decoder=decoder,
        ctc=ctc,
        special_tokens=configs.get("tokenizer_conf", {}).get("special_tokens", None),
        **configs["model_conf"],
    )
