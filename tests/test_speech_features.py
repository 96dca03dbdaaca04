"""Kaldi fbank / MFCC / deltas against the kaldi-native-fbank package on the same options."""

import kaldi_native_fbank as knf
import numpy as np
import pytest
import soxr

from most_jax.speech import features as F
from most_jax.corpus.espeak import synthesize

TOLERANCE = 1e-3  # measured: about 3e-4 on eSpeak speech, 7e-5 on noise (log-mel, float32 Kaldi vs float64 here)


@pytest.fixture(scope="module")
def waves():
    speech, rate = synthesize("the quick brown fox jumps over the lazy dog near the river", voice="en-us+f3")
    noise = np.random.default_rng(0).standard_normal(12345).astype(np.float32) * 0.1
    quiet = np.random.default_rng(1).standard_normal(4000).astype(np.float32) * 1e-6
    return {"speech": soxr.resample(speech, rate, 16000).astype(np.float32), "noise": noise, "quiet": quiet}


def _knf(online, wave):
    online.accept_waveform(16000, (wave * 32768).tolist())
    online.input_finished()
    return np.stack([online.get_frame(i) for i in range(online.num_frames_ready)])


def test_fbank_on_16_bit_speech_differs_only_below_float32_resolution(waves):
    """Kaldi computes in float32: in bins holding less than float32 epsilon (~1e-7) of a frame's
    strongest bin its FFT rounding shows (measured up to ~7e-3 in the log); everywhere else the
    agreement is as tight as on float input."""
    speech16 = np.round(waves["speech"] * 32767).astype(np.float32) / 32768
    opts = _knf_frame_opts(knf.FbankOptions())
    opts.mel_opts.num_bins = 80
    expected = _knf(knf.OnlineFbank(opts), speech16)
    diff = np.abs(F.fbank(speech16) - expected)
    resolvable = expected - expected.max(axis=1, keepdims=True) > np.log(1e-7)
    assert diff[resolvable].max() < TOLERANCE
    assert diff.max() < 1e-2 and (diff > TOLERANCE).mean() < 1e-3


def _knf_frame_opts(opts, window="povey"):
    opts.frame_opts.dither = 0.0
    opts.frame_opts.window_type = window
    return opts


@pytest.mark.parametrize("name", ["speech", "noise", "quiet"])
@pytest.mark.parametrize("bins,window,low,high", [(80, "povey", 20.0, 0.0), (40, "hamming", 64.0, -400.0)])
def test_fbank_matches_kaldi_native_fbank(waves, name, bins, window, low, high):
    opts = _knf_frame_opts(knf.FbankOptions(), window)
    opts.mel_opts.num_bins, opts.mel_opts.low_freq, opts.mel_opts.high_freq = bins, low, high
    expected = _knf(knf.OnlineFbank(opts), waves[name])
    ours = F.fbank(waves[name], F.FbankOptions(F.FrameOptions(window=window), bins, low, high))
    assert ours.shape == expected.shape == (F.num_frames(len(waves[name]), F.FrameOptions()), bins)
    assert np.abs(ours - expected).max() < TOLERANCE


@pytest.mark.parametrize("name", ["speech", "noise"])
@pytest.mark.parametrize("use_energy,lifter", [(True, 22.0), (False, 0.0)])
def test_mfcc_matches_kaldi_native_fbank(waves, name, use_energy, lifter):
    opts = _knf_frame_opts(knf.MfccOptions())
    opts.use_energy, opts.cepstral_lifter = use_energy, lifter
    expected = _knf(knf.OnlineMfcc(opts), waves[name])
    ours = F.mfcc(waves[name], F.MfccOptions(use_energy=use_energy, cepstral_lifter=lifter))
    assert ours.shape == expected.shape == (expected.shape[0], 13)
    # Cepstra reach about 100 in magnitude; the same relative accuracy as the log-mel energies.
    assert np.abs(ours - expected).max() < TOLERANCE * max(1.0, np.abs(expected).max() / 10)


def test_deltas_match_kaldi(waves):
    ceps = F.mfcc(waves["speech"])
    expected = np.asarray(knf.compute_deltas(knf.DeltaOptions(), ceps.tolist()))
    ours = F.deltas(ceps)
    assert ours.shape == (len(ceps), 39)
    np.testing.assert_array_equal(ours[:, :13], ceps)
    assert np.abs(ours - expected).max() < 1e-4


def test_frame_count_and_short_input():
    frame = F.FrameOptions()
    assert (frame.frame_length, frame.frame_shift, frame.fft_size) == (400, 160, 512)
    assert F.num_frames(399, frame) == 0 and F.num_frames(400, frame) == 1 and F.num_frames(16000, frame) == 98
    assert F.fbank(np.zeros(100, np.float32)).shape == (0, 80)


def test_mel_banks_are_kaldi_triangles():
    banks = F.mel_banks(80, F.FrameOptions(), 20.0, 0.0)
    assert banks.shape == (80, 256) and banks.min() >= 0 and banks.max() <= 1
    # Adjacent triangles overlap so that their weights sum to one between the first and last centre.
    centre_bins = banks.argmax(axis=1)
    total = banks.sum(axis=0)[centre_bins[0] + 1:centre_bins[-1]]
    np.testing.assert_allclose(total, 1.0, atol=1e-9)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="too large"):
        F.mel_banks(300, F.FrameOptions(), 20.0, 0.0)
    with pytest.raises(ValueError, match="low_freq"):
        F.mel_banks(80, F.FrameOptions(), 9000.0, 0.0)
    with pytest.raises(ValueError, match="1-D"):
        F.fbank(np.zeros((2, 1000), np.float32))
    with pytest.raises(ValueError, match="floating point"):
        F.fbank(np.zeros(1000, np.int16))
    with pytest.raises(ValueError, match="window"):
        F.FrameOptions(window="kaiser")
