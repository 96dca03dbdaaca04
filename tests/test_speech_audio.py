"""load_audio: mono/resampling reported in AudioInfo, bad files rejected with the right reason."""

import os

import numpy as np
import pytest
import soundfile as sf

from most_jax.speech.audio import AUDIO_ERROR_REASONS, AudioError, load_audio


def tone(rate, seconds=1.0, freq=1000.0, channels=1):
    t = np.arange(int(rate * seconds)) / rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.stack([wave, 0.5 * wave], axis=1) if channels == 2 else wave


def peak_hz(wave, rate):
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return np.argmax(spectrum) * rate / len(wave)


def test_16k_mono_wav_passes_through_unchanged(tmp_path):
    wave = tone(16000)
    sf.write(tmp_path / "a.wav", wave, 16000, subtype="FLOAT")
    out, info = load_audio(tmp_path / "a.wav")
    np.testing.assert_array_equal(out, wave)
    assert (info.sample_rate, info.channels, info.resampled, info.downmixed, info.truncated) == (16000, 1, False, False, False)
    assert info.duration == pytest.approx(1.0) and info.format == "WAV/FLOAT"


def test_stereo_44k_is_mixed_and_resampled(tmp_path):
    sf.write(tmp_path / "s.wav", tone(44100, channels=2), 44100, subtype="PCM_16")
    out, info = load_audio(tmp_path / "s.wav")
    assert info.downmixed and info.resampled and info.channels == 2 and info.sample_rate == 44100
    assert out.dtype == np.float32 and out.ndim == 1 and abs(len(out) - 16000) <= 1
    assert peak_hz(out, 16000) == pytest.approx(1000, abs=2)
    # Mono mix is the channel mean: amplitude (0.5 + 0.25) / 2.
    assert np.abs(out[1000:-1000]).max() == pytest.approx(0.375, abs=0.01)


def test_8k_flac_is_upsampled_without_aliasing_the_tone(tmp_path):
    sf.write(tmp_path / "n.flac", tone(8000, freq=440.0), 8000)
    out, info = load_audio(tmp_path / "n.flac")
    assert info.resampled and not info.downmixed and info.format == "FLAC/PCM_16"
    assert len(out) == 16000 and peak_hz(out, 16000) == pytest.approx(440, abs=2)
    # A real resampler leaves almost no energy above the 4 kHz band edge of the source.
    spectrum = np.abs(np.fft.rfft(out)) ** 2
    assert spectrum[4100:].sum() < 1e-4 * spectrum.sum()


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("make,reason", [
    (lambda p: None, "missing"),
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: sf.write(p, np.zeros(0, np.float32), 16000), "empty"),
    (lambda p: p.write_bytes(os.urandom(3000)), "unreadable"),
    (lambda p: p.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage"), "unreadable"),
    (lambda p: (sf.write(p, tone(16000, 2.0), 16000, subtype="PCM_16"), _truncate(p)), "truncated"),
    (lambda p: (sf.write(p, np.full(100, np.nan, np.float32), 16000, subtype="FLOAT")), "invalid_samples"),
])
def test_bad_files_raise_their_reason(tmp_path, make, reason):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert err.value.reason == reason and err.value.path == str(path) and str(path) in str(err.value)
    assert reason in AUDIO_ERROR_REASONS


def test_directory_is_unreadable(tmp_path):
    with pytest.raises(AudioError) as err:
        load_audio(tmp_path)
    assert err.value.reason == "unreadable"


def test_truncated_flac_is_refused_or_kept_partially(tmp_path):
    path = tmp_path / "cut.flac"
    sf.write(path, tone(16000, 10.0, freq=300.0), 16000)
    _truncate(path)
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert err.value.reason == "truncated"
    partial, info = load_audio(path, allow_truncated=True)
    assert info.truncated and 0 < len(partial) < 10 * 16000
    np.testing.assert_allclose(partial[:16000], tone(16000, 1.0, freq=300.0), atol=1e-4)


def test_truncated_wav_kept_partially_when_allowed(tmp_path):
    path = tmp_path / "cut.wav"
    sf.write(path, tone(16000, 2.0), 16000, subtype="PCM_16")
    _truncate(path, keep=0.75)
    partial, info = load_audio(path, allow_truncated=True)
    assert info.truncated and 1.4 * 16000 < len(partial) < 1.6 * 16000


def test_unknown_reason_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown AudioError reason"):
        AudioError("weird", "x.wav", "detail")
