"""Unit vocoder: hop per unit rate, transposed conv and log-mel against torch / transformers,
duration round trip, aligned units, GAN steps through the common trainer (mel loss falls; resume
equals an uninterrupted run)."""

import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from most_jax.config import Config, ConfigError, config_from_dict
from most_jax.data.vocoder_batches import VocoderBatches, aligned_units, segment_runs
from most_jax.models.vocoder import istft
from most_jax.models.vocoder.duration import durations_from_log, run_lengths
from most_jax.models.vocoder.losses import log_mel, mel_filters
from most_jax.models.vocoder.model import Vocoder
from most_jax.nn.conv import conv_transpose1d, weight_norm
from most_jax.speech import units as units_lib
from most_jax.train.loop import run_training

TINY = {"family": "vocoder", "num_units": 11, "unit_embed_dim": 6, "dur_hidden_dim": 5, "dur_dropout": 0.0,
        "upsample_rates": [5, 4, 4], "upsample_kernel_sizes": [11, 8, 8], "upsample_initial_channel": 16,
        "resblock_kernel_sizes": [3, 5], "resblock_dilation_sizes": [[1, 3], [1, 2]],
        "mpd_periods": [2, 3], "mpd_channels": [4, 8, 8], "msd_scales": 2, "msd_channels": [8, 8, 8, 8, 8, 8, 8],
        "msd_groups": [1, 2, 2, 2, 2, 2, 1], "mel_n_fft": 256, "mel_hop": 64, "mel_win": 256, "mel_bins": 20}


STEPS = 20  # of the GAN test


def tiny_cfg(**model) -> Config:
    return config_from_dict({"model": {**TINY, **model}, "data": {"seq_len": 16, "batch_size": 2},
                             "train": {"steps": STEPS, "lr": 6e-3, "warmup_steps": 0, "schedule": "constant", "b1": 0.8,
                                       "b2": 0.99, "weight_decay": 0.0, "clip_norm": 0.0, "log_every": 1,
                                       "checkpoint_every": 1000, "async_checkpoint": False}})


@pytest.mark.parametrize("rate_hz,rates,kernels", [(50, [5, 4, 4, 2, 2], [11, 8, 8, 4, 4]),
                                                   (25, [8, 5, 4, 4], [16, 11, 8, 8]),
                                                   (12.5, [8, 5, 4, 4, 2], [16, 11, 8, 8, 4])])
def test_hop_fits_unit_rate(rate_hz, rates, kernels):
    cfg = tiny_cfg(upsample_rates=rates, upsample_kernel_sizes=kernels, upsample_initial_channel=64).model
    assert cfg.hop == 16000 / rate_hz
    gen = nnx.eval_shape(lambda: Vocoder(cfg, rngs=nnx.Rngs(0))).generator
    out = jax.eval_shape(lambda g, u: g(u), gen, jax.ShapeDtypeStruct((3, 7), jnp.int32))
    assert out.shape == (3, 7 * cfg.hop)


def test_bad_upsampler_is_refused():
    with pytest.raises(ConfigError, match="upsample_kernel_sizes"):
        tiny_cfg(upsample_kernel_sizes=[10, 8, 8])


def test_transposed_conv_and_weight_norm_match_torch():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 9, 5)).astype(np.float32)
    w = rng.normal(size=(5, 3, 8)).astype(np.float32)  # torch [in, out, k]
    ref = torch.nn.functional.conv_transpose1d(torch.from_numpy(x).transpose(1, 2), torch.from_numpy(w), stride=4,
                                               padding=2).transpose(1, 2).numpy()
    ours = conv_transpose1d(jnp.asarray(x), jnp.asarray(w.transpose(2, 0, 1)), stride=4, padding=2)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    g = rng.uniform(0.5, 2, size=5).astype(np.float32)
    layer = torch.nn.utils.parametrizations.weight_norm(torch.nn.ConvTranspose1d(5, 3, 8))
    layer.parametrizations.weight.original0.data = torch.from_numpy(g).reshape(5, 1, 1)
    layer.parametrizations.weight.original1.data = torch.from_numpy(w)
    np.testing.assert_allclose(weight_norm(jnp.asarray(w.transpose(2, 0, 1)), jnp.asarray(g), axis=1),
                               layer.weight.detach().numpy().transpose(2, 0, 1), atol=1e-6)


def test_log_mel_matches_torch_stft_and_transformers_filters():
    from transformers.audio_utils import mel_filter_bank

    np.testing.assert_allclose(mel_filters(16000, 256, 20, 0.0, 8000.0),
                               mel_filter_bank(129, 20, 0.0, 8000.0, 16000, norm="slaney", mel_scale="slaney"),
                               atol=1e-6)
    wave = np.random.default_rng(1).uniform(-1, 1, size=(2, 1000)).astype(np.float32)
    y = torch.nn.functional.pad(torch.from_numpy(wave)[:, None], (96, 96), mode="reflect")[:, 0]
    spec = torch.stft(y, 256, hop_length=64, win_length=200, window=torch.hann_window(200), center=False,
                      return_complex=True)
    mag = torch.sqrt(spec.real ** 2 + spec.imag ** 2 + 1e-9).numpy()  # [B, F, N]
    ref = np.log(np.maximum(np.einsum("BFN,FM->BNM", mag, mel_filters(16000, 256, 20, 0.0, 8000.0)), 1e-5))
    ours = log_mel(jnp.asarray(wave), sample_rate=16000, n_fft=256, hop=64, win=200, bins=20, fmin=0.0, fmax=8000.0)
    np.testing.assert_allclose(ours, ref, atol=2e-4)


def test_duration_round_trip():
    frames = np.array([3, 3, 5, 5, 5, 1, 3, 3, 3, 3])
    dedup, lengths = run_lengths(frames)
    assert dedup.tolist() == [3, 5, 1, 3] and lengths.tolist() == [2, 3, 1, 4]
    assert np.repeat(dedup, lengths).tolist() == frames.tolist()
    # a predictor that outputs log(1 + d) exactly re-expands to the frames
    assert np.repeat(dedup, np.asarray(durations_from_log(jnp.log1p(lengths.astype(np.float32))))).tolist() == \
        frames.tolist()
    assert np.asarray(durations_from_log(jnp.array([-3.0, 0.2]))).tolist() == [1, 1]  # at least one frame
    units, dur = segment_runs(frames)
    assert units[:4].tolist() == [3, 5, 1, 3] and dur.tolist() == [0, 3, 1, 0, 0, 0, 0, 0, 0, 0]


def test_aligned_units_keep_length_and_dedup_to_the_extractor():
    rng = np.random.default_rng(0)
    waves = [rng.normal(size=16000).astype(np.float32) * np.linspace(0, 1, 16000) for _ in range(3)]
    feats = units_lib.build_features("mfcc")
    for min_run in (1, 3):
        ext = units_lib.UnitExtractor.fit(waves, feats, unit_rate=25.0, min_run=min_run,
                                          options=units_lib.kmeans.KMeansOptions(num_clusters=6, epochs=2))
        for w in waves:
            frames = aligned_units(ext, w)
            assert len(frames) == len(ext.unit_frames(w))
            assert run_lengths(frames)[0].tolist() == ext.extract(w).tolist()


# The GAN test's vocoder: the smallest of every part (hop 16, one ResBlock, one period and one
# scale), so its step compiles in seconds; the schedule and losses are the real ones.
GAN_TINY = {"upsample_rates": [4, 4], "upsample_kernel_sizes": [8, 8], "upsample_initial_channel": 8,
            "resblock_kernel_sizes": [3], "resblock_dilation_sizes": [[1, 3]], "mpd_periods": [2],
            "mpd_channels": [4, 4], "msd_scales": 1, "msd_channels": [4] * 7, "msd_groups": [1] * 7,
            "mel_n_fft": 128, "mel_hop": 32, "mel_win": 128, "mel_bins": 16}


def _batches(cfg: Config, seed: int = 0) -> VocoderBatches:
    """Utterances whose audio is a deterministic function of their units (a tone per unit), so the
    generator has something learnable."""
    rng = np.random.default_rng(seed)
    hop = cfg.model.hop
    waves, units = [], []
    for _ in range(4):
        u = np.repeat(rng.integers(0, cfg.model.num_units, 10), rng.integers(2, 4, 10))
        t = np.arange(hop) / 16000
        waves.append(np.concatenate([0.5 * np.sin(2 * np.pi * (200 + 150 * k) * t) for k in u]).astype(np.float32))
        units.append(u.astype(np.int32))
    return VocoderBatches(cfg, waves, units, [0] * 4)


def _records(run) -> dict:
    return {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


def test_gan_steps_drive_the_mel_loss_down_and_resume_is_exact(tmp_path, compile_cache):
    cfg = tiny_cfg(**GAN_TINY)
    console = io.StringIO()
    run_training(cfg, tmp_path / "a", _batches(cfg), stop_after=STEPS, console=console)
    full = _records(tmp_path / "a")
    mel = [full[s]["mel_l1"] for s in range(1, STEPS + 1)]
    assert all(np.isfinite(full[s]["loss_disc"]) and full[s]["loss_disc"] > 0 for s in full)
    assert np.mean(mel[-3:]) < 0.7 * np.mean(mel[:3]), mel
    # stopped after 3 steps and resumed: steps 4..6 see the same state, batches and keys
    run_training(cfg, tmp_path / "b", _batches(cfg), stop_after=3, console=console)
    run_training(cfg, tmp_path / "b", _batches(cfg), resume=True, stop_after=6, console=console)
    resumed = _records(tmp_path / "b")
    for step in (4, 5, 6):
        assert {k: full[step][k] for k in ("loss_disc", "loss_gen", "mel_l1", "loss_dur")} == \
            {k: resumed[step][k] for k in ("loss_disc", "loss_gen", "mel_l1", "loss_dur")}


def test_discriminators_then_generator_each_own_optimizer():
    from most_jax.models.family import get_family
    from most_jax.train.optimizer import PhasedOptimizer, make_family_optimizer
    from most_jax.train.state import model_graphdef

    cfg = tiny_cfg()
    _, shapes = model_graphdef(cfg.model)
    opt = make_family_optimizer(cfg.train, shapes, None, get_family(cfg.model).phases)
    assert isinstance(opt, PhasedOptimizer) and list(opt.parts) == ["discriminators", "generator"]
    state = jax.eval_shape(opt.init, shapes)
    assert set(state) == {"discriminators", "generator"}


@pytest.mark.parametrize("n_fft,hop,frames", [(64, 16, 9), (40, 20, 5), (640, 160, 7)])
def test_istft_matches_torch(n_fft, hop, frames):
    rng = np.random.default_rng(n_fft)
    spec = (rng.normal(size=(2, frames, n_fft // 2 + 1)) + 1j * rng.normal(size=(2, frames, n_fft // 2 + 1)))
    spec = spec.astype(np.complex64)
    ours = np.asarray(istft.istft(jnp.asarray(spec), n_fft, hop))
    ref = torch.istft(torch.from_numpy(spec).transpose(1, 2), n_fft, hop, window=torch.hann_window(n_fft),
                      center=True, length=frames * hop).numpy()
    assert ours.shape == (2, frames * hop)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=1e-4)


def test_istft_head_hop_and_resynthesis_of_an_stft():
    cfg = tiny_cfg(upsample_rates=[2], upsample_kernel_sizes=[4], istft_n_fft=64, istft_hop=16).model
    assert cfg.hop == 32
    gen = nnx.eval_shape(lambda: Vocoder(cfg, rngs=nnx.Rngs(0))).generator
    out = jax.eval_shape(lambda g, u: g(u), gen, jax.ShapeDtypeStruct((3, 7), jnp.int32))
    assert out.shape == (3, 7 * 32)
    # a head that predicts a signal's own (centred) STFT gives the signal back away from the ends
    wave = np.random.default_rng(1).normal(size=(1, 20 * 16)).astype(np.float32)
    ref = torch.stft(torch.from_numpy(wave), 64, 16, window=torch.hann_window(64), center=True,
                     return_complex=True)[..., :20].transpose(1, 2).numpy()
    head = np.concatenate([np.log(np.abs(ref) + 1e-12), np.angle(ref)], axis=-1)
    back = np.asarray(istft.istft(istft.spectrum(jnp.asarray(head)), 64, 16))
    np.testing.assert_allclose(back[:, 32:-64], wave[:, 32:-64], atol=1e-4)


def test_bad_istft_sizes_are_refused():
    with pytest.raises(ConfigError, match="istft_n_fft"):
        tiny_cfg(istft_n_fft=60, istft_hop=16)
    with pytest.raises(ConfigError, match="istft_n_fft"):
        tiny_cfg(istft_n_fft=16, istft_hop=16)


def test_mel_only_training_leaves_discriminators_and_lowers_the_mel_loss(tmp_path, compile_cache):
    cfg = tiny_cfg(**{**GAN_TINY, "upsample_rates": [2], "upsample_kernel_sizes": [4], "istft_n_fft": 32,
                      "istft_hop": 8, "adversarial": False})
    run_training(cfg, tmp_path / "m", _batches(cfg), stop_after=STEPS, console=io.StringIO())
    recs = _records(tmp_path / "m")
    mel = [recs[s]["mel_l1"] for s in range(1, STEPS + 1)]
    assert all(recs[s]["loss_disc"] == 0 and recs[s]["loss_adv"] == 0 for s in recs)
    assert np.mean(mel[-3:]) < 0.7 * np.mean(mel[:3]), mel
