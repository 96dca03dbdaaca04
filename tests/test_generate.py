"""Generation over the MLA latent cache: equal to full-sequence logits, constrained, batched."""

import dataclasses
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from most_jax.config import load_config
from most_jax.infer.generate import (Sampling, filter_logits, generate, left_pad, speech_token_mask,
                                     text_token_mask)
from most_jax.models.most import MoST

CONFIGS = Path(__file__).parent.parent / "configs"


def tiny_model(seed=0, **overrides):
    cfg = load_config(CONFIGS / "most_tiny.yaml").model
    cfg = dataclasses.replace(cfg, moe=dataclasses.replace(cfg.moe, dispatch="reference"), **overrides)
    return MoST(cfg, rngs=nnx.Rngs(seed))


@pytest.mark.parametrize("q_lora_rank", [None, 24])
def test_cached_decoding_equals_full_sequence_logits(q_lora_rank):
    model = tiny_model(attention=dataclasses.replace(
        load_config(CONFIGS / "most_tiny.yaml").model.attention, q_lora_rank=q_lora_rank))
    cfg = model.cfg
    rng = np.random.RandomState(0)
    prompts = [rng.randint(0, 616, 5).tolist(), rng.randint(0, 616, 8).tolist()]
    continuation = rng.randint(0, 616, (2, 4))
    tokens, valid = left_pad(prompts, cfg.vocab.pad_id)
    full_tokens = np.concatenate([tokens, continuation], axis=1)
    full_valid = np.concatenate([valid, np.ones_like(continuation, bool)], axis=1)
    positions = np.maximum(np.cumsum(full_valid, axis=1) - 1, 0)
    reference, _ = model(jnp.asarray(full_tokens), segment_ids_BT=jnp.asarray(full_valid.astype(np.int32)),
                         positions_BT=jnp.asarray(positions))

    p, total = tokens.shape[1], full_tokens.shape[1]
    decode = nnx.jit(lambda m, *args, **kw: m.decode(*args, **kw))
    cache = model.init_cache(2, total)
    slot_valid = np.zeros((2, total), bool)
    slot_valid[:, :p] = valid
    logits, cache = decode(model, jnp.asarray(tokens), cache, index=jnp.int32(0), slot_valid_BS=jnp.asarray(slot_valid),
                                 positions_BT=jnp.asarray(positions[:, :p]))
    np.testing.assert_allclose(logits[valid], reference[:, :p][valid], atol=1e-4, rtol=1e-4)
    for i in range(continuation.shape[1]):
        slot_valid[:, p + i] = True
        step_logits, cache = decode(model, jnp.asarray(continuation[:, i:i + 1]), cache, index=jnp.int32(p + i),
                                          slot_valid_BS=jnp.asarray(slot_valid),
                                          positions_BT=jnp.asarray(positions[:, p + i:p + i + 1]))
        np.testing.assert_allclose(step_logits[:, 0], reference[:, p + i], atol=1e-4, rtol=1e-4)


def test_greedy_generation_matches_argmax_of_full_forward():
    model = tiny_model(seed=1)
    cfg = model.cfg
    allowed = np.ones(cfg.vocab_size, bool)
    prompt = [3, 17, 250, 9]
    out = generate(model, [prompt], allowed=allowed, stop_ids=[], sampling=Sampling(max_new_tokens=6))[0]
    assert len(out) == 6
    # The model is causal, so one forward over prompt + output gives every step's logits: each
    # generated id is the argmax after the sequence before it.
    logits, _ = model(jnp.asarray([prompt + out]))
    predicted = np.asarray(jnp.argmax(logits[0], axis=-1))[len(prompt) - 1:-1]
    assert predicted.tolist() == out


@pytest.mark.parametrize("mode", ["text", "speech"])
def test_constrained_decoding_never_leaves_the_modality(mode):
    model = tiny_model(seed=2)
    cfg = model.cfg
    mask = (text_token_mask if mode == "text" else speech_token_mask)(cfg.vocab, cfg.vocab_size)
    prompts = [[1, 2, 3], [612, 520, 530, 540, 613, 5]]
    outs = generate(model, prompts, allowed=mask, stop_ids=[], seed=3,
                    sampling=Sampling(temperature=1.5, max_new_tokens=12))
    for out in outs:
        assert len(out) == 12
        assert all(mask[t] for t in out)


def test_generation_stops_at_stop_id_per_row():
    model = tiny_model(seed=4)
    cfg = model.cfg
    allowed = np.zeros(cfg.vocab_size, bool)
    allowed[[7, cfg.vocab.eos_id]] = True
    # Greedy over {7, eos}: each row stops the first time eos wins; nothing after it is returned.
    outs = generate(model, [[1, 2], [3, 4, 5, 6]], allowed=allowed, stop_ids=[cfg.vocab.eos_id],
                    sampling=Sampling(max_new_tokens=10))
    for out in outs:
        assert cfg.vocab.eos_id not in out
        assert set(out) <= {7}


def test_top_k_and_top_p_filters():
    logits = jnp.asarray([[4.0, 3.0, 2.0, 1.0, 0.0]])
    allowed = jnp.ones(5, bool)
    kept_k = np.asarray(filter_logits(logits, allowed, Sampling(temperature=1.0, top_k=2)))[0] > -1e29
    assert kept_k.tolist() == [True, True, False, False, False]
    probs = np.exp(np.asarray(logits[0])) / np.exp(np.asarray(logits[0])).sum()  # 0.64, 0.24, ...
    kept_p = np.asarray(filter_logits(logits, allowed, Sampling(temperature=1.0, top_p=0.8)))[0] > -1e29
    assert kept_p.tolist() == [True, True, False, False, False]
    assert probs[0] < 0.8 <= probs[0] + probs[1]


def test_bad_prompts_are_rejected():
    model = tiny_model()
    allowed = np.ones(model.cfg.vocab_size, bool)
    with pytest.raises(ValueError, match="outside"):
        generate(model, [[1, 10_000]], allowed=allowed, stop_ids=[])
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[]], allowed=allowed, stop_ids=[])
