"""Hand-crafted utterance speech features for the offline speech encoder: eGeMAPS + log-mel stats.

Training computes them for corpus files and the app for each turn's audio, so both live here.
`FEATURE_VERSION` names this code's features: change it whenever a change here changes the vectors,
so encoders trained on the old features refuse to load instead of reading different inputs.
"""
from __future__ import annotations

import importlib.metadata
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from backend.errors import InputError, ModelUnavailableError

EGEMAPS_DIM = 88
N_MELS = 40
FEATURE_VERSION = "egemaps-v02+logmel40-v1"
MIN_SECONDS = 0.5  # openSMILE fills functionals with NaN for shorter segments
OPENSMILE = "opensmile"


def feature_components() -> dict[str, dict]:
    """How a checkpoint records the features it was trained on: this code's version and the
    installed openSMILE (whose eGeMAPS values may change between releases)."""
    try:
        opensmile_version = importlib.metadata.version(OPENSMILE)
    except importlib.metadata.PackageNotFoundError:
        raise ModelUnavailableError(
            "the speech features need openSMILE, which is not installed; `pip install -r requirements.txt`"
        ) from None
    return {
        "features": {"kind": "code", "name": FEATURE_VERSION},
        OPENSMILE: {
            "kind": "package",
            "package": OPENSMILE,
            "version": opensmile_version,
            "files": {},
        },
    }


@lru_cache(maxsize=1)
def _smile():
    import opensmile

    return opensmile.Smile(
        feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level=opensmile.FeatureLevel.Functionals
    )


def _mono(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    if audio.ndim != 1 or audio.size == 0:
        raise InputError(f"expected a non-empty mono or (samples, channels) audio array, got shape {audio.shape}")
    return np.nan_to_num(audio)


def _pad_to(audio: np.ndarray, n: int) -> np.ndarray:
    missing = max(0, n - len(audio))
    return np.pad(audio, (missing // 2, missing - missing // 2))


def egemaps(audio: np.ndarray, sr: int) -> np.ndarray:
    """The 88 eGeMAPSv02 functionals of one clip (clips under 0.5 s are zero-padded)."""
    audio = _pad_to(_mono(audio), int(MIN_SECONDS * sr))
    values = _smile().process_signal(audio, sr).to_numpy(dtype=np.float32).reshape(-1)
    return np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


@lru_cache(maxsize=8)
def mel_filterbank(sr: int, n_fft: int, n_mels: int = N_MELS) -> np.ndarray:
    """Triangular HTK-mel filters, shape [n_mels, n_fft // 2 + 1]."""
    bins = np.linspace(0.0, sr / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.array(0.0)), _hz_to_mel(np.array(sr / 2)), n_mels + 2))
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lower) / (center - lower)
    falling = (upper - bins) / (upper - center)
    return np.clip(np.minimum(rising, falling), 0.0, None).astype(np.float32)


def logmel_stats(audio: np.ndarray, sr: int, n_mels: int = N_MELS) -> np.ndarray:
    """Mean and std over frames of `n_mels` log-mel energies (25 ms windows, 10 ms hop): [2 * n_mels]."""
    win, hop = int(0.025 * sr), int(0.010 * sr)
    n_fft = 1 << (win - 1).bit_length()
    audio = _pad_to(_mono(audio), n_fft)
    spec = torch.stft(
        torch.from_numpy(audio), n_fft, hop_length=hop, win_length=win,
        window=torch.hann_window(win), center=False, return_complex=True,
    ).abs().pow(2).numpy()
    logmel = np.log(mel_filterbank(sr, n_fft, n_mels) @ spec + 1e-6)
    return np.concatenate([logmel.mean(axis=1), logmel.std(axis=1)]).astype(np.float32)


def speech_feature_vector(audio: np.ndarray, sr: int) -> np.ndarray:
    """[eGeMAPS (88) ; log-mel mean (40) ; log-mel std (40)], always finite."""
    vector = np.concatenate([egemaps(audio, sr), logmel_stats(audio, sr)])
    return np.nan_to_num(vector, nan=0.0, posinf=0.0, neginf=0.0)


def _read_with_av(path: Path) -> tuple[np.ndarray, int]:
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise InputError(f"{path}: the file has no audio stream; give a file with a sound track")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=stream.rate)
        chunks = [out.to_ndarray() for frame in container.decode(stream) for out in resampler.resample(frame)]
        chunks += [out.to_ndarray() for out in resampler.resample(None)]
    if not chunks:
        raise InputError(f"{path}: the audio stream is empty")
    return np.concatenate(chunks, axis=1)[0], stream.rate


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """(mono float32 samples, sample rate) from an audio file, or the sound track of a video file."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise InputError(f"audio file {path} does not exist; check the corpus media paths")
    try:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=False)
    except sf.LibsndfileError:
        try:
            return _read_with_av(path)
        except InputError:
            raise
        except Exception as exc:  # PyAV raises many codec/container error types
            raise InputError(f"{path}: cannot decode audio ({exc}); convert it to WAV/FLAC or MP4") from None
    return _mono(audio), int(sr)


def file_feature_vector(path: Path) -> np.ndarray:
    """`speech_feature_vector` of an audio (or video) file."""
    audio, sr = read_audio(path)
    return speech_feature_vector(audio, sr)
