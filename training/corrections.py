"""Annotators' corrections as training data beside a corpus: `--corrections SOURCE [--corrections-weight W]`.

SOURCE is a database URL (`sqlite:///...`, `postgresql+psycopg://...`: its labelled turns are cut into a
`corpus` export first, media from ERC_DATA_DIR's media store), a `corpus` export zip
(backend.corpus_export), or a generic corpus CSV (training/corpora/generic_csv.py). Each turn's label
is its current label (backend.current_label). A dialogue is a video.

The corrected dialogues are split into train and validation by dialogue, seeded. With fewer than
`MIN_DIALOGUES` corrected dialogues none can be spared for validation: all of them train, model
selection uses the corpus's validation split alone, and the card says so.

W weighs the corrections against the corpus: each corrected dialogue is seen W times per epoch
(floor(W) copies, and one more with probability W - floor(W), drawn anew each epoch).
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from backend.corpus_export import CSV_NAME, SUMMARY, summary, write_corpus_zip
from backend.current_label import POLICY
from backend.dialogue import Dialogue
from backend.errors import InputError
from backend.exports import by_turn
from backend.settings import get_settings
from backend.storage import Store
from training.corpora.generic_csv import load_corpus_csv

MIN_DIALOGUES = 3  # fewer corrected dialogues: all train, validation from the corpus
VALIDATION_SHARE = 0.25
PREFIX = "corrections:"  # keeps corrected dialogue ids apart from the corpus's
DB_SCHEMES = ("sqlite", "postgresql", "mysql")


@dataclass
class Corrections:
    """Corrected dialogues split into train and validation, and what the model card says of them."""

    source: str
    train: list[Dialogue]
    validation: list[Dialogue]
    turns: int
    annotators: list[str]
    first: str | None
    last: str | None
    weight: float = 1.0
    policy: str = POLICY
    folder: Path | None = field(default=None, repr=False)  # where an unpacked export lives

    @property
    def validation_from(self) -> str:
        """"corrections" when corrected dialogues were held out, else "corpus"."""
        return "corrections" if self.validation else "corpus"

    def card_data(self) -> dict:
        """The manifest's `data.corrections`."""
        return {
            "source": self.source,
            "turns": self.turns,
            "dialogues": {"train": len(self.train), "validation": len(self.validation)},
            "annotators": self.annotators,
            "first": self.first,
            "last": self.last,
            "policy": self.policy,
            "weight": self.weight,
            "validation_from": self.validation_from,
        }

    def epoch(self, items: list, rng: np.random.Generator) -> list:
        """`items` (one per corrected train dialogue) repeated by the weight for one epoch."""
        whole, part = divmod(self.weight, 1.0)
        return [x for x in items for _ in range(int(whole) + int(rng.random() < part))]


def add_corrections_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--corrections",
        default=None,
        help="annotators' corrections to train on besides the corpus: a database URL (sqlite:///..., "
        "postgresql+psycopg://...), a `corpus` export zip from the app, or a generic corpus CSV",
    )
    parser.add_argument(
        "--corrections-weight",
        type=float,
        default=1.0,
        help="how many times each corrected dialogue is seen per epoch (fractions are drawn per epoch)",
    )


def _is_url(source: str) -> bool:
    return source.split(":", 1)[0].split("+", 1)[0] in DB_SCHEMES and "://" in source


def _unpack(zip_path: Path) -> Path:
    if not zipfile.is_zipfile(zip_path):
        raise InputError(f"{zip_path}: not a zip file; give a `corpus` export, a corpus CSV or a database URL")
    folder = Path(tempfile.mkdtemp(prefix="erc-corrections-"))
    with zipfile.ZipFile(zip_path) as archive:
        names = archive.namelist()
        if CSV_NAME not in names:
            raise InputError(f"{zip_path}: no {CSV_NAME} inside; export the corrections with the `corpus` format")
        for name in names:  # refuse paths that would leave the folder
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise InputError(f"{zip_path}: unsafe path {name!r} inside the zip")
        archive.extractall(folder)
    return folder


def _export_database(url: str) -> Path:
    """The database's corrections as an unpacked `corpus` export in a new temporary folder."""
    settings = get_settings()
    try:
        store = Store(url, settings.media_dir)
    except Exception as exc:  # a wrong URL or an unreachable server
        raise InputError(f"cannot open the corrections database {url}: {exc}") from None
    try:
        turns = by_turn(store.annotations())
        if not turns:
            raise InputError(f"{url}: no corrections saved yet; label some turns in the app first")

        def located(dialogue_id: int) -> dict:
            doc = store.analysis(dialogue_id)
            return {**doc, "media": {**doc["media"], "path": str(store.get_media(doc["media"]["sha256"]).path)}}

        folder = Path(tempfile.mkdtemp(prefix="erc-corrections-"))
        zip_path = write_corpus_zip(folder / "corrections.zip", turns, located)
    finally:
        store.close()
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(folder)
    return folder


def _csv_summary(path: Path) -> dict:
    """The summary of a corpus CSV without `corrections.json`: from its annotators and labelled_at
    columns where it has them."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    groups = [
        [{"annotator": a, "created_at": r.get("labelled_at") or ""} for a in (r.get("annotators") or "").split(";") if a]
        for r in rows
    ]
    found = summary([g for g in groups if g])
    times = sorted(r["labelled_at"] for r in rows if r.get("labelled_at"))
    return {**found, "turns": len(rows), "first": times[0] if times else None, "last": times[-1] if times else None,
            "policy": POLICY if found["annotators"] else "as given in the CSV"}


def split_dialogues(dialogues: list[Dialogue], seed: int) -> tuple[list[Dialogue], list[Dialogue]]:
    """(train, validation) by dialogue, seeded; validation empty below `MIN_DIALOGUES` dialogues."""
    if len(dialogues) < MIN_DIALOGUES:
        return list(dialogues), []
    order = np.random.default_rng(seed).permutation(len(dialogues))
    n_val = max(1, round(VALIDATION_SHARE * len(dialogues)))
    held = set(order[:n_val].tolist())
    return [d for i, d in enumerate(dialogues) if i not in held], [d for i, d in enumerate(dialogues) if i in held]


def load_corrections(source: str, labels: tuple[str, ...], seed: int = 0, weight: float = 1.0) -> Corrections:
    """The corrections at `source`, labels canonicalised against `labels`, split by dialogue."""
    if not weight > 0:
        raise InputError(f"--corrections-weight must be positive, got {weight}")
    folder = None
    if _is_url(source):
        folder = _export_database(source)
        csv_path = folder / CSV_NAME
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(
                f"{source}: not found; --corrections takes a database URL (sqlite:///path/erc.db), a `corpus` "
                "export zip or a corpus CSV"
            )
        if path.suffix.lower() == ".csv":
            csv_path = path
        else:
            folder = _unpack(path)
            csv_path = folder / CSV_NAME
    recorded = csv_path.with_name(SUMMARY)
    facts = json.loads(recorded.read_text()) if recorded.is_file() else _csv_summary(csv_path)
    dialogues = [
        replace(d, id=PREFIX + d.id, corpus="corrections")
        for d in load_corpus_csv(csv_path, labels=labels)
    ]
    train, validation = split_dialogues(dialogues, seed)
    for d in train:
        d.split = "train"
    for d in validation:
        d.split = "validation"
    return Corrections(
        source=source,
        train=train,
        validation=validation,
        turns=sum(len(d) for d in dialogues),
        annotators=list(facts.get("annotators") or []),
        first=facts.get("first"),
        last=facts.get("last"),
        weight=weight,
        policy=facts.get("policy", POLICY),
        folder=folder,
    )


def card_section(data: dict) -> str:
    """The model card's paragraph on the corrections (empty without them)."""
    c = data.get("corrections")
    if not c:
        return ""
    who = ", ".join(c["annotators"]) or "not recorded"
    when = f"{c['first']} to {c['last']}" if c["first"] else "not recorded"
    held = (
        f"{c['dialogues']['validation']} corrected dialogue(s) held out for validation (the `corrections` view)"
        if c["validation_from"] == "corrections"
        else f"too few corrected dialogues to hold any out (fewer than {MIN_DIALOGUES}): all of them train, "
        "and validation uses the corpus's validation split only"
    )
    return f"""
**Corrections** from `{c["source"]}`: {c["turns"]} labelled turns in {sum(c["dialogues"].values())}
dialogue(s) (videos); annotators: {who}; labelled {when}. Label policy: {c["policy"]}.
{c["dialogues"]["train"]} dialogue(s) train, weight {c["weight"]} (seen that many times per epoch);
{held}.
"""
