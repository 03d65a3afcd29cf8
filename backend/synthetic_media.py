"""Deterministic synthetic dialogue videos: two real faces with speaking mouths.

Two kinds of soundtrack:
- `make_dialogue_video`: turn i is spoken by face i % 2 (0 = left, 1 = right) as a harmonic,
  amplitude-modulated tone, near-silence between turns; the speaker's mouth opens and closes at
  random every syllable. Cheap; for media, face and pipeline tests that need no words.
- `make_spoken_dialogue_video`: real synthetic speech (eSpeak NG, one voice per face) for given
  lines, with varied pauses; the speaker's mouth follows the loudness of its speech. Returns the
  ground truth (who said what, when) for the ASR tests, benchmarks and the demo.
"""
from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import av
import cv2
import numpy as np

# Head crop of scikit-image's public-domain astronaut photo and its mouth within that crop.
_HEAD_ROWS, _HEAD_COLS = slice(20, 220), slice(130, 320)
_MOUTH_XY, _MOUTH_HALF_W = (94, 125), 17
_MOUTH_LEVELS = 8  # 0 = closed (the original photo), then increasingly open
_SYLLABLE_S = 0.16
_HEAD_SCALES = (1.3, 1.1)  # the right face is smaller, so "largest face" is not always the speaker
_SPEAKER_F0 = (150.0, 220.0)
_AUDIO_CHUNK = 1024
# Pauses between spoken lines, cycled: long ones (0.7 s and up, a pause alone marks the turn change)
# and quick turn-taking (0.25-0.4 s, as short as the pause between two sentences of one speaker).
_PAUSES_S = (0.7, 0.25, 1.0, 0.4, 0.3, 1.3, 0.8)
_NOISE_RMS = 0.002  # the room: real recordings are never digitally silent


@lru_cache(maxsize=1)
def _head() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[_HEAD_ROWS, _HEAD_COLS])


def _head_with_mouth(level: int) -> np.ndarray:
    head = _head().copy()
    if level > 0:
        cv2.ellipse(head, _MOUTH_XY, (_MOUTH_HALF_W, round(1 + 1.5 * level)), 0, 0, 360, (70, 25, 30), -1)
    return head


def head_boxes(size: tuple[int, int] = (640, 360)) -> tuple[tuple[int, int, int, int], ...]:
    """(x, y, w, h) of the left and right head images in a frame of `size` (width, height)."""
    width, height = size
    head_h, head_w = _head().shape[:2]
    boxes = []
    for side, scale in enumerate(_HEAD_SCALES):
        s = scale * height / 360
        w, h = round(head_w * s), round(head_h * s)
        x = round(width * 0.06) if side == 0 else round(width * 0.94) - w
        boxes.append((x, (height - h) // 2, w, h))
    return tuple(boxes)


def mouth_boxes(size: tuple[int, int] = (640, 360)) -> tuple[tuple[int, int, int, int], ...]:
    """(x, y, w, h) around the left and right mouths (open or closed) in a frame of `size`."""
    head_h, head_w = _head().shape[:2]
    max_half_h = 1 + 1.5 * (_MOUTH_LEVELS - 1)
    boxes = []
    for side, (x, y, w, h) in enumerate(head_boxes(size)):
        sx, sy = w / head_w, h / head_h
        cx = _MOUTH_XY[0] if side == 0 else head_w - 1 - _MOUTH_XY[0]  # the right head is mirrored
        half_w, half_h = (_MOUTH_HALF_W + 2) * sx, (max_half_h + 2) * sy
        left, top = round(x + cx * sx - half_w), round(y + _MOUTH_XY[1] * sy - half_h)
        boxes.append((left, top, round(2 * half_w), round(2 * half_h)))
    return tuple(boxes)


def _background(size: tuple[int, int]) -> np.ndarray:
    width, height = size
    corner = _head()[:10, :10].reshape(-1, 3).mean(axis=0)
    return np.broadcast_to(corner.astype(np.uint8), (height, width, 3)).copy()


def _compose(size: tuple[int, int], levels: tuple[int, int]) -> np.ndarray:
    frame = _background(size)
    for side, ((x, y, w, h), level) in enumerate(zip(head_boxes(size), levels)):
        head = _head_with_mouth(level)
        if side == 1:
            head = head[:, ::-1]
        frame[y : y + h, x : x + w] = cv2.resize(head, (w, h), interpolation=cv2.INTER_AREA)
    return frame


def _mouth_track(
    turns: Sequence[tuple[float, float]], fps: int, n_frames: int, seed: int
) -> list[tuple[int, int]]:
    """(left level, right level) for every frame; a new random opening every syllable of a turn."""
    rng = np.random.default_rng(seed)
    per_syllable = max(1, round(_SYLLABLE_S * fps))
    track = [(0, 0)] * n_frames
    for i, (start, end) in enumerate(turns):
        first, last = int(np.ceil(start * fps)), min(n_frames, int(np.ceil(end * fps)))
        level = 0
        for f0 in range(first, last, per_syllable):
            level = int((level + rng.integers(1, _MOUTH_LEVELS)) % _MOUTH_LEVELS)  # never repeats
            for f in range(f0, min(f0 + per_syllable, last)):
                track[f] = (level, 0) if i % 2 == 0 else (0, level)
    return track


def speech_like_audio(
    turns: Sequence[tuple[float, float]], duration_s: float, sr: int = 16000, seed: int = 0
) -> np.ndarray:
    """Float32 mono: a harmonic tone with syllable-rate modulation during each turn, faint noise elsewhere."""
    rng = np.random.default_rng(seed)
    n = int(round(duration_s * sr))
    audio = (rng.standard_normal(n) * _NOISE_RMS).astype(np.float32)
    ramp = int(0.015 * sr)
    for i, (start, end) in enumerate(turns):
        a, b = int(round(start * sr)), min(n, int(round(end * sr)))
        if b <= a:
            continue
        t = np.arange(b - a) / sr
        f0 = _SPEAKER_F0[i % 2] * (1 + 0.03 * np.sin(2 * np.pi * 0.7 * t))
        phase = 2 * np.pi * np.cumsum(f0) / sr
        tone = sum(np.sin(k * phase) / k for k in range(1, 5))
        envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 2 * np.pi))
        edges = np.ones(b - a)
        r = min(ramp, (b - a) // 2)
        if r:
            edges[:r] = np.linspace(0, 1, r)
            edges[-r:] = np.linspace(1, 0, r)
        audio[a:b] += (0.2 * tone * envelope * edges).astype(np.float32)
    return np.clip(audio, -1, 1)


def _add_video_stream(container: av.container.OutputContainer, size: tuple[int, int], fps: int):
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height = size
    stream.pix_fmt = "yuv420p"
    stream.codec_context.gop_size = 2 * fps
    stream.options = {"preset": "veryfast"}
    return stream


def _add_audio_stream(container: av.container.OutputContainer, sr: int):
    stream = container.add_stream("aac", rate=sr)
    stream.layout = "mono"
    stream.bit_rate = 48000
    return stream


def _audio_frame(chunk: np.ndarray, sr: int, pts: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = sr, pts, Fraction(1, sr)
    return frame


def _write(
    path: Path,
    frames: Sequence[np.ndarray],
    fps: int,
    size: tuple[int, int],
    audio: np.ndarray | None,
    sr: int,
    faststart: bool,
) -> Path:
    """Encode frames (list of ndarrays, may repeat objects) and audio, interleaved by time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", format="mp4", options=options) as container:
        vstream = _add_video_stream(container, size, fps)
        astream = _add_audio_stream(container, sr) if audio is not None else None
        encoded: dict[int, av.VideoFrame] = {}
        audio_pos = 0
        for i, array in enumerate(frames):
            # Frames repeat a handful of images; convert each distinct one to YUV once.
            if id(array) not in encoded:
                rgb = av.VideoFrame.from_ndarray(array, format="rgb24")
                encoded[id(array)] = rgb.reformat(format="yuv420p")
            frame = encoded[id(array)]
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            container.mux(vstream.encode(frame))
            while astream is not None and audio_pos < min(len(audio), (i + 1) * sr // fps):
                chunk = audio[audio_pos : audio_pos + _AUDIO_CHUNK]
                container.mux(astream.encode(_audio_frame(chunk, sr, audio_pos)))
                audio_pos += len(chunk)
        while astream is not None and audio_pos < len(audio):
            chunk = audio[audio_pos : audio_pos + _AUDIO_CHUNK]
            container.mux(astream.encode(_audio_frame(chunk, sr, audio_pos)))
            audio_pos += len(chunk)
        container.mux(vstream.encode(None))
        if astream is not None:
            container.mux(astream.encode(None))
    return path


def make_dialogue_video(
    path: str | Path,
    turns: Sequence[tuple[float, float]],
    *,
    size: tuple[int, int] = (640, 360),
    fps: int = 25,
    duration_s: float | None = None,
    audio: bool = True,
    faces: bool = True,
    sr: int = 16000,
    seed: int = 0,
    faststart: bool = False,
) -> Path:
    """Write an H.264/AAC MP4 of a two-person dialogue with the given (start, end) turns in seconds."""
    if duration_s is None:
        duration_s = max((end for _, end in turns), default=0.0) + 1.0
    n_frames = max(1, int(round(duration_s * fps)))
    if faces:
        frames = _frames(size, _mouth_track(turns, fps, n_frames, seed))
    else:
        frames = [_background(size)] * n_frames
    sound = speech_like_audio(turns, n_frames / fps, sr, seed) if audio else None
    return _write(Path(path), frames, fps, size, sound, sr, faststart)


@dataclass(frozen=True)
class SpokenLine:
    """Ground truth of one generated line: who (0 = left face, 1 = right), when (seconds), what."""

    speaker: int
    start: float
    end: float
    text: str


def _frames(size: tuple[int, int], track: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """One composed image per frame; frames with the same mouth levels share one array."""
    bank: dict[tuple[int, int], np.ndarray] = {}
    frames = []
    for levels in track:
        if levels not in bank:
            bank[levels] = _compose(size, levels)
        frames.append(bank[levels])
    return frames


def _envelope_track(
    speech: Sequence[np.ndarray], truth: Sequence[SpokenLine], sr: int, fps: int, n_frames: int
) -> list[tuple[int, int]]:
    """(left level, right level) per frame: the speaker's mouth opens with the RMS of its speech
    in that frame, relative to the line's loudest frame."""
    track = [(0, 0)] * n_frames
    per_frame = sr / fps
    for samples, line in zip(speech, truth):
        first = int(np.floor(line.start * fps))
        last = min(n_frames, int(np.ceil(line.end * fps)))
        offset = int(round(line.start * sr))
        rms = []
        for f in range(first, last):
            a = max(0, int(round(f * per_frame)) - offset)
            b = max(0, int(round((f + 1) * per_frame)) - offset)
            chunk = samples[a:b]
            rms.append(float(np.sqrt(np.mean(chunk**2))) if chunk.size else 0.0)
        peak = max(rms, default=0.0)
        for f, value in zip(range(first, last), rms):
            level = int(round((_MOUTH_LEVELS - 1) * value / peak)) if peak > 0 else 0
            track[f] = (level, 0) if line.speaker == 0 else (0, level)
    return track


def make_spoken_dialogue_video(
    path: str | Path,
    lines: Sequence[tuple[int, str]],
    *,
    pauses_s: Sequence[float] | None = None,
    lead_in_s: float = 0.5,
    tail_s: float = 0.8,
    size: tuple[int, int] = (640, 360),
    fps: int = 25,
    sr: int = 16000,
    seed: int = 0,
    faststart: bool = False,
) -> list[SpokenLine]:
    """Write an H.264/AAC MP4 where face `speaker` says each (speaker, text) line in turn.

    Speaker 0 (left face) and 1 (right face) have different eSpeak NG voices. Line i+1 starts
    pauses_s[i] after line i ends (default: cycling through _PAUSES_S from `seed`). Returns
    each line's speaker, start, end (of its audible speech, in seconds) and text.
    """
    from backend.tts import DIALOGUE_VOICES, synthesize

    if not lines:
        raise ValueError("a spoken dialogue needs at least one line")
    if any(speaker not in (0, 1) for speaker, _ in lines):
        raise ValueError("speakers are 0 (left face) or 1 (right face)")
    if pauses_s is None:
        pauses_s = [_PAUSES_S[(i + seed) % len(_PAUSES_S)] for i in range(len(lines) - 1)]
    if len(pauses_s) != len(lines) - 1:
        raise ValueError(f"{len(lines)} lines need {len(lines) - 1} pauses, got {len(pauses_s)}")
    speech = synthesize([(text, DIALOGUE_VOICES[speaker]) for speaker, text in lines], sr)
    truth, t = [], lead_in_s
    for (speaker, text), samples, pause in zip(lines, speech, [*pauses_s, 0.0]):
        # Start on a sample so that the truth is exactly where the speech sits in the track.
        start = round(t * sr) / sr
        truth.append(SpokenLine(speaker, start, start + len(samples) / sr, text))
        t = start + len(samples) / sr + pause
    n_frames = int(np.ceil((truth[-1].end + tail_s) * fps))
    rng = np.random.default_rng(seed)
    audio = (rng.standard_normal(int(round(n_frames / fps * sr))) * _NOISE_RMS).astype(np.float32)
    for line, samples in zip(truth, speech):
        a = int(round(line.start * sr))
        audio[a : a + len(samples)] += samples
    frames = _frames(size, _envelope_track(speech, truth, sr, fps, n_frames))
    _write(Path(path), frames, fps, size, np.clip(audio, -1, 1), sr, faststart)
    return truth


def make_silent_video(path: str | Path, duration_s: float = 2.0, **kwargs) -> Path:
    """A video of the two faces with no audio stream at all."""
    return make_dialogue_video(path, [], duration_s=duration_s, audio=False, **kwargs)


def frame_code(index: int) -> int:
    """Grey level that `make_vfr_video` paints frame `index` with (distinct for up to 12 frames)."""
    return 20 + 18 * (index % 12)


def make_vfr_video(path: str | Path, times_s: Sequence[float], size: tuple[int, int] = (160, 96)) -> Path:
    """A video-only MP4 whose frame k is shown from times_s[k] (irregular pts), painted frame_code(k)."""
    path = Path(path)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for k, t in enumerate(times_s):
            array = np.full((size[1], size[0], 3), frame_code(k), np.uint8)
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts, frame.time_base = int(round(t * 1000)), Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_truncated_copy(src: str | Path, dst: str | Path, keep_fraction: float = 0.5) -> Path:
    """Copy the first `keep_fraction` of src's bytes, like an interrupted upload."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * keep_fraction)])
    return Path(dst)


def write_garbled_copy(src: str | Path, dst: str | Path) -> Path:
    """Copy src with its MP4 media data (mdat payload) zeroed: the container opens, nothing decodes."""
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        offset = 0
        end = f.seek(0, 2)
        while offset + 8 <= end:
            f.seek(offset)
            header = f.read(8)
            box_size, box_type, header_len = int.from_bytes(header[:4], "big"), header[4:], 8
            if box_size == 1:  # 64-bit size follows the type
                box_size, header_len = int.from_bytes(f.read(8), "big"), 16
            elif box_size == 0:  # box runs to the end of the file
                box_size = end - offset
            if box_type == b"mdat":
                f.seek(offset + header_len)
                f.write(bytes(box_size - header_len))
                break
            offset += box_size
    return Path(dst)
