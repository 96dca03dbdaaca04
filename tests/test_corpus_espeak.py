"""eSpeak NG through ctypes: audible speech of plausible length, clear errors."""

import numpy as np
import pytest

from most_jax.corpus import espeak


def test_synthesis_is_audible_speech_of_plausible_duration():
    text = "the old farmer sold three brown horses at the market yesterday"
    wave, rate = espeak.synthesize(text, voice="en-us", rate=175)
    assert rate == 22050 and wave.dtype == np.float32 and wave.ndim == 1
    seconds = len(wave) / rate
    # 11 words at 175 words per minute is about 3.8 s; eSpeak adds short pauses.
    assert 2.5 < seconds < 6.0, seconds
    assert np.abs(wave).max() <= 1.0
    frame_rms = np.sqrt((wave[: len(wave) // 441 * 441].reshape(-1, 441) ** 2).mean(axis=1))
    assert (frame_rms > 0.01).mean() > 0.5  # mostly voiced, not silence


def test_rate_voice_and_pitch_change_the_audio():
    text = "please put the red box on the shelf"
    slow, _ = espeak.synthesize(text, rate=110)
    fast, _ = espeak.synthesize(text, rate=260)
    assert len(slow) > 1.6 * len(fast)
    other, _ = espeak.synthesize(text, voice="en-gb-scotland+m3", rate=260)
    assert len(other) != len(fast) or not np.allclose(other, fast)


@pytest.mark.parametrize("voice", ["en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us+f3"])
def test_several_voices_load(voice):
    wave, _ = espeak.synthesize("hello there", voice=voice)
    assert len(wave) > 0.3 * 22050


def test_bad_arguments_name_the_culprit():
    with pytest.raises(espeak.ESpeakError, match="unknown eSpeak voice 'xx-nowhere'"):
        espeak.synthesize("hello", voice="xx-nowhere")
    with pytest.raises(ValueError, match="rate"):
        espeak.synthesize("hello", rate=20)
    with pytest.raises(ValueError, match="pitch"):
        espeak.synthesize("hello", pitch=140)


def test_missing_library_gives_a_clear_error(monkeypatch, tmp_path):
    import espeakng_loader

    monkeypatch.setattr(espeakng_loader, "get_library_path", lambda: str(tmp_path / "libespeak-ng.so"))
    with pytest.raises(espeak.ESpeakError, match="cannot load eSpeak NG from .*libespeak-ng.so"):
        espeak._Engine()
