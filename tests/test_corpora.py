"""Corpus loaders on tiny generated fixtures, every bad input, and real-data counts when present."""
from __future__ import annotations

import collections
import csv
from pathlib import Path

import pytest

from backend.dialogue import Dialogue, Turn
from backend.errors import InputError
from backend.labels import IEMOCAP6, MELD7
from tests.fixtures_iemocap import DROPPED_CODES, kept_per_dialogue, make_iemocap_fixture
from training.corpora.generic_csv import load_corpus_csv, write_corpus_csv
from training.corpora.iemocap import load_iemocap
from training.corpora.meld import load_meld
from training.corpora.ravdess import load_ravdess
from training.corpora.registry import CORPORA, corpus_labels, load_corpus, split

MELD_HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
               "Season", "Episode", "StartTime", "EndTime"]


def _meld_row(n, text, speaker, emotion, dia, utt, start="00:00:01,000", end="00:00:02,500"):
    return [n, text, speaker, emotion, "neutral", dia, utt, 1, 1, start, end]


def _write_csv(path: Path, header: list[str], rows: list[list], encoding: str = "utf-8") -> Path:
    with path.open("w", encoding=encoding, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def meld_root(tmp_path) -> Path:
    _write_csv(tmp_path / "train_sent_emo.csv", MELD_HEADER, [
        _meld_row(1, "You\u00e2\u0080\u0099re late.", "Ross", "anger", 0, 2, "0:12:43,012", "00:12:44,5"),
        _meld_row(2, "I\u00c2\u0092m \u201cfine\u201d", "Rachel", "Joy", 0, 0),
        _meld_row(3, "Line one\nline two", "Joey", "neutral", 1, 0),
        _meld_row(4, "Wait\u2026", "Ross", "surprise", 0, 1),
    ])
    _write_csv(tmp_path / "dev_sent_emo.csv", MELD_HEADER, [
        _meld_row(1, "It\u2019s cp1252", "Monica", "sadness", 3, 0),
    ], encoding="cp1252")
    _write_csv(tmp_path / "test_sent_emo.csv", MELD_HEADER, [_meld_row(1, "Hi.", "Phoebe", "fear", 5, 0)])
    return tmp_path


def test_meld_groups_orders_and_cleans(meld_root):
    dialogues = load_meld(meld_root)
    assert [(d.id, d.split, len(d)) for d in dialogues] == [
        ("train/0", "train", 3), ("train/1", "train", 1),
        ("validation/3", "validation", 1), ("test/5", "test", 1)]
    assert all(d.corpus == "meld" for d in dialogues)
    first = dialogues[0].turns
    assert [t.text for t in first] == ['I\'m "fine"', "Wait\u2026", "You're late."]
    assert [t.label for t in first] == ["joy", "surprise", "anger"]
    assert first[2].start == pytest.approx(763.012) and first[2].end == pytest.approx(764.5)
    assert dialogues[1].turns[0].text == "Line one line two"
    assert dialogues[2].turns[0].text == "It's cp1252"
    assert all(t.audio is None and t.video is None for d in dialogues for t in d.turns)


def test_meld_links_existing_clips(meld_root):
    (meld_root / "train_splits").mkdir()
    clip = meld_root / "train_splits" / "dia0_utt1.mp4"
    clip.write_bytes(b"")
    turns = load_meld(meld_root, splits=["train"])[0].turns
    assert [t.video for t in turns] == [None, clip, None]
    assert turns[1].audio == clip


@pytest.mark.parametrize("row, message", [
    (_meld_row(1, "a\nb", "Ross", "joy", 0, 0, start="12h43"), "cannot read the time '12h43'"),
    (_meld_row(1, "a\nb", "Ross", "happyish", 0, 0), "unknown emotion label 'happyish'"),
    (_meld_row(1, "a\nb", "Ross", "joy", "zero", 0), "Dialogue_ID 'zero' is not an integer"),
    (_meld_row(1, "a\nb", "Ross", "joy", 0, "1.5"), "Utterance_ID '1.5' is not an integer"),
    (_meld_row(2, "a\nb", "Ross", "joy", 7, 0), "duplicate Dialogue_ID 7 Utterance_ID 0"),
])
def test_meld_bad_rows_name_file_and_line(tmp_path, row, message):
    path = _write_csv(tmp_path / "train_sent_emo.csv", MELD_HEADER, [
        _meld_row(1, "multi\nline", "Ross", "joy", 7, 0), row])
    with pytest.raises(InputError) as err:
        load_meld(tmp_path, splits=["train"])
    assert f"{path}:4: {message}" in str(err.value)


def test_meld_missing_file_column_and_split(tmp_path):
    with pytest.raises(InputError, match="dev_sent_emo.csv: MELD transcript not found"):
        load_meld(tmp_path, splits=["validation"])
    _write_csv(tmp_path / "test_sent_emo.csv", MELD_HEADER[:3], [])
    with pytest.raises(InputError, match=r"missing MELD column\(s\) Emotion, Dialogue_ID.*found Sr No., Utterance, Sp"):
        load_meld(tmp_path, splits=["test"])
    with pytest.raises(InputError, match="unknown MELD split.*dev; choose from train, validation, test"):
        load_meld(tmp_path, splits=["dev"])


def test_meld_real_counts(meld_dir):
    dialogues = load_meld(meld_dir)
    by_split = collections.defaultdict(list)
    for d in dialogues:
        by_split[d.split].append(d)
    sizes = {s: (len(ds), sum(len(d) for d in ds)) for s, ds in by_split.items()}
    assert sizes == {"train": (1038, 9989), "validation": (114, 1109), "test": (280, 2610)}
    assert "train/60" not in {d.id for d in dialogues}
    assert len({d.id for d in dialogues}) == len(dialogues)
    turns = [t for d in dialogues for t in d.turns]
    assert {t.label for t in turns} == set(MELD7)
    assert not any(c in t.text for t in turns for c in "\u2018\u2019\u201c\u201d\x92\u00c2")
    assert all(t.start is not None and t.end >= t.start for t in turns)
    assert by_split["train"][0].turns[0].text.startswith("also I was the point person on my company's")


def test_iemocap_fixture_end_to_end(tmp_path):
    root = make_iemocap_fixture(tmp_path, with_wav=True)
    dialogues = load_iemocap(root)
    assert len(dialogues) == 10 and len({d.id for d in dialogues}) == 10
    assert collections.Counter(d.split for d in dialogues) == {"train": 7, "validation": 1, "test": 2}
    assert {d.id for d in dialogues if d.split == "test"} == {"Ses05F_impro01", "Ses05M_impro01"}
    assert all(len(d) == kept_per_dialogue(8) == 6 and d.corpus == "iemocap" for d in dialogues)
    turns = [t for d in dialogues for t in d.turns]
    assert {t.label for t in turns} <= set(IEMOCAP6)
    assert all(t.audio is not None and t.audio.is_file() and t.video is None for t in turns)
    first = dialogues[0]
    assert first.id == "Ses01F_impro01"
    assert [t.audio.stem for t in first.turns] == [
        "Ses01F_impro01_F000", "Ses01F_impro01_M000", "Ses01F_impro01_F001",
        "Ses01F_impro01_F002", "Ses01F_impro01_M002", "Ses01F_impro01_F003"]
    assert [t.speaker for t in first.turns[:2]] == ["Ses01_F", "Ses01_M"]
    assert first.turns[0].start == 1.0 and first.turns[0].end == 3.0


def test_iemocap_drops_non_protocol_labels(tmp_path):
    root = make_iemocap_fixture(tmp_path, sessions=1, dialogues_per_session=1)
    evaluation = (root / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt").read_text()
    codes = [line.split("\t")[2] for line in evaluation.splitlines() if line.startswith("[")]
    assert sum(code in DROPPED_CODES for code in codes) == 2
    [dialogue] = load_iemocap(root)
    assert len(dialogue) == len(codes) - 2
    assert dialogue.split == "train"  # round(0.1 * 1) == 0 dialogues go to validation


def test_iemocap_validation_slice_is_seeded(tmp_path):
    root = make_iemocap_fixture(tmp_path, dialogues_per_session=4, utterances=4)

    def validation(**kw):
        return {d.id for d in load_iemocap(root, **kw) if d.split == "validation"}

    assert len(validation(validation_fraction=0.25)) == 4
    assert validation(validation_fraction=0.25, seed=3) == validation(validation_fraction=0.25, seed=3)
    assert validation(validation_fraction=0.25, seed=1) != validation(validation_fraction=0.25, seed=2)
    assert validation(validation_fraction=0.0) == set()
    with pytest.raises(InputError, match="validation_fraction must be in"):
        load_iemocap(root, validation_fraction=1.0)


def test_iemocap_links_dialogue_video(tmp_path):
    root = make_iemocap_fixture(tmp_path, sessions=1, dialogues_per_session=1)
    avi = root / "Session1/dialog/avi/DivX/Ses01F_impro01.avi"
    avi.parent.mkdir(parents=True)
    avi.write_bytes(b"")
    [dialogue] = load_iemocap(root)
    assert all(t.video == avi and t.audio is None for t in dialogue.turns)


def test_iemocap_layout_errors(tmp_path):
    with pytest.raises(InputError, match="no IEMOCAP sessions found; expected the official IEMOCAP release"):
        load_iemocap(tmp_path)
    root = make_iemocap_fixture(tmp_path, sessions=2, dialogues_per_session=1)
    for path in (root / "Session2/dialog/EmoEvaluation").iterdir():
        path.unlink()
    with pytest.raises(InputError) as err:
        load_iemocap(root)
    assert str(err.value).startswith(f"{root / 'Session2'}: has transcriptions but no EmoEvaluation files")
    (root / "Session2/dialog/transcriptions/Ses02F_impro01.txt").unlink()
    with pytest.raises(InputError, match="Session2: no dialog/transcriptions"):
        load_iemocap(root)


def test_iemocap_bad_evaluation_line_and_missing_pair(tmp_path):
    root = make_iemocap_fixture(tmp_path, sessions=1, dialogues_per_session=2)
    evaluation = root / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"
    lines = evaluation.read_text().splitlines()
    lines[2] = "[1.0 - 3.0] Ses01F_impro01_F000 neu"
    evaluation.write_text("\n".join(lines))
    with pytest.raises(InputError, match=f"{evaluation}:3: bad evaluation line"):
        load_iemocap(root)
    evaluation.unlink()
    with pytest.raises(InputError, match="impro01.txt: no matching .*EmoEvaluation/Ses01F_impro01.txt"):
        load_iemocap(root)


def _ravdess_files(root: Path, names: list[str]) -> None:
    for name in names:
        path = root / f"Actor_{name.rsplit('-', 1)[1].split('.')[0]}" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def test_ravdess_names_labels_and_splits(tmp_path):
    _ravdess_files(tmp_path, ["03-01-02-01-01-01-01.wav", "03-01-03-02-02-01-18.flac",
                              "03-01-08-01-01-02-19.wav", "03-01-07-01-02-01-24.wav"])
    (tmp_path / "Actor_01" / "notes.txt").write_text("ignored")
    dialogues = load_ravdess(tmp_path)
    got = [(d.id, d.split, d.turns[0].speaker, d.turns[0].label, d.turns[0].text) for d in dialogues]
    assert got == [
        ("03-01-02-01-01-01-01", "train", "Actor_01", "neutral", "Kids are talking by the door"),
        ("03-01-03-02-02-01-18", "train", "Actor_18", "joy", "Dogs are sitting by the door"),
        ("03-01-08-01-01-02-19", "validation", "Actor_19", "surprise", "Kids are talking by the door"),
        ("03-01-07-01-02-01-24", "test", "Actor_24", "disgust", "Dogs are sitting by the door"),
    ]
    assert dialogues[0].turns[0].audio == tmp_path / "Actor_01" / "03-01-02-01-01-01-01.wav"
    assert all(d.corpus == "ravdess" and len(d) == 1 for d in dialogues)


@pytest.mark.parametrize("folder, name, message", [
    ("Actor_01", "03-01-09-01-01-01-01.wav", "not a RAVDESS file name"),
    ("Actor_01", "clip.wav", "not a RAVDESS file name"),
    ("Actor_25", "03-01-01-01-01-01-25.wav", "not a RAVDESS file name"),
    ("Actor_02", "03-01-01-01-01-01-01.wav", "actor 01 in the file name but the folder is Actor_02"),
])
def test_ravdess_bad_names(tmp_path, folder, name, message):
    path = tmp_path / folder / name
    path.parent.mkdir()
    path.write_bytes(b"")
    with pytest.raises(InputError, match=f"^{path}: {message}"):
        load_ravdess(tmp_path)


def test_ravdess_empty_and_duplicate(tmp_path):
    with pytest.raises(InputError, match="no RAVDESS clips found"):
        load_ravdess(tmp_path)
    _ravdess_files(tmp_path, ["03-01-01-01-01-01-01.wav", "03-01-01-01-01-01-01.flac"])
    with pytest.raises(InputError, match="appears twice"):
        load_ravdess(tmp_path)


def test_ravdess_real_counts(ravdess_dir):
    dialogues = load_ravdess(ravdess_dir)
    assert len(dialogues) == 1440
    assert collections.Counter(d.split for d in dialogues) == {"train": 1080, "validation": 120, "test": 240}
    assert collections.Counter(d.turns[0].label for d in dialogues) == {
        "neutral": 288, "joy": 192, "sadness": 192, "anger": 192, "fear": 192, "disgust": 192,
        "surprise": 192}
    assert len({d.turns[0].speaker for d in dialogues}) == 24


CSV_HEADER = ["dialogue_id", "turn", "speaker", "text", "label", "audio", "start", "end", "split"]


def test_corpus_csv_groups_orders_and_resolves_media(tmp_path):
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "a.wav").write_bytes(b"")
    path = _write_csv(tmp_path / "corpus.csv", CSV_HEADER, [
        ["d2", 1, "B", "Later.", "Happy", "", "", "", "test"],
        ["d1", 2, "A", "Third", "sad", "", "4", "5.5", ""],
        ["d2", 0, "A", "First", "calm", "media/a.wav", "0", "1", "test"],
        ["d1", 0, "B", "One", "anger", "", "", "", ""],
    ])
    dialogues = load_corpus_csv(path)
    assert [(d.id, d.split, d.corpus) for d in dialogues] == [("d2", "test", "csv"), ("d1", "train", "csv")]
    assert [t.text for t in dialogues[0].turns] == ["First", "Later."]
    assert [t.label for t in dialogues[0].turns] == ["neutral", "joy"]
    assert dialogues[0].turns[0].audio == (tmp_path / "media" / "a.wav").resolve()
    assert dialogues[1].turns[1] == Turn("A", 4.0, 5.5, "Third", "sadness")
    assert load_corpus_csv(path, labels=IEMOCAP6)[0].turns[1].label == "happiness"


@pytest.mark.parametrize("row, message", [
    (["d1", "x", "A", "t", "joy", "", "", "", ""], "turn 'x' is not an integer"),
    (["d1", 0, "A", "t", "joy", "", "", "", ""], "duplicate turn 0 of dialogue 'd1' (first at line 2)"),
    (["d1", 1, "A", "t", "bored", "", "", "", ""], "unknown emotion label 'bored'"),
    (["d1", 1, "A", "t", "", "", "", "", ""], "unknown emotion label ''"),
    (["d2", 0, "A", "t", "joy", "", "", "", "dev"], "split 'dev' is not one of train, validation, test"),
    (["d1", 1, "A", "t", "joy", "", "", "", "test"],
     "dialogue 'd1' is in split 'test' here but 'train' at line 2"),
    (["d1", 1, "A", "t", "joy", "missing.wav", "", "", ""], "audio file 'missing.wav' not found"),
    (["d1", 1, "A", "t", "joy", "", "1s", "", ""], "start '1s' is not a number of seconds"),
    (["d1", 1, "A", "t", "joy", "", "3", "2", ""], "end 2.0 is before start 3.0"),
    (["", 1, "A", "t", "joy", "", "", "", ""], "empty dialogue_id"),
])
def test_corpus_csv_bad_rows(tmp_path, row, message):
    first = ["d1", 0, "A", "two\nlines", "joy", "", "", "", ""]
    path = _write_csv(tmp_path / "c.csv", CSV_HEADER, [first, row])
    with pytest.raises(InputError) as err:
        load_corpus_csv(path)
    assert f"{path}:4: {message}" in str(err.value)


def test_corpus_csv_missing_columns_and_file(tmp_path):
    path = _write_csv(tmp_path / "c.csv", ["dialogue_id", "speaker", "utterance", "emotion"], [])
    found = "found dialogue_id, speaker, utterance, emotion"
    with pytest.raises(InputError, match=f"missing column\\(s\\) turn, text, label; {found}"):
        load_corpus_csv(path)
    with pytest.raises(InputError, match="corpus CSV not found"):
        load_corpus_csv(tmp_path / "nope.csv")
    latin = "dialogue_id,turn,speaker,text,label\nd,0,A,caf\u00e9,joy\n".encode("cp1252")
    (tmp_path / "latin.csv").write_bytes(latin)
    with pytest.raises(InputError, match="not UTF-8"):
        load_corpus_csv(tmp_path / "latin.csv")


def test_corpus_csv_round_trip(tmp_path):
    clip = tmp_path.resolve() / "clips" / "d0.mp4"
    clip.parent.mkdir()
    clip.write_bytes(b"")
    dialogues = [
        Dialogue("a/1", [Turn("Ross", 0.25, 1.5, 'He said "hi",\nthen left', "joy", audio=clip, video=clip),
                         Turn("Rachel", None, None, "Okay.", "neutral")], split="validation"),
        Dialogue("b", [Turn("A", 6.2901, 8.2357, "x", "fear")]),
    ]
    path = write_corpus_csv(tmp_path / "out" / "corpus.csv", dialogues)
    assert "../clips/d0.mp4" in path.read_text()
    loaded = load_corpus_csv(path)
    assert [d.turns for d in loaded] == [d.turns for d in dialogues]
    assert [(d.id, d.split) for d in loaded] == [("a/1", "validation"), ("b", "train")]


def test_write_corpus_csv_rejects_unlabelled_and_duplicate_ids(tmp_path):
    with pytest.raises(InputError, match="dialogue 'a' turn 1 has no label"):
        turns = [Turn("A", None, None, "x", "joy"), Turn("B", None, None, "y")]
        write_corpus_csv(tmp_path / "c.csv", [Dialogue("a", turns)])
    with pytest.raises(InputError, match="dialogue id 'a' appears twice"):
        write_corpus_csv(tmp_path / "c.csv", [Dialogue("a", []), Dialogue("a", [])])


def test_registry(tmp_path):
    assert set(CORPORA) == {"meld", "iemocap", "ravdess", "csv"}
    assert [corpus_labels(n) for n in CORPORA] == [MELD7, IEMOCAP6, MELD7, MELD7]
    with pytest.raises(InputError, match="unknown corpus 'friends'; choose one of meld, iemocap, ravdess"):
        load_corpus("friends", tmp_path)
    with pytest.raises(InputError, match="unknown corpus"):
        corpus_labels("fer")
    with pytest.raises(InputError, match="not found; point --data at the iemocap corpus"):
        load_corpus("iemocap", tmp_path / "absent")
    root = make_iemocap_fixture(tmp_path / "iemocap", sessions=5, dialogues_per_session=2, utterances=4)
    dialogues = load_corpus("iemocap", root, validation_fraction=0.25)
    assert [len(split(dialogues, s)) for s in ("train", "validation", "test")] == [6, 2, 2]
    assert all(d.split == "test" for d in split(dialogues, "test"))
    with pytest.raises(InputError, match="unknown split 'dev'; choose one of train, validation, test"):
        split(dialogues, "dev")
    csv_path = write_corpus_csv(tmp_path / "c.csv", split(dialogues, "test"))
    reloaded = load_corpus("csv", csv_path, labels=IEMOCAP6)
    assert [d.id for d in reloaded] == ["Ses05F_impro01", "Ses05M_impro01"]
    assert [d.turns for d in reloaded] == [d.turns for d in split(dialogues, "test")]
