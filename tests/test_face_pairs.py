"""Faces beside text on purpose: the corpus CSV's `face` column and FARCER's paired-face evaluation
views (neutral, random, and the label-leaking `matched` pipeline check), on tiny generated fixtures."""
from __future__ import annotations

import argparse
import csv
import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from backend.checkpoints import read_checkpoint, write_checkpoint
from backend.dialogue import Dialogue, LabelledImage, Turn
from backend.errors import InputError
from backend.labels import MELD7
from backend.settings import get_settings
from tests.test_farcer_training import train_tiny, write_faces
from training import farcer as farcer_training
from training.__main__ import main
from training.corpora.generic_csv import load_corpus_csv, write_corpus_csv
from training.corpora.image_folder import load_image_folder
from training.farcer import EvaluationFaces, evaluation_faces, face_pool, turn_faces
from training.metrics import REPORT_KEYS
from training.pseudo_pairs import NEUTRAL_LINES, PAIRED_VIEWS, PIPELINE_CHECKS, neutral_line_dialogues, pair_images

LABELS = [["joy", "anger", None, "sadness"], ["fear", "surprise", "disgust", "neutral", "joy"]]
IMAGES = ["neutral"] * 3 + ["joy"] * 2 + ["anger", "sadness", "fear", "surprise", "disgust"]


# ----------------------------------------------------------------------------- pairing logic


def draws(view: str, seed: int = 0) -> list[list[int | None]]:
    return pair_images(LABELS, IMAGES, np.random.default_rng(seed), PAIRED_VIEWS[view])


def test_pairs_are_seeded():
    assert draws("random", 3) == draws("random", 3)
    assert any(draws("random", s) != draws("random", 0) for s in range(1, 5))


def test_neutral_view_shows_every_labelled_turn_a_neutral_face():
    for row, labels in zip(draws("neutral"), LABELS):
        for index, label in zip(row, labels):
            assert (index is None) == (label is None)
            assert index is None or IMAGES[index] == "neutral"


def test_matched_view_leaks_the_label_and_is_marked_a_pipeline_check():
    for row, labels in zip(draws("matched"), LABELS):
        assert [None if i is None else IMAGES[i] for i in row] == labels
    assert PIPELINE_CHECKS == {"matched"}
    assert "neutral" not in PIPELINE_CHECKS and "random" not in PIPELINE_CHECKS


def test_random_view_draws_emotions_unrelated_to_the_label():
    """Over many turns of one label, the random view's faces cover the classes about evenly."""
    labels = [["joy"] * 700]
    (row,) = pair_images(labels, IMAGES, np.random.default_rng(0), PAIRED_VIEWS["random"])
    counts = Counter(IMAGES[i] for i in row)
    assert set(counts) == set(IMAGES)
    assert max(counts.values()) < 2 * min(counts.values())  # 100 expected per class
    assert counts["joy"] < 200, "a random face is not the turn's own emotion more often than chance"


def test_a_class_without_images_gives_no_face():
    (row,) = pair_images([["joy", "fear"]], ["joy"], np.random.default_rng(0), PAIRED_VIEWS["matched"])
    assert row[0] == 0 and row[1] is None
    (row,) = pair_images([["joy"]], ["joy"], np.random.default_rng(0), PAIRED_VIEWS["neutral"])
    assert row == [None]


def eval_args(tmp: Path, **kw) -> argparse.Namespace:
    base = dict(paired_faces=None, neutral_lines=0, choose_face_weight=False, face_corpus=None, face_data=None, faces=None, split="test", seed=0,
                corpus="csv")
    return argparse.Namespace(**{**base, **kw})


def test_paired_views_draw_only_the_evaluated_splits_faces(tmp_path, monkeypatch):
    """Test turns get FER test faces only (the face encoder trained on FER train), validation turns val."""
    faces = write_faces(tmp_path / "fer", per_class=3)
    seen: list[Path] = []

    def features(paths, encoder):
        seen.extend(paths)
        return np.zeros((len(paths), 4), np.float32)

    monkeypatch.setattr(farcer_training, "face_features", features)
    dialogues = [Dialogue("d", [Turn("A", None, None, "hi", label) for label in MELD7])]
    for split, folder in (("test", "test"), ("validation", "val")):
        for view in PAIRED_VIEWS:
            seen.clear()
            args = eval_args(tmp_path, paired_faces=view, face_corpus="fer2013", face_data=faces, split=split)
            chosen = turn_faces(dialogues, evaluation_faces(args, dialogues, True), args, MELD7, None)
            assert all(v is not None for v in chosen[0]) and seen
            assert {p.parent.parent.name for p in seen} == {folder}
            if view == "neutral":
                assert {p.parent.name for p in seen} == {"neutral"}


def test_farcer_face_pools_share_no_face_and_skip_the_face_encoders_training_faces(tmp_path):
    """The face encoder trained on FER train: FARCER trains on half of val, validates on the other half."""
    faces = write_faces(tmp_path / "fer", per_class=4)
    pools = {name: {i.path for i in face_pool(faces, MELD7, name)} for name in ("train", "validation", "test")}
    val = {i.path for i in load_image_folder(faces, MELD7, split="val").images}
    assert pools["train"] | pools["validation"] == val and not pools["train"] & pools["validation"]
    assert {p.parent.parent.name for p in pools["test"]} == {"test"} and len(pools["test"]) == 28
    assert all(len({p.parent.name for p in pool}) == 7 for pool in pools.values()), "every emotion on each side"


def test_neutral_line_dialogues_take_their_labels_from_the_faces():
    images = [LabelledImage(Path(f"{label}/{i}.png"), label) for label in MELD7 for i in range(3)]
    dialogues = neutral_line_dialogues(images, 5, "validation", np.random.default_rng(0))
    assert len(dialogues) == 5 and all(len(d) == 6 for d in dialogues)
    label_of = {image.path: image.label for image in images}
    for turn in (t for d in dialogues for t in d.turns):
        assert turn.text in NEUTRAL_LINES["validation"] and turn.label == label_of[turn.face]
    assert len({t.label for d in dialogues for t in d.turns}) > 3, "faces are drawn at random"
    splits = list(NEUTRAL_LINES.values())
    assert all(not set(a) & set(b) for i, a in enumerate(splits) for b in splits[i + 1:]), "no line in two splits"


def test_evaluation_faces_say_what_they_are_and_whether_the_model_reads_them(tmp_path):
    dialogues = [Dialogue("d", [Turn("A", None, None, "hi", "joy")])]
    neutral = evaluation_faces(eval_args(tmp_path, paired_faces="neutral", face_corpus="fer2013",
                                         face_data=tmp_path), dialogues, True).report()
    assert neutral["paired_faces"] == "neutral" and neutral["faces_used"] is True
    assert neutral["pipeline_check"] is False and neutral["faces_note"] is None
    matched = evaluation_faces(eval_args(tmp_path, paired_faces="matched", face_corpus="fer2013",
                                         face_data=tmp_path), dialogues, False)
    report = matched.report()
    assert report["pipeline_check"] is True and "pipeline check" in report["faces"]
    assert report["faces_used"] is False and "trained without faces" in report["faces_note"]
    label_matched = evaluation_faces(eval_args(tmp_path, faces=tmp_path), dialogues, True).report()
    assert label_matched["pipeline_check"] is True and label_matched["paired_faces"] is None
    assert evaluation_faces(eval_args(tmp_path), dialogues, True) == EvaluationFaces("none", "none (text only)", False)
    with pytest.raises(InputError, match="need --face-corpus and --face-data"):
        evaluation_faces(eval_args(tmp_path, paired_faces="random"), dialogues, True)
    with pytest.raises(InputError, match="go with --paired-faces"):
        evaluation_faces(eval_args(tmp_path, face_data=tmp_path), dialogues, True)


def test_paired_faces_from_the_real_fer2013_test_split(fer_dir):
    images = load_image_folder(fer_dir, MELD7, split="test").images
    chosen = pair_images([["joy", "anger", "fear"] * 20], [i.label for i in images], np.random.default_rng(0),
                         PAIRED_VIEWS["neutral"])
    paths = [images[i].path for i in chosen[0]]
    assert all(p.parent.name == "neutral" and p.parent.parent.name == "test" for p in paths)
    assert len(set(paths)) > 50, "faces are drawn at random, not one face for every turn"


# ----------------------------------------------------------------------------- the corpus CSV's face column


def write_face(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 256, (48, 48), dtype=np.uint8))
    return path


def write_face_csv(root: Path) -> Path:
    """Two test dialogues of three turns; every turn but the last of each has a face image."""
    rows = []
    for d in range(2):
        for t in range(3):
            face = f"faces/{d}_{t}.png" if t < 2 else ""
            if face:
                write_face(root / face, 10 * d + t)
            rows.append({"dialogue_id": f"d{d}", "turn": t, "speaker": "AB"[t % 2], "text": f"line {t} of {d}",
                         "label": MELD7[(d + t) % 7], "face": face, "split": "test"})
    rows.append({"dialogue_id": "t0", "turn": 0, "speaker": "A", "text": "a training line", "label": "joy",
                 "face": "", "split": "train"})
    path = root / "corpus.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_corpus_csv_reads_a_face_per_turn_relative_to_the_csv(tmp_path):
    path = write_face_csv(tmp_path / "corpus")
    d0 = load_corpus_csv(path)[0]
    assert [t.face for t in d0.turns] == [(tmp_path / "corpus" / "faces" / f"0_{t}.png").resolve() for t in (0, 1)] + [None]
    written = write_corpus_csv(tmp_path / "copy" / "c.csv", load_corpus_csv(path))
    assert "../corpus/faces/0_1.png" in written.read_text()
    assert [d.turns for d in load_corpus_csv(written)] == [d.turns for d in load_corpus_csv(path)]
    (tmp_path / "corpus" / "faces" / "1_0.png").unlink()
    with pytest.raises(InputError, match=r"face file 'faces/1_0.png' not found .* relative to the CSV's folder"):
        load_corpus_csv(path)


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """(a tiny head trained with faces, the same head marked as trained text only)."""
    tmp = tmp_path_factory.mktemp("heads")
    mp = pytest.MonkeyPatch()
    mp.setenv("ERC_DATA_DIR", str(tmp / "data"))
    get_settings.cache_clear()
    _, _, _, head = train_tiny(tmp)
    checkpoint = read_checkpoint(head)
    text_only = tmp / "text-only"
    text_only.mkdir()
    for path in head.iterdir():
        if path.name not in ("manifest.json", "MODEL_CARD.md"):
            (text_only / path.name).write_bytes(path.read_bytes())
    write_checkpoint(text_only, model="farcer", config=checkpoint.config, labels=checkpoint.labels,
                     components=checkpoint.components, data={**checkpoint.data, "faces": None},
                     metrics=checkpoint.metrics)
    yield head, text_only
    mp.undo()
    get_settings.cache_clear()


def evaluate_csv(head: Path, corpus: Path, out: Path, monkeypatch, extra: list[str] = ()) -> tuple[dict, list]:
    """The report of `evaluate farcer --corpus csv`, and the faces each labelled dialogue was shown."""
    shown = []
    label_split = farcer_training.label_split

    def spy(farcer, processor, data, *rest):
        shown.extend(data.faces)
        return label_split(farcer, processor, data, *rest)

    monkeypatch.setattr(farcer_training, "label_split", spy)
    assert main(["evaluate", "farcer", "--checkpoint", str(head), "--corpus", "csv", "--data", str(corpus),
                 "--split", "test", "--shots", "0", "--out", str(out), *extra]) == 0
    return json.loads(out.read_text()), shown


def test_evaluate_on_a_csv_shows_a_face_trained_head_the_turns_own_faces(heads, tmp_path, monkeypatch):
    head, _ = heads
    report, shown = evaluate_csv(head, write_face_csv(tmp_path / "corpus"), tmp_path / "r.json", monkeypatch)
    assert set(REPORT_KEYS) <= set(report) and report["n"] == 6
    assert report["faces_used"] is True and report["faces"] == "the csv corpus's own face column"
    assert report["pipeline_check"] is False and report["paired_faces"] is None
    assert [[f is not None for f in row] for row in shown] == [[True, True, False]] * 2
    assert all(f.shape == (256,) for row in shown for f in row if f is not None)
    assert not np.allclose(shown[0][0], shown[0][1]), "each turn is shown its own face"


def test_evaluate_on_a_csv_tells_when_the_head_cannot_read_faces(heads, tmp_path, monkeypatch, capsys):
    _, text_only = heads
    report, shown = evaluate_csv(text_only, write_face_csv(tmp_path / "corpus"), tmp_path / "r.json", monkeypatch)
    assert report["faces_used"] is False and "trained without faces" in report["faces_note"]
    assert report["faces"] == "the csv corpus's own face column" and report["n"] == 6
    assert all(f is None for row in shown for f in row)
    assert "notice: the model was trained without faces" in capsys.readouterr().out


def test_evaluate_paired_faces_views(heads, tmp_path, monkeypatch):
    head, text_only = heads
    corpus, faces = write_face_csv(tmp_path / "corpus"), write_faces(tmp_path / "fer")
    for view in PAIRED_VIEWS:
        args = ["--paired-faces", view, "--face-corpus", "fer2013", "--face-data", str(faces)]
        report, shown = evaluate_csv(head, corpus, tmp_path / f"{view}.json", monkeypatch, args)
        assert set(REPORT_KEYS) <= set(report) and report["n"] == 6
        assert report["paired_faces"] == view and report["faces_used"] is True
        assert report["pipeline_check"] is (view == "matched")
        assert all(f is not None for row in shown for f in row), "paired views replace the corpus's own faces"
        assert f"--paired-faces {view}" in report["command"]
    report, shown = evaluate_csv(text_only, corpus, tmp_path / "t.json", monkeypatch,
                                 ["--paired-faces", "neutral", "--face-corpus", "fer2013", "--face-data", str(faces)])
    assert report["faces_used"] is False and all(f is None for row in shown for f in row)
    with pytest.raises(SystemExit):  # argparse: --faces and --paired-faces exclude each other
        main(["evaluate", "farcer", "--checkpoint", str(head), "--corpus", "csv", "--data", str(corpus),
              "--faces", str(faces), "--paired-faces", "neutral", "--out", str(tmp_path / "x.json")])
