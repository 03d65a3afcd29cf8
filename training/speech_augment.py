"""Channel degradations of training and test audio: gain, noise, telephone band, codecs, reverberation.

A recording's channel is shared by every turn of a dialogue, so one `Chain` (drawn per pseudo-dialogue
by `random_chain`) degrades all of its clips; only the noise itself is drawn per clip. Codecs run
through PyAV's encoders and come back through backend.media.load_audio, the app's own decoder.
`TEST_CONDITIONS` are the fixed degradations the speech-encoder evaluation reports.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from scipy.signal import fftconvolve, resample_poly

from backend.media import load_audio
from backend.speech_encoder import SR

CODECS = {"aac": ("mp4", "aac"), "mp3": ("mp3", "libmp3lame")}
_CHUNK = 1024


@dataclass(frozen=True)
class Chain:
    """Degradations applied in this order: reverberation, telephone band, noise, gain, codec."""

    gain_db: float = 0.0
    snr_db: float | None = None  # white noise at this signal-to-noise ratio
    telephone: bool = False  # resampled through 8 kHz (a 4 kHz band)
    reverb_rt60: float | None = None  # seconds, a synthetic exponentially decaying impulse response
    codec: str | None = None  # "aac" (in mp4) or "mp3"
    bitrate: int = 48000

    @property
    def name(self) -> str:
        parts = [f"gain{self.gain_db:+.0f}dB"]
        if self.reverb_rt60 is not None:
            parts.append(f"rt60={self.reverb_rt60:.2f}")
        if self.telephone:
            parts.append("8kHz")
        if self.snr_db is not None:
            parts.append(f"snr{self.snr_db:.0f}dB")
        if self.codec:
            parts.append(f"{self.codec}{self.bitrate // 1000}k")
        return "+".join(parts)


CLEAN = Chain()
TEST_CONDITIONS = {
    "aac-mp4": Chain(codec="aac"),
    "gain-20dB": Chain(gain_db=-20.0),
    "8kHz+noise15dB": Chain(telephone=True, snr_db=15.0),
    "all": Chain(gain_db=-20.0, telephone=True, snr_db=15.0, codec="aac"),
}


def random_chain(rng: np.random.Generator) -> Chain:
    """A random channel: gain always; noise, telephone band, reverberation and a codec each often."""
    return Chain(
        gain_db=float(rng.uniform(-30.0, 6.0)),
        snr_db=float(rng.choice([5.0, 10.0, 15.0, 20.0, 30.0])) if rng.random() < 0.6 else None,
        telephone=bool(rng.random() < 0.4),
        reverb_rt60=float(rng.uniform(0.2, 0.8)) if rng.random() < 0.4 else None,
        codec=str(rng.choice(list(CODECS))) if rng.random() < 0.5 else None,
        bitrate=int(rng.choice([24000, 32000, 48000, 64000])),
    )


def impulse_response(rt60: float, rng: np.random.Generator, sr: int = SR) -> np.ndarray:
    """A direct path followed by exponentially decaying noise that falls 60 dB in `rt60` seconds."""
    n = int(rt60 * sr)
    decay = np.exp(-6.9 * np.arange(n) / n)  # ln(1000) = 6.9: -60 dB at n
    ir = rng.standard_normal(n) * decay * 0.3
    ir[0] = 1.0
    return (ir / np.sqrt(np.square(ir).sum())).astype(np.float32)


def codec_roundtrip(audio: np.ndarray, codec: str, bitrate: int, sr: int = SR) -> np.ndarray:
    """`audio` encoded with `codec` into its container and decoded back by backend.media.load_audio."""
    container_format, encoder = CODECS[codec]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"clip.{container_format}"
        with av.open(str(path), "w", format=container_format) as container:
            stream = container.add_stream(encoder, rate=sr)
            stream.layout, stream.bit_rate = "mono", bitrate
            for start in range(0, len(audio), _CHUNK):
                frame = av.AudioFrame.from_ndarray(audio[None, start : start + _CHUNK].astype(np.float32), format="fltp", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = sr, start, Fraction(1, sr)
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        decoded = load_audio(path, sr=sr)
    out = np.zeros(len(audio), np.float32)  # the codec's frame padding is cut, a short tail padded
    out[: min(len(out), len(decoded))] = decoded[: len(out)]
    return out


def degrade(audio: np.ndarray, chain: Chain, rng: np.random.Generator, sr: int = SR) -> np.ndarray:
    """`audio` (float32 mono at `sr`) through `chain`."""
    x = np.asarray(audio, dtype=np.float32)
    if chain.reverb_rt60 is not None:
        x = fftconvolve(x, impulse_response(chain.reverb_rt60, rng, sr))[: len(x)].astype(np.float32)
    if chain.telephone:
        x = resample_poly(resample_poly(x, 1, sr // 8000), sr // 8000, 1)[: len(x)].astype(np.float32)
    if chain.snr_db is not None:
        power = float(np.mean(np.square(x))) or 1e-8
        x = x + rng.standard_normal(len(x)).astype(np.float32) * np.sqrt(power / 10 ** (chain.snr_db / 10))
    x = np.clip(x * 10 ** (chain.gain_db / 20), -1.0, 1.0).astype(np.float32)
    if chain.codec is not None:
        x = codec_roundtrip(x, chain.codec, chain.bitrate, sr)
    return x
