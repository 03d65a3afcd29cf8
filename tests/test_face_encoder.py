"""Face encoder: image-folder loader, FaceCNN preprocessing, train/evaluate round trip, real checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from backend.checkpoints import read_checkpoint
from backend.errors import InputError, ModelUnavailableError
from backend.face_encoder import build_model, crop_features, preprocess
from backend.model_store import open_model_store
from backend.settings import CHECKPOINTS_DIR, get_settings
from models.face_cnn import FaceCNN, FaceCNNConfig
from training.__main__ import main
from training.corpora.image_folder import ImageFolder, load_image_folder
from training.face_encoder import TrainConfig, augment, evaluate_folder
from training.metrics import REPORT_KEYS

CLASSES = {"happy": 0, "sad": 1, "angry": 2, "contempt": 3}  # contempt is not a MELD label


def _write_faces(folder: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for name, k in CLASSES.items():
        (folder / name).mkdir(parents=True)
        for i in range(n):
            face = rng.integers(0, 60, (48, 48), dtype=np.uint8)
            face[:, 12 * k : 12 * k + 12] += 150  # a class-specific bright band
            cv2.imwrite(str(folder / name / f"{i}.png"), face)


@pytest.fixture
def fer_like(tmp_path) -> Path:
    root = tmp_path / "fer"
    for seed, split in enumerate(("train", "val", "test")):
        _write_faces(root / split, 8 if split == "train" else 4, seed)
    (root / "train" / "happy" / "notes.txt").write_text("not an image")
    return root


def test_loader_maps_classes_splits_and_counts_skipped(fer_like):
    folder = load_image_folder(fer_like)
    assert {im.label for im in folder.images} == {"joy", "sadness", "anger"}
    assert {im.split for im in folder.images} == {"train", "validation", "test"}
    assert len(folder) == 3 * 8 + 3 * 4 + 3 * 4
    assert folder.skipped == {"contempt": 8 + 4 + 4}
    val = load_image_folder(fer_like, split="val")
    assert {im.split for im in val.images} == {"validation"} and len(val) == 12
    assert val.skipped == {"contempt": 4}


def test_loader_without_split_level(tmp_path):
    _write_faces(tmp_path / "faces", 2, 0)
    folder = load_image_folder(tmp_path / "faces")
    assert len(folder) == 6 and {im.split for im in folder.images} == {None}
    assert folder.skipped == {"contempt": 2}
    iemocap = load_image_folder(tmp_path / "faces", labels=("happiness", "sadness", "neutral", "anger"))
    assert {im.label for im in iemocap.images} == {"happiness", "sadness", "anger"}


def test_loader_rejects_bad_layouts(tmp_path, fer_like):
    with pytest.raises(InputError, match="does not exist"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="expected <root>/<split>/<class>"):
        load_image_folder(tmp_path / "empty")
    (tmp_path / "odd" / "contempt").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "odd" / "contempt" / "0.png"), np.zeros((48, 48), np.uint8))
    with pytest.raises(InputError, match="skipped classes"):
        load_image_folder(tmp_path / "odd")
    with pytest.raises(InputError, match="no 'val' split"):
        load_image_folder(tmp_path / "odd", split="val")
    with pytest.raises(InputError, match="unknown split"):
        load_image_folder(fer_like, split="dev")
    (fer_like / "extra").mkdir()
    with pytest.raises(InputError, match="mixes split folders"):
        load_image_folder(fer_like)


def test_preprocess_real_crop_shapes():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (97, 61), dtype=np.uint8)
    crop = np.repeat(gray[:, :, None], 3, axis=2)
    x = preprocess([crop, crop[:20, :30], gray])
    assert x.shape == (3, 1, 48, 48) and x.dtype == torch.float32
    assert torch.isfinite(x).all() and -2.5 < x.mean() < 2.5
    assert torch.allclose(x[0], x[2], atol=0.02)  # a gray RGB crop and its gray plane agree
    model = FaceCNN(FaceCNNConfig(channels=(8, 16), convs_per_block=(1, 1))).eval()
    assert model.features(x).shape == (3, 16) and model(x).shape == (3, 7)
    with pytest.raises(InputError, match="uint8"):
        preprocess([crop.astype(np.float32)])
    with pytest.raises(InputError, match="no face crops"):
        preprocess([])
    with pytest.raises(InputError, match="empty"):
        preprocess([np.zeros((0, 0, 3), np.uint8)])


def test_augment_keeps_shape_range_and_is_seeded():
    pixels = torch.rand(6, 1, 48, 48)
    a = augment(pixels, TrainConfig(), torch.Generator().manual_seed(1))
    b = augment(pixels, TrainConfig(), torch.Generator().manual_seed(1))
    assert a.shape == pixels.shape and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b) and not torch.allclose(a, pixels)


def test_train_then_evaluate_round_trip(fer_like, tmp_path, data_dir):
    out = tmp_path / "ckpt"
    argv = ["train", "face-encoder", "--corpus", "image-folder", "--data", str(fer_like), "--out", str(out),
            "--epochs", "2", "--batch-size", "8", "--channels", "8,16", "--convs", "1,1"]
    assert main(argv) == 0
    assert {p.name for p in out.iterdir()} == {"manifest.json", "model.safetensors", "MODEL_CARD.md"}
    checkpoint = read_checkpoint(out)
    assert checkpoint.model == "face-encoder" and checkpoint.components == {}
    assert [row["epoch"] for row in checkpoint.metrics["curve"]] == [1, 2]
    assert checkpoint.data["corpus"]["skipped"] == {"contempt": 12} and checkpoint.metrics["val"]["n"] == 12
    assert f"--out {out}" not in (out / "MODEL_CARD.md").read_text(), "the card's command must not name a taken folder"
    store = open_model_store(get_settings())
    model = build_model(checkpoint, store, "cpu")
    assert checkpoint.labels == ("joy", "anger", "sadness") and model.config.channels == (8, 16)
    assert crop_features(checkpoint, store, "cpu")([np.zeros((30, 30, 3), np.uint8)]).shape == (1, 16)
    assert len(list((data_dir / "cache" / "face-images").glob("*.npy"))) == 2  # train and val decoded once

    report_path = tmp_path / "report.json"
    assert main(["evaluate", "face-encoder", "--checkpoint", str(out), "--corpus", "image-folder",
                 "--data", str(fer_like), "--split", "test", "--out", str(report_path), "--record"]) == 0
    report = json.loads(report_path.read_text())
    assert set(report) == set(REPORT_KEYS) | {"skipped"}
    assert report["skipped"] == {"contempt": 4} and report["n"] == 12 and list(report["labels"]) == list(checkpoint.labels)
    recorded = read_checkpoint(out)
    assert recorded.metrics["test"]["n"] == 12 and recorded.version == checkpoint.version
    assert "Split `test` (n=12)" in (out / "MODEL_CARD.md").read_text()
    with pytest.raises(InputError, match="already holds a checkpoint"):
        main(argv)


def test_train_without_out_adds_a_version_to_the_model_store(fer_like, data_dir):
    assert main(["train", "face-encoder", "--data", str(fer_like), "--epochs", "1", "--batch-size", "8",
                 "--channels", "8,16", "--convs", "1,1"]) == 0
    trained = [v for v in open_model_store(get_settings()).versions("face-encoder") if not v.builtin]
    assert len(trained) == 1 and trained[0].path == data_dir / "models" / "face-encoder" / trained[0].version
    assert "--out" not in trained[0].data["command"]


def test_train_needs_validation_split(tmp_path, data_dir):
    _write_faces(tmp_path / "fer" / "train", 2, 0)
    with pytest.raises(InputError, match="no 'val' split"):
        main(["train", "face-encoder", "--data", str(tmp_path / "fer"), "--out", str(tmp_path / "ckpt")])


def test_missing_checkpoint_is_model_unavailable(tmp_path, data_dir):
    with pytest.raises(ModelUnavailableError, match="neither a checkpoint folder nor a face-encoder version"):
        main(["evaluate", "face-encoder", "--checkpoint", str(tmp_path), "--data", str(tmp_path),
              "--out", str(tmp_path / "r.json")])


def test_committed_checkpoint_beats_chance_on_fer_test(fer_dir, data_dir):
    checkpoint = read_checkpoint(CHECKPOINTS_DIR / "face-encoder")
    assert sum(p.stat().st_size for p in checkpoint.path.iterdir()) < 5 * 2**20
    model, labels = build_model(checkpoint, open_model_store(get_settings()), "cpu"), list(checkpoint.labels)
    test = load_image_folder(fer_dir, tuple(labels), split="test")
    sample = ImageFolder(root=test.root, images=test.images[::12], skipped=test.skipped)  # every 12th: ~300
    report = evaluate_folder(model, labels, sample)
    assert report["n"] == len(sample) and report["skipped"] == {}
    assert report["accuracy"] > 0.45  # chance is 1/7; the majority class (joy) is about 0.25
