"""Who speaks when, for turns found by speech recognition: the speaking face of each stretch of speech
names the speaker, and a change of speaking face splits a turn even where the pause is too short to.

A pause alone cannot tell a quick reply (0.25-0.4 s between speakers) from the pause between two
sentences of one speaker (~0.4 s), so words are first cut into short segments at every gap of
SEGMENT_PAUSE_S, the speaking face of each segment is found, and turns are then formed wherever two
neighbouring segments have different, clearly seen speakers. One clearly seen speaker's segments stay
one turn across pauses shorter than SAME_SPEAKER_PAUSE_S (a comma or a breath); where the speaker of
either side is doubtful, the usual pause rule of speech recognition alone (TURN_PAUSE_S) applies.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from backend.asr import TURN_PAUSE_S, Word, words_to_turns
from backend.dialogue import Turn
from backend.faces import FaceResult, attribute_speakers, cluster_speakers

SAME_SPEAKER_PAUSE_S = 1.0
SEGMENT_PAUSE_S = 0.12  # the VAD closes a 0.25 s gap between two speakers to ~0.19 s
UNKNOWN_SPEAKER = "SPEAKER_?"  # a turn with no visible face


@dataclass
class SpeakerTurns:
    turns: list[Turn]
    faces: list[FaceResult]  # the speaking face of each turn
    uncertain: list[int]  # turns whose speaker is doubtful


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def speaker_turns(
    video: Path,
    words: Sequence[Word],
    regions: Sequence[tuple[float, float]],
    activity: tuple[np.ndarray, float] | None,
) -> SpeakerTurns:
    """Turns of `words` with speakers SPEAKER_1..n from the faces that speak them (see the module)."""
    segments = words_to_turns(words, regions, pause_s=SEGMENT_PAUSE_S)
    seg_faces = attribute_speakers(video, [(s.start, s.end) for s in segments], activity)
    seg_speakers = cluster_speakers(seg_faces)
    doubtful = set(seg_speakers.uncertain)
    boundaries = []
    for i, (a, b) in enumerate(zip(segments, segments[1:])):
        doubtful_pair = i in doubtful or i + 1 in doubtful
        changed = seg_speakers.labels[i] != seg_speakers.labels[i + 1]
        if (changed and not doubtful_pair) or (doubtful_pair and b.start - a.end >= TURN_PAUSE_S):
            boundaries.append((a.end + b.start) / 2)
    turns = words_to_turns(words, regions, boundaries, pause_s=SAME_SPEAKER_PAUSE_S)
    named, faces, uncertain = [], [], []
    for t, turn in enumerate(turns):
        inside = [i for i, s in enumerate(segments) if _overlap((s.start, s.end), (turn.start, turn.end)) > 0]
        seen = Counter(seg_speakers.labels[i] for i in inside if seg_speakers.labels[i] is not None)
        if not seen:
            named.append(replace(turn, speaker=UNKNOWN_SPEAKER))
            faces.append(seg_faces[inside[0]] if inside else FaceResult(found=False, uncertain="no face visible"))
            uncertain.append(t)
            continue
        speaker, votes = seen.most_common(1)[0]
        # the turn's face: its clearest segment of the winning speaker
        best = max((i for i in inside if seg_speakers.labels[i] == speaker), key=lambda i: seg_faces[i].confidence)
        named.append(replace(turn, speaker=speaker))
        faces.append(seg_faces[best])
        if votes < sum(seen.values()) or all(i in doubtful for i in inside):
            uncertain.append(t)
    return SpeakerTurns(named, faces, uncertain)
