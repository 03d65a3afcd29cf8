"""Text to speech with eSpeak NG (the library the `espeakng_loader` package ships), through ctypes.

Used to generate dialogues with real, known words for the ASR tests, benchmarks and the demo clip.
eSpeak NG keeps state between utterances (its output for a sentence depends on what it spoke
before), so each batch of lines is spoken by a fresh library in a child process (`synthesize`):
the same lines, voices and order always give the same samples.
"""
from __future__ import annotations

import ctypes
import io
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from math import gcd
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from backend.errors import ModelUnavailableError

# speak_lib.h (espeak-ng API revision 12)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH = 1, 3
_EE_OK = 0


class _Event(ctypes.Structure):  # espeak_EVENT: only passed through, never read
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class Voice:
    """An eSpeak NG voice: name ("en-us+m3" = US English, male variant 3), words per minute, pitch 0-100."""

    name: str
    rate: int = 165
    pitch: int = 50


# Two clearly different voices for two-speaker dialogues: a lower male and a higher female variant
# (variants with "breath" noise, such as f2, f3 and f5, differ from run to run).
DIALOGUE_VOICES = (Voice("en-us+m7", rate=140, pitch=50), Voice("en-us+f4", rate=140, pitch=60))


class _Engine:
    """The process's eSpeak NG library, initialised once (only the child of `synthesize` speaks)."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError:
            raise ModelUnavailableError(
                "speech synthesis needs the espeakng-loader package (eSpeak NG); install it with "
                "`pip install espeakng-loader` (it is in requirements.txt)"
            ) from None
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]
        # `path` is the folder that holds espeak-ng-data.
        home = str(Path(espeakng_loader.get_data_path()).parent).encode()
        self.sample_rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, home, 0)
        if self.sample_rate <= 0:
            raise ModelUnavailableError(f"eSpeak NG did not start (data folder {home.decode()}); reinstall espeakng-loader")
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # kept referenced: the library holds the pointer
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, n: int, events) -> int:
        if wav and n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # continue

    def synth(self, text: str, voice: Voice) -> np.ndarray:
        if self.lib.espeak_SetVoiceByName(voice.name.encode()) != _EE_OK:
            raise ModelUnavailableError(f"eSpeak NG has no voice {voice.name!r}")
        self.lib.espeak_SetParameter(_RATE, voice.rate, 0)
        self.lib.espeak_SetParameter(_PITCH, voice.pitch, 0)
        self._chunks = []
        data = text.encode("utf-8") + b"\0"
        # Synchronous output: the callback has received all the audio when espeak_Synth returns.
        if self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None) != _EE_OK:
            raise RuntimeError(f"eSpeak NG failed to speak {text!r}")
        chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


@lru_cache(maxsize=1)
def _engine() -> _Engine:
    return _Engine()


def _trimmed(raw: np.ndarray, engine_sr: int, sr: int) -> np.ndarray:
    """Float32 at `sr` without the silence eSpeak puts before and after an utterance."""
    samples = raw.astype(np.float32) / 32768.0
    loud = np.flatnonzero(np.abs(samples) > 1e-3)
    samples = samples[loud[0] : loud[-1] + 1] if loud.size else samples[:0]
    if sr != engine_sr:
        common = gcd(sr, engine_sr)
        samples = resample_poly(samples, sr // common, engine_sr // common).astype(np.float32)
    return samples


def synthesize(lines: Sequence[tuple[str, Voice]], sr: int = 16000) -> list[np.ndarray]:
    """Float32 mono speech at `sr` Hz for each (text, voice), leading and trailing silence trimmed.

    Spoken by a fresh eSpeak NG in a child process (`python -m backend.tts`), so the result depends
    only on `lines`.
    """
    request = json.dumps({"sr": sr, "lines": [[text, asdict(voice)] for text, voice in lines]})
    done = subprocess.run(
        [sys.executable, "-m", "backend.tts"], input=request.encode(), capture_output=True,
        cwd=Path(__file__).resolve().parent.parent, check=False,
    )
    if done.returncode != 0:
        raise ModelUnavailableError(f"speech synthesis failed: {done.stderr.decode(errors='replace').strip()[-500:]}")
    with np.load(io.BytesIO(done.stdout)) as arrays:
        return [arrays[f"line{i}"] for i in range(len(lines))]


def _serve() -> None:
    """The child's side of `synthesize`: JSON request on stdin, an .npz of the lines on stdout."""
    request = json.loads(sys.stdin.buffer.read())
    lines = [(text, Voice(**voice)) for text, voice in request["lines"]]
    engine = _engine()
    speech = [_trimmed(engine.synth(text, voice), engine.sample_rate, request["sr"]) for text, voice in lines]
    out = io.BytesIO()
    np.savez(out, **{f"line{i}": samples for i, samples in enumerate(speech)})
    sys.stdout.buffer.write(out.getvalue())


if __name__ == "__main__":
    _serve()
