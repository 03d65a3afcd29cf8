import hashlib
import re
import struct
import tracemalloc
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from backend.errors import InputError
from backend.media import audio_span, load_audio, probe, read_frames, sha256_file
from backend.synthetic_media import (
    frame_code,
    make_dialogue_video,
    make_silent_video,
    make_vfr_video,
    write_garbled_copy,
    write_truncated_copy,
)

TURNS = [(0.4, 1.6), (2.0, 3.2), (3.6, 4.6), (5.0, 5.8)]
DURATION = 6.5
SR = 16000


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return make_dialogue_video(tmp_path_factory.mktemp("media") / "dialogue.mp4", TURNS, duration_s=DURATION)


@pytest.fixture(scope="module")
def audio(video):
    return load_audio(video, SR)


def _all_frames(path):
    with av.open(str(path)) as container:
        return [(f.time, f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]


def test_sha256_matches_hashlib(video):
    assert sha256_file(video, chunk_bytes=4096) == hashlib.sha256(video.read_bytes()).hexdigest()


def test_probe_describes_the_video(video):
    info = probe(video)
    assert info.path == video
    assert info.duration_s == pytest.approx(DURATION, abs=0.1)
    assert info.fps == pytest.approx(25)
    assert (info.width, info.height) == (640, 360)
    assert info.has_audio and info.has_video


def test_probe_without_audio(tmp_path):
    info = probe(make_silent_video(tmp_path / "silent.mp4", duration_s=1.0))
    assert not info.has_audio and info.has_video
    assert info.duration_s == pytest.approx(1.0, abs=0.1)


def test_load_audio_covers_the_track_at_the_requested_rate(video, audio):
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) / SR == pytest.approx(DURATION, abs=0.1)
    assert np.abs(audio).max() <= 1.0
    assert len(load_audio(video, 8000)) / 8000 == pytest.approx(DURATION, abs=0.1)


def test_audio_is_aligned_with_the_turns(audio):
    def rms(x):
        return float(np.sqrt(np.mean(x**2)))

    for (start, end), (next_start, _) in zip(TURNS, TURNS[1:]):
        speech = rms(audio_span(audio, SR, start + 0.05, end - 0.05))
        pause = rms(audio_span(audio, SR, end + 0.05, next_start - 0.05))
        assert speech > 20 * pause


def test_load_audio_mixes_down_and_resamples(tmp_path):
    t = np.arange(44100) / 44100
    stereo = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 440 * t)], axis=1)
    wav = tmp_path / "a440.wav"
    sf.write(wav, stereo.astype(np.float32), 44100)
    audio = load_audio(wav, SR)
    assert len(audio) == pytest.approx(SR, abs=32)
    spectrum = np.abs(np.fft.rfft(audio))
    assert np.argmax(spectrum) * SR / len(audio) == pytest.approx(440, abs=2)
    assert np.sqrt(np.mean(audio**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)


def test_audio_span_clamps_to_the_signal():
    audio = np.arange(100, dtype=np.float32)
    assert audio_span(audio, 10, 2.0, 3.0).tolist() == list(range(20, 30))
    assert audio_span(audio, 10, -5.0, 0.5).tolist() == list(range(0, 5))
    assert audio_span(audio, 10, 9.5, 50.0).tolist() == list(range(95, 100))
    assert audio_span(audio, 10, 20.0, 30.0).size == 0
    with pytest.raises(InputError, match="before it starts"):
        audio_span(audio, 10, 3.0, 2.0)


def test_read_frames_matches_a_full_decode(video):
    reference = _all_frames(video)

    def shown_at(t):
        earlier = [frame for time, frame in reference if time <= t + 1e-4]
        return earlier[-1] if earlier else reference[0][1]

    # Unsorted, repeated, a gap long enough to seek, and before the first frame.
    times = [4.33, 0.0, 0.51, 0.5, 5.9, 4.33, 2.0, -1.0, 0.02]
    frames = read_frames(video, times)
    assert len(frames) == len(times)
    for t, frame in zip(times, frames):
        assert frame.shape == (360, 640, 3) and frame.dtype == np.uint8
        np.testing.assert_array_equal(frame, shown_at(t))


def test_read_frames_past_the_end_gives_the_last_frame(video):
    last = _all_frames(video)[-1][1]
    for frame in read_frames(video, [DURATION + 0.5, 1e6]):
        np.testing.assert_array_equal(frame, last)
    assert read_frames(video, []) == []


def test_read_frames_follows_variable_frame_rate(tmp_path):
    pts = [0.0, 0.04, 0.3, 0.35, 1.2, 1.21, 2.0]
    path = make_vfr_video(tmp_path / "vfr.mp4", pts)
    queries = {0.0: 0, 0.03: 0, 0.04: 1, 0.29: 1, 0.3: 2, 0.34: 2, 0.36: 3, 1.19: 3, 1.2: 4, 1.205: 4,
               1.21: 5, 1.99: 5, 2.0: 6, 9.0: 6}
    frames = read_frames(path, list(queries))
    for (t, index), frame in zip(queries.items(), frames):
        assert abs(frame.mean() - frame_code(index)) < 4, f"t={t}: expected frame {index}"


def _assert_input_error(call, *fragments):
    with pytest.raises(InputError) as excinfo:
        call()
    message = str(excinfo.value)
    for fragment in fragments:
        assert fragment in message, message


def test_missing_and_empty_files(tmp_path):
    _assert_input_error(lambda: probe(tmp_path / "nope.mp4"), "not found", "nope.mp4")
    empty = tmp_path / "empty.mp4"
    empty.touch()
    _assert_input_error(lambda: probe(empty), "empty.mp4", "0 bytes", "upload it again")
    _assert_input_error(lambda: load_audio(empty), "0 bytes")


def test_not_a_media_file(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("these are meeting notes, not a video\n" * 20)
    _assert_input_error(
        lambda: probe(text), "notes.mp4", "not a readable media file", "Upload a complete video"
    )


def test_truncated_upload(video, tmp_path):
    cut = write_truncated_copy(video, tmp_path / "cut.mp4", keep_fraction=0.5)
    _assert_input_error(lambda: probe(cut), "cut.mp4", "truncated")


def test_undecodable_video_data(video, tmp_path):
    garbled = write_garbled_copy(video, tmp_path / "garbled.mp4")
    _assert_input_error(lambda: probe(garbled), "garbled.mp4", "no frame could be decoded")
    _assert_input_error(lambda: read_frames(garbled, [0.5]), "garbled.mp4", "could be decoded")


def test_audio_only_file_is_not_a_video(tmp_path):
    wav = tmp_path / "speech.wav"
    sf.write(wav, np.zeros(SR, np.float32), SR)
    _assert_input_error(lambda: probe(wav), "speech.wav", "no video stream")
    assert len(load_audio(wav)) == SR


def test_load_audio_needs_an_audio_track(tmp_path):
    silent = make_silent_video(tmp_path / "silent.mp4", duration_s=0.5)
    _assert_input_error(lambda: load_audio(silent), "silent.mp4", "no audio track")


def test_size_limit(video):
    _assert_input_error(
        lambda: probe(video, max_bytes=10_000), "dialogue.mp4", "0.01 MB upload limit", "Compress"
    )
    assert probe(video, max_bytes=video.stat().st_size).width == 640


def test_duration_limit(video):
    _assert_input_error(
        lambda: probe(video, max_duration_s=3.0), "over the 3 s limit", "Trim the video to under 3 s"
    )
    assert probe(video, max_duration_s=600).duration_s < 600


def lying_video(path: Path, video_s: float, audio_s: float, claimed_s: float, sr: int = SR) -> Path:
    """A small MP4 whose headers (mvhd, tkhd, mdhd) claim `claimed_s` but whose audio track holds
    `audio_s` of sound: what a duration check that trusts the container sees through."""
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("aac", rate=sr)
        audio.layout = "mono"
        grey = np.full((48, 64, 3), 128, np.uint8)
        for i in range(int(video_s * 10)):
            frame = av.VideoFrame.from_ndarray(grey, format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        for start in range(0, int(audio_s * sr), 1024):
            tone = (0.1 * np.sin(np.arange(start, start + 1024) / 10)).astype(np.float32)[None]
            frame = av.AudioFrame.from_ndarray(tone, format="flt", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = sr, start, Fraction(1, sr)
            container.mux(audio.encode(frame))
        container.mux(audio.encode(None))
    data = bytearray(path.read_bytes())
    movie_timescale = 0
    for name in (b"mvhd", b"tkhd", b"mdhd"):  # mvhd first: tkhd durations are in its timescale
        for box in re.finditer(name, data):
            at = box.start() + 4  # the version byte
            wide = data[at] == 1  # version 1 boxes hold 64-bit times and durations
            after_times = at + 4 + (16 if wide else 8)  # past version, flags and two timestamps
            if name == b"tkhd":  # track id, a reserved word, then the duration
                timescale, duration_at = movie_timescale, after_times + 8
            else:  # the timescale, then the duration
                timescale, duration_at = struct.unpack_from(">I", data, after_times)[0], after_times + 4
                movie_timescale = movie_timescale or timescale
            struct.pack_into(">Q" if wide else ">I", data, duration_at, int(claimed_s * timescale))
    path.write_bytes(bytes(data))
    return path


def test_duration_limit_holds_for_what_is_decoded_not_what_the_header_says(tmp_path):
    lying = lying_video(tmp_path / "lying.mp4", video_s=2.0, audio_s=30.0, claimed_s=2.0)
    assert probe(lying, max_duration_s=5).duration_s == pytest.approx(2.0), "the header claims 2 s"
    assert len(load_audio(lying, SR)) / SR == pytest.approx(30.0, abs=0.1), "the track holds 30 s"
    tracemalloc.start()
    try:
        _assert_input_error(
            lambda: load_audio(lying, SR, max_duration_s=5),
            "lying.mp4 holds more than 5 s of sound, over the 5 s limit",
            "Trim the video to under 5 s",
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    limit_bytes = (5 + 1) * SR * 4  # the limit plus its one second of slack, as float32
    assert peak < 2 * limit_bytes, f"decoding stops at the limit; {peak} bytes were held"


def test_a_track_within_the_limit_is_decoded_whole(video):
    assert len(load_audio(video, SR, max_duration_s=DURATION)) / SR == pytest.approx(DURATION, abs=0.1)


def test_load_audio_writes_the_track_in_place(video):
    load_audio(video, SR)  # codecs and caches warmed up outside the measurement
    tracemalloc.start()
    try:
        audio = load_audio(video, SR)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * audio.nbytes, "no list of chunks, joined copy or clipped copy beside the track"
