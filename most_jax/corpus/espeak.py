"""eSpeak NG speech synthesis through ctypes, using the library and voice data of PyPI `espeakng-loader`.

eSpeak keeps one global engine per process, so this module holds one lazily initialised engine
behind a lock; parallel synthesis needs separate processes (see most_jax.corpus.synth).
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

# Constants from espeak-ng's speak_lib.h (stable public API).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0
_PARAM_RATE = 1
_PARAM_PITCH = 3
_PARAM_RANGE = 4

# Words per minute accepted by eSpeak; pitch and range are 0..100.
RATE_RANGE = (80, 450)

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class ESpeakError(RuntimeError):
    """The eSpeak NG library could not be loaded or initialised, or refused a voice or text."""


class _Engine:
    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as exc:
            raise ESpeakError("the PyPI package 'espeakng-loader' is not installed "
                              "(pip install espeakng-loader)") from exc
        lib_path = espeakng_loader.get_library_path()
        try:
            data_path = espeakng_loader.get_data_path()
            self._lib = ctypes.CDLL(lib_path)
        except (OSError, RuntimeError) as exc:
            raise ESpeakError(f"cannot load eSpeak NG from {lib_path}: {exc}") from exc
        lib = self._lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = None
        self.sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), 0)
        if self.sample_rate <= 0:
            raise ESpeakError(f"espeak_Initialize failed (returned {self.sample_rate}) with data at {data_path}")
        self._chunks: list[np.ndarray] = []
        # Kept as an attribute: ctypes callbacks must outlive every call into the library.
        self._callback = _SynthCallback(self._collect)
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, num_samples, _events) -> int:
        if num_samples > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0  # 0 = continue synthesis

    def _set(self, param: int, value: int, what: str) -> None:
        if self._lib.espeak_SetParameter(param, value, 0) != _EE_OK:
            raise ESpeakError(f"eSpeak refused {what}={value}")

    def synthesize(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int, seed: int) -> np.ndarray:
        if self._lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            raise ESpeakError(f"unknown eSpeak voice {voice!r} (e.g. 'en-us', 'en-gb-x-rp', 'en-us+f3')")
        self._set(_PARAM_RATE, rate, "rate")
        self._set(_PARAM_PITCH, pitch, "pitch")
        self._set(_PARAM_RANGE, pitch_range, "pitch_range")
        data = text.encode("utf-8") + b"\0"
        # eSpeak draws random numbers (e.g. for noise and pitch jitter); seeding it per utterance makes the
        # waveform independent of what this process synthesised before.
        self._lib.espeak_ng_SetRandSeed(seed)
        self._chunks = []
        status = self._lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if status != _EE_OK:
            raise ESpeakError(f"espeak_Synth failed with status {status} on text {text[:60]!r}")
        pcm = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        self._chunks = []
        return pcm.astype(np.float32) / 32768.0


_engine: _Engine | None = None
_lock = threading.Lock()


def synthesize(text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50,
               pitch_range: int = 50, seed: int = 0) -> tuple[np.ndarray, int]:
    """Speaks `text`; returns (float32 mono waveform in [-1, 1], sample rate = 22050 for eSpeak NG).

    voice: an eSpeak voice name, optionally with a variant ('en-us', 'en-gb-scotland', 'en-us+f3');
    rate: words per minute (80..450); pitch and pitch_range: 0..100 (eSpeak's defaults are 50);
    seed: eSpeak's random seed, so the same arguments give the same samples.
    """
    global _engine
    if not RATE_RANGE[0] <= rate <= RATE_RANGE[1]:
        raise ValueError(f"rate must be in {RATE_RANGE} words per minute, got {rate}")
    for name, value in (("pitch", pitch), ("pitch_range", pitch_range)):
        if not 0 <= value <= 100:
            raise ValueError(f"{name} must be in 0..100, got {value}")
    with _lock:
        if _engine is None:
            _engine = _Engine()
        return _engine.synthesize(text, voice, rate, pitch, pitch_range, seed), _engine.sample_rate
