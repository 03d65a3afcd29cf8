"""Media decoding with PyAV: probing uploads, the audio track, and frames at given times."""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from backend.errors import InputError

_TIME_EPS = 1e-4  # a frame whose pts is within this of a requested time counts as shown at it
_MIN_SEEK_GAP_S = 2.0  # below this, decoding forward is cheaper than seeking
# Decoded audio may run this much past the duration limit: encoder priming and the last frame make a
# track a little longer than its video.
_DECODE_SLACK_S = 1.0
_MAX_PREALLOCATED_S = 3600.0  # the header's duration sizes the audio buffer, up to this


@dataclass(frozen=True)
class MediaInfo:
    path: Path
    duration_s: float
    fps: float
    width: int
    height: int
    has_audio: bool
    has_video: bool


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise InputError(f"Media file not found: {path.name}. Check the path or upload the file again.")
    if path.stat().st_size == 0:
        raise InputError(f"{path.name} is empty (0 bytes). The upload probably failed; upload it again.")


def _open(path: Path) -> av.container.InputContainer:
    _check_file(path)
    try:
        return av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError) as e:
        raise InputError(
            f"{path.name} is not a readable media file or is truncated "
            f"({getattr(e, 'strerror', None) or e}). "
            "Upload a complete video file (MP4, MKV, MOV, WebM or AVI)."
        ) from e


def _first_frame_decodes(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> bool:
    try:
        for _ in container.decode(stream):
            return True
    except av.FFmpegError:
        return False
    return False


def _duration_s(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float:
    """Container duration, else the video stream's, else the end of its last packet."""
    if container.duration:
        return container.duration / av.time_base
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    container.seek(0)
    end = 0.0
    for packet in container.demux(stream):
        if packet.pts is not None and packet.time_base:
            end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
    return end


def probe(path: str | Path, max_bytes: int | None = None, max_duration_s: float | None = None) -> MediaInfo:
    """Check that `path` is a decodable video within the limits and describe it."""
    path = Path(path)
    _check_file(path)
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise InputError(
            f"{path.name} is {_megabytes(size)}, over the {_megabytes(max_bytes)} upload limit. "
            "Compress the video or trim it to the dialogue you want analysed."
        )
    with _open(path) as container:
        if not container.streams.video:
            raise InputError(
                f"{path.name} has no video stream. Upload a video in which the speakers' faces are visible."
            )
        stream = container.streams.video[0]
        if not _first_frame_decodes(container, stream):
            raise InputError(
                f"{path.name} has a video stream but no frame could be decoded (the file is truncated or "
                "corrupt). Re-export or re-upload the video."
            )
        duration = _duration_s(container, stream)
        rate = stream.average_rate or stream.guessed_rate
        info = MediaInfo(
            path=path,
            duration_s=duration,
            fps=float(rate) if rate else 0.0,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            has_audio=bool(container.streams.audio),
            has_video=True,
        )
    if max_duration_s is not None and duration > max_duration_s:
        raise _too_long(path, f"lasts {_clock(duration)}", max_duration_s)
    return info


def _too_long(path: Path, how_long: str, max_duration_s: float) -> InputError:
    return InputError(
        f"{path.name} {how_long}, over the {_clock(max_duration_s)} limit. "
        f"Trim the video to under {_clock(max_duration_s)} and upload it again."
    )


def _clock(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.3g} s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if secs else f"{minutes} min"


def _megabytes(n_bytes: float) -> str:
    return f"{n_bytes / 1e6:.3g} MB"


class _OverLimit(Exception):
    """More samples than the limit were decoded."""


class _Samples:
    """A growing float32 signal written in place (no list of chunks to join, no copy at the end) that
    refuses to grow past `limit` samples."""

    def __init__(self, capacity: int, limit: int | None) -> None:
        self.limit = limit
        self.data = np.zeros(max(1, capacity if limit is None else min(capacity, limit)), np.float32)
        self.size = 0

    def extend(self, samples: np.ndarray | int) -> None:
        """Append samples, or that many samples of silence."""
        n = samples if isinstance(samples, int) else len(samples)
        end = self.size + n
        if self.limit is not None and end > self.limit:
            raise _OverLimit
        if end > len(self.data):
            grown = max(end, len(self.data) * 3 // 2)
            data = np.zeros(grown if self.limit is None else min(grown, self.limit), np.float32)
            data[: self.size] = self.data[: self.size]
            self.data = data
        if not isinstance(samples, int):
            self.data[self.size : end] = samples
        self.size = end

    def signal(self) -> np.ndarray:
        out = self.data[: self.size]
        np.clip(out, -1.0, 1.0, out=out)
        return out


def load_audio(path: str | Path, sr: int = 16000, max_duration_s: float | None = None) -> np.ndarray:
    """The whole first audio track as float32 mono in [-1, 1] at `sr` Hz, aligned to time 0.

    With `max_duration_s`, decoding stops as soon as the decoded track passes that length (a header
    can claim less than the file holds) and the file is refused, so memory never holds more.
    """
    path = Path(path)
    with _open(path) as container:
        if not container.streams.audio:
            raise InputError(
                f"{path.name} has no audio track, so speech cannot be analysed. "
                "Upload a video with sound (or add the audio track back when exporting)."
            )
        stream = container.streams.audio[0]
        limit = None if max_duration_s is None else int((max_duration_s + _DECODE_SLACK_S) * sr)
        header_s = container.duration / av.time_base if container.duration else 0.0
        capacity = int((min(header_s, _MAX_PREALLOCATED_S) + _DECODE_SLACK_S) * sr)
        samples = _Samples(capacity, limit)
        # Keep the channels and average them here: FFmpeg's own downmix adds them at -3 dB each,
        # which makes identical channels 3 dB louder than either.
        resampler = av.AudioResampler(format="fltp", rate=sr)
        lead: int | None = None  # silence before the first frame, so that sample 0 is time 0
        try:
            for frame in container.decode(stream):
                if lead is None and frame.time is not None:
                    lead = int(round(max(0.0, frame.time) * sr))
                    samples.extend(lead)
                for chunk in resampler.resample(frame):
                    samples.extend(chunk.to_ndarray().mean(axis=0))
            for chunk in resampler.resample(None):
                samples.extend(chunk.to_ndarray().mean(axis=0))
        except _OverLimit:
            how_long = f"holds more than {_clock(max_duration_s)} of sound"
            raise _too_long(path, how_long, max_duration_s) from None
        except (av.FFmpegError, ValueError) as e:  # ValueError: the channel layout changed mid-track
            raise InputError(
                f"The audio track of {path.name} could not be decoded ({e}). Re-export the video."
            ) from e
    if samples.size == (lead or 0):
        raise InputError(f"The audio track of {path.name} holds no decodable sound. Re-export the video.")
    return samples.signal()


def audio_span(audio: np.ndarray, sr: int, start: float, end: float) -> np.ndarray:
    """The samples between `start` and `end` seconds, clamped to the signal."""
    if end < start:
        raise InputError(f"Turn ends ({end:.2f} s) before it starts ({start:.2f} s). Fix the turn times.")
    n = len(audio)
    a = min(n, max(0, int(round(start * sr))))
    b = min(n, max(a, int(round(end * sr))))
    return audio[a:b]


def read_frames(path: str | Path, times: Sequence[float]) -> list[np.ndarray]:
    """RGB uint8 frames shown at each time (seconds); times past the end give the last frame.

    Frames are matched by their presentation time, so variable frame rate is handled. The file is
    decoded forward once in time order, seeking only across gaps longer than a keyframe interval.
    """
    path = Path(path)
    if not times:
        return []
    order = sorted(range(len(times)), key=lambda i: times[i])
    out: list[np.ndarray | None] = [None] * len(times)
    with _open(path) as container:
        if not container.streams.video:
            raise InputError(
                f"{path.name} has no video stream. Upload a video in which the faces are visible."
            )
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = _FrameCursor(container, stream)
        for i in order:
            out[i] = frames.at(float(times[i]))
    if any(frame is None for frame in out):
        raise InputError(
            f"No frame of {path.name} could be decoded. The file is truncated or corrupt; re-export it."
        )
    return out  # type: ignore[return-value]


class _FrameCursor:
    """Walks a video stream forward, answering 'which frame is shown at time t' for rising t."""

    def __init__(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream):
        self.container, self.stream = container, stream
        self.frames = container.decode(stream)
        self.shown: av.VideoFrame | None = None  # latest decoded frame at or before the last query
        self.ahead: av.VideoFrame | None = None  # first decoded frame after the last query
        self.ended = False
        self.last_key: float | None = None
        # Seeking lands on the keyframe before the target; it only saves work when the gap to the
        # target is longer than the keyframe interval, which is learnt while decoding.
        self.key_gap = _MIN_SEEK_GAP_S
        self.seek_target: float | None = None

    def _seek(self, t: float) -> None:
        try:
            self.container.seek(int(t / self.stream.time_base), stream=self.stream, backward=True)
        except av.FFmpegError:
            self.key_gap = float("inf")  # not seekable: decode forward from here on
            return
        self.frames = self.container.decode(self.stream)
        self.shown, self.ahead, self.ended, self.last_key = None, None, False, None
        self.seek_target = t

    def _next(self) -> av.VideoFrame | None:
        try:
            frame = next(self.frames)
        except (StopIteration, av.FFmpegError):
            self.ended = True
            return None
        if frame.time is not None:
            if self.seek_target is not None:
                self.key_gap = max(self.key_gap, self.seek_target - frame.time)
                self.seek_target = None
            if frame.key_frame:
                if self.last_key is not None:
                    self.key_gap = max(self.key_gap, frame.time - self.last_key)
                self.last_key = frame.time
        return frame

    def _position(self) -> float:
        for frame in (self.ahead, self.shown):
            if frame is not None and frame.time is not None:
                return frame.time
        return 0.0

    def _needs_next(self, t: float) -> bool:
        return self.ahead is None or self.ahead.time is None or self.ahead.time <= t + _TIME_EPS

    def at(self, t: float) -> np.ndarray | None:
        """The frame shown at time t; t must not decrease between calls."""
        if self._needs_next(t) and not self.ended and t - self._position() > self.key_gap:
            self._seek(t)
        while not self.ended and self._needs_next(t):
            if self.ahead is not None:
                self.shown = self.ahead
            self.ahead = self._next()
        frame = self.shown if self.shown is not None else self.ahead
        return None if frame is None else frame.to_ndarray(format="rgb24")
