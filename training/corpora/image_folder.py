"""Folder-per-class face images (FER2013 style): `<root>/<split>/<class>/*.jpg` or `<root>/<class>/*`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from backend.dialogue import LabelledImage
from backend.errors import InputError
from backend.labels import MELD7, canonical_label

SPLITS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
LAYOUT = (
    "expected <root>/<split>/<class>/*.jpg|png with splits train, val, test "
    "(e.g. fer2013/train/happy/0001.jpg) or <root>/<class>/*.jpg|png without a split level"
)


@dataclass
class ImageFolder:
    """The images whose class maps to the label set, and the image counts of classes that don't."""

    root: Path
    images: list[LabelledImage]
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(class_dir: Path) -> list[Path]:
    return sorted(p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def split_dirs(root: Path) -> dict[str, Path]:
    """Canonical split name -> folder, or {} when `root` has no split level."""
    dirs = _subdirs(root)
    splits = {SPLITS[d.name.lower()]: d for d in dirs if d.name.lower() in SPLITS}
    others = [d.name for d in dirs if d.name.lower() not in SPLITS]
    if splits and others:
        raise InputError(f"{root}: mixes split folders with other folders ({', '.join(others)}); {LAYOUT}")
    return splits


def _read_classes(folder: Path, labels: tuple[str, ...], split: str | None, out: ImageFolder) -> None:
    for class_dir in _subdirs(folder):
        files = _image_files(class_dir)
        label = canonical_label(class_dir.name, labels)
        if label is None:
            if files:
                out.skipped[class_dir.name] = out.skipped.get(class_dir.name, 0) + len(files)
            continue
        out.images += [LabelledImage(path=f, label=label, split=split) for f in files]


def load_image_folder(
    root: str | Path, labels: tuple[str, ...] = MELD7, split: str | None = None
) -> ImageFolder:
    """Read a folder-per-class image corpus; `split` (train, val/validation, test) keeps one split."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"image folder {root} does not exist or is not a folder; {LAYOUT}")
    splits = split_dirs(root)
    if split is not None:
        wanted = SPLITS.get(split.lower())
        if wanted is None:
            raise InputError(f"unknown split {split!r}; choose train, val or test")
        if wanted not in splits:
            have = ", ".join(splits) or "none (no split level)"
            raise InputError(f"{root} has no {split!r} split folder (found: {have}); {LAYOUT}")
        splits = {wanted: splits[wanted]}
    out = ImageFolder(root=root, images=[])
    if splits:
        for name, folder in splits.items():
            _read_classes(folder, labels, name, out)
    else:
        _read_classes(root, labels, None, out)
    if not out.images:
        found = f"; skipped classes not in the label set: {dict(out.skipped)}" if out.skipped else ""
        raise InputError(f"{root}: no images of the classes {', '.join(labels)} found{found}; {LAYOUT}")
    return out
