"""What the models saw of one analysed turn, cut again from the stored video: its face crop."""

from __future__ import annotations

import numpy as np

from backend.faces import turn_face
from backend.media import read_frames


def face_crop(doc: dict, index: int) -> np.ndarray | None:
    """The speaker's face crop (RGB) the models saw for a turn, or None when no face was found."""
    turn = doc["turns"][index]
    face = turn["face"]
    if not face["found"]:
        return None
    if face.get("time_s") is None:  # analyses stored before the frame time was recorded
        found = turn_face(doc["media"]["path"], turn["start"], turn["end"])
        return found.crop if found.found else None
    (frame,) = read_frames(doc["media"]["path"], [face["time_s"]])
    x, y, w, h = face["box"]
    return frame[y : y + h, x : x + w].copy()
