"""The `corpus` export: the generic corpus CSV with each labelled turn's clip and face crop, zipped,
labelled by the current-label policy, and readable by `--corpus csv`."""

from __future__ import annotations

import csv
import io
import json
import zipfile

import cv2
import numpy as np
import pytest
import soundfile as sf

from backend.current_label import POLICY
from backend.service import Service
from backend.settings import Settings
from training.corpora.generic_csv import load_corpus_csv


@pytest.fixture
def service(tmp_path):
    service = Service.open(Settings(data_dir=tmp_path / "data"))
    yield service
    service.close()


def test_corpus_export_is_a_zip_that_training_reads(service, models, dialogue, tmp_path):
    doc = service.analyze(*dialogue)
    first, second, third = (t["turn_id"] for t in doc["turns"])
    service.save_correction(first, "joy", "ann")
    service.save_correction(first, "anger", "bob")  # a tie: the most recent (bob's) wins
    service.save_correction(second, "sadness", "ann")
    service.save_correction(second, "sadness", "bob")
    service.save_correction(second, "fear", "cat")  # the majority wins

    path = service.export("corpus")
    assert path.suffix == ".zip" and path.parent == service.settings.served_dir.resolve() / "exports"
    with zipfile.ZipFile(path) as archive:
        archive.extractall(tmp_path / "export")
        rows = list(csv.DictReader(io.StringIO(archive.read("corpus.csv").decode())))
        summary = json.loads(archive.read("corrections.json"))

    assert [r["label"] for r in rows] == ["anger", "sadness"], "third turn is unlabelled: left out"
    assert rows[0]["annotators"] == "ann;bob" and rows[1]["annotators"] == "ann;bob;cat"
    assert summary["policy"] == POLICY and summary["turns"] == 2 and summary["annotators"] == ["ann", "bob", "cat"]
    assert summary["first"] <= summary["last"]
    clip, rate = sf.read(tmp_path / "export" / rows[0]["audio"])
    turn = doc["turns"][0]
    assert rate == 16_000 and abs(len(clip) / rate - (turn["end"] - turn["start"])) < 0.01
    assert np.abs(clip).max() > 0, "the clip holds the turn's sound"
    assert turn["face"]["found"], "the generated video shows the speaker's face"
    face = cv2.imread(str(tmp_path / "export" / rows[0]["face"]))
    assert face.shape[:2] == (turn["face"]["box"][3], turn["face"]["box"][2]), "the crop the models saw"

    dialogues = load_corpus_csv(tmp_path / "export" / "corpus.csv")
    assert len(dialogues) == 1 and dialogues[0].id == doc["media"]["sha256"][:12]
    assert [t.label for t in dialogues[0].turns] == ["anger", "sadness"]
    assert [t.text for t in dialogues[0].turns] == [doc["turns"][0]["text"], doc["turns"][1]["text"]]
    assert all(t.audio is not None and t.audio.is_file() for t in dialogues[0].turns)

    by_annotator = service.export("corpus", annotator="cat")
    with zipfile.ZipFile(by_annotator) as archive:
        only = list(csv.DictReader(io.StringIO(archive.read("corpus.csv").decode())))
    assert [r["label"] for r in only] == ["fear"], "a filtered export keeps its meaning"


def test_corpus_export_without_labels_says_what_to_do(service, models, dialogue):
    from backend.errors import InputError

    service.analyze(*dialogue)
    with pytest.raises(InputError, match="no labelled turns"):
        service.export("corpus")
