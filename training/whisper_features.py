"""Pooled Whisper features of a corpus's speech, packed per recording and cached.

A *recording* is what the app packs together: a dialogue's turns that have audio, in order. A
corpus of single clips (RAVDESS: one clip per dialogue) has no dialogues, so each speaker's clips
are shuffled (seeded) into pseudo-dialogues of 2-12 clips, the turn counts of a short scene.
The clips are read with backend.media.load_audio, the app's decoder, optionally degraded by one
channel `Chain` per recording (training/speech_augment.py), and go through
backend.speech_encoder.pooled_states exactly as a dialogue does at serving time. The normalisation
group of a clip is (recording, speaker), as the app groups a dialogue's turns by speaker.

Vectors are cached per clip, keyed by the file, the recording it was packed in and the channel.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from backend.dialogue import Dialogue
from backend.media import load_audio
from backend.speech_encoder import FEATURE_VERSION, SR, WhisperStates, pooled_states
from training.embedding_cache import EmbeddingCache, file_key
from backend.settings import get_settings
from backend.speech_encoder import load_whisper_states
from training.speech_augment import CLEAN, TEST_CONDITIONS, Chain, degrade, random_chain

PSEUDO_DIALOGUE_TURNS = (2, 12)
CACHE_ID = "whisper-pooled"


@dataclass(frozen=True)
class Recording:
    """Clips packed together and degraded by one channel: (dialogue id, turn index) in packing order."""

    id: str
    turns: tuple[tuple[str, int], ...]
    speakers: tuple[str, ...]
    paths: tuple[Path, ...]


def recordings(dialogues: Sequence[Dialogue], seed: int = 0) -> list[Recording]:
    """Each dialogue's turns with audio; for single-clip dialogues, seeded pseudo-dialogues per speaker."""
    clips = [(d, i, t) for d in dialogues for i, t in enumerate(d.turns) if t.audio is not None]
    if all(len(d.turns) == 1 for d in dialogues):
        by_speaker: dict[str, list] = {}
        for clip in clips:
            by_speaker.setdefault(clip[2].speaker, []).append(clip)
        rng = np.random.default_rng(seed)
        groups = []
        for speaker in sorted(by_speaker):
            items = by_speaker[speaker]
            order = rng.permutation(len(items))
            start = 0
            while start < len(items):
                size = int(rng.integers(PSEUDO_DIALOGUE_TURNS[0], PSEUDO_DIALOGUE_TURNS[1] + 1))
                groups.append([items[j] for j in order[start : start + size]])
                start += size
    else:
        groups = [[c for c in clips if c[0] is d] for d in dialogues]
    out = []
    for group in groups:
        if not group:
            continue
        turns = tuple((d.id, i) for d, i, _ in group)
        key = hashlib.sha256(repr(turns).encode()).hexdigest()[:16]
        out.append(Recording(key, turns, tuple(t.speaker for _, _, t in group), tuple(Path(t.audio) for _, _, t in group)))
    return out


def seed_of(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest()[:8], "little")


def recording_features(encoder: WhisperStates, recording: Recording, chain: Chain = CLEAN) -> np.ndarray:
    """[clips, 1024]: pooled Whisper states of the recording's clips after `chain`."""
    clips = [load_audio(path, sr=SR) for path in recording.paths]
    if chain != CLEAN:
        rng = np.random.default_rng(seed_of(recording.id, chain.name))
        clips = [degrade(c, chain, rng) for c in clips]
    return pooled_states(encoder, clips)


@dataclass
class CorpusFeatures:
    """Per-clip features of some recordings, with their labels' turns and normalisation groups."""

    vectors: np.ndarray  # [N, 1024]
    turns: list[tuple[str, int]]  # (dialogue id, turn index) of each row
    groups: np.ndarray  # [N] int: rows of one (recording, speaker) share an id


def corpus_features(
    encoder_fn: Callable[[], WhisperStates],
    dialogues: Sequence[Dialogue],
    cache_root: Path,
    chains: Callable[[Recording], Chain] = lambda r: CLEAN,
    seed: int = 0,
    desc: str = "whisper features",
) -> CorpusFeatures:
    """Features of every clip in `dialogues` (`chains` picks each recording's channel), via the cache.

    `encoder_fn` is called only when some recording is not cached yet.
    """
    cache = EmbeddingCache(cache_root, CACHE_ID, FEATURE_VERSION)
    vectors, turns, groups, group_ids = [], [], [], {}
    pending: dict[str, np.ndarray] = {}
    encoder = None
    for recording in tqdm(recordings(dialogues, seed), desc=desc):
        chain = chains(recording)
        keys = [
            hashlib.sha256(f"{file_key(p)}\0{recording.id}\0{chain.name}".encode()).hexdigest()
            for p in recording.paths
        ]
        found = cache.get_many(keys)
        if len(found) < len(keys):
            encoder = encoder or encoder_fn()
            fresh = recording_features(encoder, recording, chain)
            found = dict(zip(keys, fresh))
            pending.update(found)
            if len(pending) >= 512:
                cache.put_many(pending)
                pending = {}
        vectors += [found[k] for k in keys]
        turns += list(recording.turns)
        groups += [group_ids.setdefault((recording.id, s), len(group_ids)) for s in recording.speakers]
    cache.put_many(pending)
    dim = vectors[0].shape[0] if vectors else 0
    return CorpusFeatures(np.stack(vectors) if vectors else np.zeros((0, dim), np.float32), turns, np.array(groups, dtype=np.int64))


def packaged_states() -> WhisperStates:
    return load_whisper_states(get_settings().model_cache_dir)


def clean_features(
    dialogues: Sequence[Dialogue], cache_root: Path, encoder_fn: Callable[[], WhisperStates] = packaged_states
) -> CorpusFeatures:
    return corpus_features(encoder_fn, dialogues, cache_root, desc="speech features")


def augmented_features(
    dialogues: Sequence[Dialogue], cache_root: Path, copy: int,
    encoder_fn: Callable[[], WhisperStates] = packaged_states,
) -> CorpusFeatures:
    """Degraded copy `copy` (1, 2, ...): other pseudo-dialogues, each through its own random channel."""
    return corpus_features(
        encoder_fn, dialogues, cache_root,
        chains=lambda r: random_chain(np.random.default_rng(seed_of(r.id, f"copy{copy}"))),
        seed=copy, desc=f"augmented copy {copy}",
    )


def condition_features(
    dialogues: Sequence[Dialogue], cache_root: Path, condition: str,
    encoder_fn: Callable[[], WhisperStates] = packaged_states,
) -> CorpusFeatures:
    """The clips through one fixed degradation of TEST_CONDITIONS ("clean" for none)."""
    if condition == "clean":
        return clean_features(dialogues, cache_root, encoder_fn)
    chain = TEST_CONDITIONS[condition]
    return corpus_features(encoder_fn, dialogues, cache_root, chains=lambda r: chain, desc=condition)
