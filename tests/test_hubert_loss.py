"""HuBERT's masked-prediction family: span masks stay inside utterances, the loss trains, the
family plugs into the config loader and checks its batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from hubert_reference import waveforms
from most_jax.config import Config, HubertConfig, config_from_dict, to_dict
from most_jax.models.family import LossContext, get_family
from most_jax.models.hubert.features import frame_lengths
from most_jax.models.hubert.loss import span_mask

TINY = HubertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24,
                    conv_dim=(8,) * 7, num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2, num_clusters=5,
                    final_dim=8, mask_length=3, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)


def test_span_mask_marks_whole_spans_inside_each_utterance():
    frames = np.array([40, 25, 3])
    mask = span_mask(np.random.default_rng(0), frames, 40, prob=0.5, length=4)
    for b, n in enumerate(frames):
        assert not mask[b, n:].any()
        runs = np.diff(np.flatnonzero(np.diff(np.r_[0, mask[b].astype(int), 0])))[::2]
        assert (runs >= 4).all() or not mask[b].any()
    assert mask[0].sum() >= 4 and mask[2].sum() <= 3


def test_loss_goes_down_and_the_family_checks_its_batch():
    family = get_family(TINY)
    model = family.build(TINY, nnx.Rngs(0))
    wave, lengths = waveforms([3200, 2500])
    t = frame_lengths(TINY, wave.shape[1])
    frames = frame_lengths(TINY, lengths.astype(np.int64))
    rng = np.random.default_rng(1)
    batch = {"waveforms": wave, "lengths": lengths, "targets": rng.integers(0, 5, (2, t)).astype(np.int32),
             "mask_indices": span_mask(rng, frames, t, TINY.mask_prob, TINY.mask_length)}
    family.check_batch(batch, TINY)
    bad = dict(batch, mask_indices=np.ones((2, t), bool))
    with pytest.raises(ValueError, match=r"mask_indices'\]\[1, 7\] masks a padded frame"):
        family.check_batch(bad, TINY)
    ctx = LossContext(totals=family.step_totals(batch), micro_batches=1)
    opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, batch):
        loss, grads = nnx.value_and_grad(lambda m: family.loss_fn(m, batch, None, ctx)[0])(model)
        opt.update(model, grads)
        return loss

    jbatch = {k: jnp.asarray(v) for k, v in batch.items()}
    losses = [float(step(model, opt, jbatch)) for _ in range(40)]
    assert losses[-1] < 0.5 * losses[0]


def test_config_round_trips_through_the_loader():
    cfg = Config(model=TINY)
    again = config_from_dict(to_dict(cfg))
    assert again.model == TINY
    jax.eval_shape(lambda: get_family(TINY).build(TINY, nnx.Rngs(0)))
