"""Train/serve parity of the speech encoder: a clip read from its file (as training reads corpus
clips) and the same clip muxed as AAC into an MP4 and cut out of the video's track by the backend
(as the app reads a turn) give nearly the same pooled Whisper features and the same prediction."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from backend.checkpoints import read_checkpoint
from backend.encoders import load_speech_encoder
from backend.media import audio_span, load_audio
from backend.settings import CHECKPOINTS_DIR
from backend.speech_encoder import SR, pooled_states
from backend.synthetic_media import speech_like_audio

LEAD_S = 0.7  # the turn starts this far into the video
SPEECH = CHECKPOINTS_DIR / "mister-e" / "speech"


def mux_into_mp4(audio: np.ndarray, path: Path) -> Path:
    """A small H.264 + AAC (48 kbit/s) MP4 whose sound is LEAD_S of silence, then `audio`."""
    track = np.concatenate([np.zeros(int(LEAD_S * SR), np.float32), audio, np.zeros(SR // 2, np.float32)])
    fps, frames = 10, int(len(track) / SR * 10) + 1
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        sound = container.add_stream("aac", rate=SR)
        sound.layout, sound.bit_rate = "mono", 48000
        image = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 90, np.uint8), format="rgb24")
        for i in range(frames):
            image.pts = i
            image.time_base = Fraction(1, fps)
            container.mux(video.encode(image))
        for start in range(0, len(track), 1024):
            frame = av.AudioFrame.from_ndarray(track[None, start : start + 1024], format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = SR, start, Fraction(1, SR)
            container.mux(sound.encode(frame))
        container.mux(video.encode(None))
        container.mux(sound.encode(None))
    return path


@pytest.fixture(scope="module")
def encoder():
    return load_speech_encoder(read_checkpoint(SPEECH))


def generated_clip(folder: Path) -> Path:
    audio = speech_like_audio([(0.1, 2.4)], 2.6, SR, seed=3)
    path = folder / "generated.wav"
    sf.write(path, audio, SR)
    return path


@pytest.fixture(params=["generated", "ravdess"])
def clip_file(request, tmp_path) -> Path:
    if request.param == "generated":
        return generated_clip(tmp_path)
    folder = request.getfixturevalue("ravdess_dir") / "Actor_21"  # a test actor
    return sorted(folder.glob("03-01-05-02-*"))[0]  # strong anger


def test_a_clip_from_its_file_and_from_an_mp4_gives_the_same_features_and_label(encoder, clip_file, tmp_path):
    from_file = load_audio(clip_file, sr=SR)
    video = mux_into_mp4(from_file, tmp_path / "turn.mp4")
    from_video = audio_span(load_audio(video, sr=SR), SR, LEAD_S, LEAD_S + len(from_file) / SR)
    assert abs(len(from_video) - len(from_file)) <= 1
    a, b = pooled_states(encoder.states, [from_file]), pooled_states(encoder.states, [from_video])
    cosine = float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))
    relative = float(np.linalg.norm(a - b) / np.linalg.norm(a))
    assert cosine > 0.999 and relative < 0.05, (cosine, relative)
    with torch.no_grad():
        labels = [encoder.model.head.classify(encoder.embed_features(x)).argmax(-1).item() for x in (a, b)]
    assert labels[0] == labels[1]
