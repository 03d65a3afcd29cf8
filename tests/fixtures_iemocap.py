"""A tiny corpus in the official IEMOCAP release layout, for loader and training tests.

Per dialogue: `utterances` evaluated utterances alternating F/M, of which every 4th (i % 4 == 3)
carries a class outside the 6-class protocol (xxx, oth, sur, fea, dis), so
`utterances - utterances // 4` survive loading; plus one unevaluated `_MXX0` line and one
non-utterance line that the loader must skip.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import soundfile as sf

from backend.labels import IEMOCAP_CODES

DROPPED_CODES = ("xxx", "oth", "sur", "fea", "dis")
SAMPLE_RATE = 16_000
_SENTENCES = (
    "Excuse me.", "Do you have your forms?", "Yeah.", "Let me see them.", "Is there a problem?",
    "Who told you to get in this line?", "You did.", "I'm sorry, I can't help you.",
    "Oh, that's wonderful news!", "I waited for three hours.", "Okay, fine.", "Why not?",
)
_ANNOTATOR_WORDS = {"hap": "Happiness", "sad": "Sadness", "neu": "Neutral state", "ang": "Anger",
                    "exc": "Excited", "fru": "Frustration", "xxx": "Other", "oth": "Other",
                    "sur": "Surprise", "fea": "Fear", "dis": "Disgust"}


def kept_per_dialogue(utterances: int) -> int:
    """How many utterances of each fixture dialogue the 6-class loader keeps."""
    return utterances - utterances // 4


def _dialogue_lines(stem: str, utterances: int, rng: random.Random) -> tuple[list[str], list[str], list[str]]:
    """(transcription lines, evaluation lines, utterance ids) of one dialogue."""
    transcript, evaluation, ids = [], ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""], []
    for i in range(utterances):
        utterance_id = f"{stem}_{'FM'[i % 2]}{i // 2:03d}"
        start, end = 1.0 + 2.5 * i, 3.0 + 2.5 * i
        code = rng.choice(DROPPED_CODES) if i % 4 == 3 else rng.choice(sorted(IEMOCAP_CODES))
        valence, activation = rng.uniform(1, 5), rng.uniform(1, 5)
        transcript.append(f"{utterance_id} [{start:08.4f}-{end:08.4f}]: {rng.choice(_SENTENCES)}")
        evaluation += [
            f"[{start:.4f} - {end:.4f}]\t{utterance_id}\t{code}\t[{valence:.4f}, {activation:.4f}, 2.5000]",
            f"C-E1:\t{_ANNOTATOR_WORDS[code]};\t()",
            f"A-E1:\tval {round(valence)}; act {round(activation)}; dom  2;\t()",
            "",
        ]
        ids.append(utterance_id)
        if i == 1:
            transcript.append("M: [BREATHING]")
            start = end + 0.1
            transcript.append(f"{stem}_MXX0 [{start:08.4f}-{start + 0.4:08.4f}]: [LAUGHTER]")
            ids.append(f"{stem}_MXX0")
    return transcript, evaluation, ids


def _write_wav(path: Path, rng: random.Random) -> None:
    t = np.arange(int(0.25 * SAMPLE_RATE)) / SAMPLE_RATE
    tone = 0.1 * np.sin(2 * np.pi * rng.uniform(120, 300) * t)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")


def make_iemocap_fixture(
    root: str | Path,
    sessions: int = 5,
    dialogues_per_session: int = 2,
    utterances: int = 8,
    with_wav: bool = False,
    seed: int = 0,
) -> Path:
    """Write Session1..N in the IEMOCAP layout under `root` and return `root`."""
    root = Path(root)
    rng = random.Random(seed)
    for session in range(1, sessions + 1):
        dialog = root / f"Session{session}" / "dialog"
        (dialog / "transcriptions").mkdir(parents=True, exist_ok=True)
        (dialog / "EmoEvaluation").mkdir(parents=True, exist_ok=True)
        for d in range(dialogues_per_session):
            stem = f"Ses{session:02d}{'FM'[d % 2]}_impro{d // 2 + 1:02d}"
            transcript, evaluation, ids = _dialogue_lines(stem, utterances, rng)
            (dialog / "transcriptions" / f"{stem}.txt").write_text("\n".join(transcript) + "\n")
            (dialog / "EmoEvaluation" / f"{stem}.txt").write_text("\n".join(evaluation) + "\n")
            if with_wav:
                for utterance_id in ids:
                    wav_dir = root / f"Session{session}" / "sentences" / "wav" / stem
                    _write_wav(wav_dir / f"{utterance_id}.wav", rng)
    return root
