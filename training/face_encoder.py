"""Train and evaluate the face encoder (FaceCNN) on a folder-per-class corpus such as FER2013.

    python -m training train face-encoder --corpus image-folder --data ../shared/data/fer2013
    python -m training evaluate face-encoder --corpus image-folder --data ../shared/data/fer2013 \
        --split test --out runs/face-encoder-test.json

A run writes a "face-encoder" checkpoint (backend.checkpoints): config = the FaceCNNConfig, fp16
model.safetensors; data {command, corpus, train, parameters}; metrics {best_epoch, val, curve,
train_minutes, test}. The app reads it through backend.face_encoder.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from backend.checkpoints import update_metrics, write_checkpoint
from backend.dialogue import LabelledImage
from backend.errors import InputError
from backend.face_encoder import MODEL, WEIGHTS, build_model, face_to_gray, normalise, to_pixels
from backend.labels import LABEL_SETS, label_set
from backend.model_store import open_model_store
from backend.settings import get_settings
from models.face_cnn import FaceCNN, FaceCNNConfig
from training.corpora.image_folder import ImageFolder, load_image_folder
from training.metrics import classification_report
from training.outputs import checkpoint_output, find_checkpoint, reproducible

BUILTIN = "face-encoder"  # the shipped checkpoint folder


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    seed: int = 0
    # augmentation: shift is the "random crop with padding" in pixels, rotate in degrees
    shift: float = 4.0
    rotate: float = 10.0
    scale: float = 0.1
    brightness: float = 0.2
    contrast: float = 0.2


# ----------------------------------------------------------------------------- data


def _file_list_key(images: list[LabelledImage], size: int) -> str:
    digest = hashlib.sha1(f"size={size}\n".encode())
    for image in images:
        stat = image.path.stat()
        digest.update(f"{image.path.resolve()}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def _decode(path: Path, size: int) -> np.ndarray:
    import cv2

    raw = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    if raw is None:
        raise InputError(f"{path}: not a readable image; remove it or replace it with a JPEG/PNG")
    return face_to_gray(raw, size)


def load_pixels(images: list[LabelledImage], size: int = 48) -> np.ndarray:
    """All images as one uint8 [N, size, size] array, cached on disk keyed by the file list."""
    cache = get_settings().cache_dir / "face-images" / f"{_file_list_key(images, size)}.npy"
    if cache.exists():
        return np.load(cache)
    pixels = np.stack([_decode(image.path, size) for image in tqdm(images, desc="decoding images", leave=False)])
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(".partial.npy")
    np.save(partial, pixels)
    partial.replace(cache)
    return pixels


def augment(pixels: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Random shift (crop with zero padding), flip, small rotation/scale and brightness/contrast.

    `pixels` are 0-1 [B, 1, H, W]; one affine warp per image does the geometric part.
    """
    b, _, h, _ = pixels.shape

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen) * 2 - 1

    angle = uniform(b) * math.radians(cfg.rotate)
    scale = 1 + uniform(b) * cfg.scale
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    shift = uniform(b, 2) * (2 * cfg.shift / h)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    out = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    contrast = (1 + uniform(b) * cfg.contrast).view(b, 1, 1, 1)
    brightness = (uniform(b) * cfg.brightness).view(b, 1, 1, 1)
    mean = out.mean(dim=(2, 3), keepdim=True)
    return ((out - mean) * contrast + mean + brightness).clamp(0, 1)


# ----------------------------------------------------------------------------- checkpoints


def save_weights(model: FaceCNN, folder: Path) -> None:
    """fp16 model.safetensors (the encoder is small enough for fp16)."""
    state = {
        k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()
    }
    save_file(state, folder / WEIGHTS)


def write(folder: Path, model: FaceCNN, labels: list[str], data: dict, metrics: dict) -> None:
    """The checkpoint's manifest and card for the weights already saved in `folder`."""
    manifest = {"model": MODEL, "config": model.config.to_dict(), "labels": labels, "data": data,
                "metrics": metrics}
    write_checkpoint(folder, **manifest, card=model_card(manifest))


@torch.no_grad()
def predict(model: FaceCNN, pixels: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """uint8 [N, H, W] faces -> predicted class indices [N]."""
    model.eval()
    out = []
    for i in range(0, len(pixels), batch_size):
        x = normalise(to_pixels(torch.from_numpy(pixels[i : i + batch_size])), model.config)
        out.append(model(x.contiguous(memory_format=torch.channels_last)).argmax(1))
    return torch.cat(out).numpy()


# ----------------------------------------------------------------------------- training


def _labelled(folder: ImageFolder, labels: list[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    index = {label: i for i, label in enumerate(labels)}
    return load_pixels(folder.images, size), np.array([index[im.label] for im in folder.images])


def _report(model: FaceCNN, pixels: np.ndarray, y: np.ndarray, labels: list[str]) -> dict:
    pred = predict(model, pixels)
    names = np.array(labels)
    present = sorted(set(names[y]), key=labels.index)
    return classification_report(list(names[y]), list(names[pred]), labels, present=present)


def fit(
    model: FaceCNN, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
    labels: list[str], cfg: TrainConfig, on_epoch=None,
) -> dict:
    """Train with AdamW + one-cycle LR; keep the weights of the best validation-accuracy epoch.

    `on_epoch(model, row, val_report, improved)` is called after every epoch.
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    x_all, y_all = torch.from_numpy(train[0]), torch.from_numpy(train[1])
    steps = math.ceil(len(x_all) / cfg.batch_size)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps, pct_start=0.2)
    best = {"val_accuracy": -1.0}
    curve = []
    bar = tqdm(total=cfg.epochs * steps, desc="face-encoder", unit="batch")
    for epoch in range(1, cfg.epochs + 1):
        started, model = time.time(), model.train()
        order = torch.randperm(len(x_all), generator=gen)
        loss_sum = correct = 0.0
        for i in range(steps):
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            x = normalise(augment(to_pixels(x_all[idx]), cfg, gen), model.config)
            logits = model(x.contiguous(memory_format=torch.channels_last))
            loss = F.cross_entropy(logits, y_all[idx], label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == y_all[idx]).sum().item()
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
        report = _report(model, *val, labels)
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / len(x_all),
            "train_accuracy": correct / len(x_all),
            "val_accuracy": report["accuracy"],
            "val_weighted_f1": report["weighted_f1"],
            "seconds": round(time.time() - started, 1),
        }
        curve.append(row)
        improved = report["accuracy"] > best["val_accuracy"]
        if improved:
            best = {"epoch": epoch, "val_accuracy": report["accuracy"], "val": report}
        bar.write(
            f"epoch {epoch}: loss {row['train_loss']:.4f} train acc {row['train_accuracy']:.4f} "
            f"val acc {row['val_accuracy']:.4f} val wF1 {row['val_weighted_f1']:.4f} ({row['seconds']}s)"
            + (" *" if improved else "")
        )
        if on_epoch is not None:
            on_epoch(model, row, report, improved)
    bar.close()
    return {"best_epoch": best["epoch"], "val": best["val"], "curve": curve}


def model_card(manifest: Mapping) -> str:
    """MODEL_CARD.md from a face-encoder manifest (re-rendered when a test result is recorded)."""
    data, metrics, config = manifest["data"], manifest["metrics"], FaceCNNConfig(**manifest["config"])
    val = metrics["val"]
    rows = "\n".join(
        f"| {label} | {val['per_class_f1'][label]:.3f} | {val['per_class_recall'][label]:.3f} |"
        for label in val["labels"]
        if val["per_class_f1"][label] is not None
    )
    test = metrics.get("test")
    test_text = (
        f"Split `{test['split']}` (n={test['n']}): **accuracy {test['accuracy']:.4f}**, "
        f"weighted F1 {test['weighted_f1']:.4f}.\n\n```\n{test['command']}\n```"
        if test
        else "Not evaluated yet. Run:\n\n```\npython -m training evaluate face-encoder --checkpoint DIR "
        "--corpus image-folder --data DATA --split test --out runs/face-encoder-test.json --record\n```"
    )
    corpus = data["corpus"]
    skipped = corpus["skipped"]
    return f"""# face-encoder — small VGG-style CNN for facial expressions

FARCER's offline face feature: `FaceCNN.features(preprocess(crops))`, a {config.feature_dim}-d pooled
vector per face crop ({data['parameters']:,} parameters, weights stored in fp16). Load it with
`backend.face_encoder.build_model(checkpoint, store, device)`. Labels: {', '.join(manifest['labels'])}.

## Data

Folder-per-class corpus at `{corpus['root']}`: train {corpus['train']} images, validation
{corpus['validation']} images{f'; skipped classes (not in the label set): {skipped}' if skipped else ''}.
For FER2013 (train = official Training, val = PublicTest, test = PrivateTest): no licence is stated;
the images were collected from the web for a research challenge, so this model is for research and
teaching use only and the images are never redistributed. About 620 PrivateTest images have an
identical copy in Training, so FER2013 test accuracy is slightly optimistic.

## Training

```
{reproducible(data['command'])}
```

AdamW with a one-cycle LR schedule, label smoothing, augmentation on tensors (shift/crop with
padding, flip, small rotation and scale, brightness/contrast). The epoch was selected on validation
accuracy only: epoch {metrics['best_epoch']} of {len(metrics['curve'])}, {metrics['train_minutes']:.1f} min on CPU.

## Validation (selected epoch)

Accuracy {val['accuracy']:.4f}, weighted F1 {val['weighted_f1']:.4f}, n={val['n']}.

| label | F1 | recall |
|---|---|---|
{rows}

## Test

{test_text}
"""


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_train_args(parser: argparse.ArgumentParser) -> None:
    defaults, model = TrainConfig(), FaceCNNConfig()
    parser.add_argument("--corpus", choices=["image-folder"], default="image-folder")
    parser.add_argument("--data", type=Path, required=True, help="<data>/{train,val}/<class>/*.jpg")
    parser.add_argument("--out", type=Path, default=None,
                        help="a new checkpoint folder (default: a new version in the model store)")
    parser.add_argument("--label-set", choices=sorted(LABEL_SETS), default="meld")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--channels", type=_int_list, default=model.channels, help="per block, e.g. 32,64,128,256")
    parser.add_argument("--convs", type=_int_list, default=model.convs_per_block, help="convs per block, e.g. 2,2,2,2")


def _train_command(args: argparse.Namespace) -> str:
    out = f" --out {args.out}" if args.out else ""
    return (
        f"python -m training train face-encoder --corpus {args.corpus} --data {args.data}{out} "
        f"--label-set {args.label_set} --epochs {args.epochs} --seed {args.seed} --batch-size {args.batch_size} "
        f"--lr {args.lr} --channels {','.join(map(str, args.channels))} --convs {','.join(map(str, args.convs))}"
    )


def train(args: argparse.Namespace) -> int:
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0:
        raise InputError("--epochs and --batch-size must be at least 1 and --lr positive")
    names = label_set(args.label_set)
    train_folder = load_image_folder(args.data, names, split="train")
    val_folder = load_image_folder(args.data, names, split="val")
    present = {im.label for im in train_folder.images}
    labels = [label for label in names if label in present]
    unseen = sorted({im.label for im in val_folder.images} - present)
    if unseen:
        raise InputError(f"{args.data}: validation has classes with no training images ({', '.join(unseen)})")
    config = FaceCNNConfig(n_classes=len(labels), channels=args.channels, convs_per_block=args.convs)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    torch.manual_seed(cfg.seed)
    model = FaceCNN(config)
    train_data = _labelled(train_folder, labels, config.image_size)
    val_data = _labelled(val_folder, labels, config.image_size)
    started = time.time()
    skipped = {
        k: train_folder.skipped.get(k, 0) + val_folder.skipped.get(k, 0)
        for k in {**train_folder.skipped, **val_folder.skipped}
    }
    data = {
        "command": _train_command(args),
        "corpus": {"root": str(args.data), "train": len(train_folder), "validation": len(val_folder),
                   "skipped": skipped},
        "train": asdict(cfg),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    metrics: dict = {"curve": []}

    with checkpoint_output(args.out, MODEL) as pending:

        def on_epoch(model: FaceCNN, row: dict, report: dict, improved: bool) -> None:
            if improved:
                save_weights(model, pending.folder)
                metrics.update(best_epoch=row["epoch"], val=report)
            metrics["curve"].append(row)
            metrics["train_minutes"] = (time.time() - started) / 60
            write(pending.folder, model, labels, data, metrics)

        result = fit(model, train_data, val_data, labels, cfg, on_epoch=on_epoch)
    print(
        f"best epoch {result['best_epoch']}: val accuracy {result['val']['accuracy']:.4f}, "
        f"weighted F1 {result['val']['weighted_f1']:.4f}; checkpoint {pending.checkpoint.version} in "
        f"{pending.checkpoint.path}"
    )
    return 0


# ----------------------------------------------------------------------------- evaluation


def add_evaluate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None,
                        help="a checkpoint folder or a face-encoder version in the model store "
                        "(default: the shipped one)")
    parser.add_argument("--corpus", choices=["image-folder"], default="image-folder")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="test", help="train, val or test; `all` for a folder without splits")
    parser.add_argument("--out", type=Path, required=True, help="JSON report")
    parser.add_argument("--record", action="store_true",
                        help="also record the result in the checkpoint (and its card)")


def evaluate_folder(model: FaceCNN, labels: list[str], folder: ImageFolder) -> dict:
    """`classification_report` keys plus `skipped` (classes the model lacks -> image counts)."""
    index = {label: i for i, label in enumerate(labels)}
    y = np.array([index[im.label] for im in folder.images])
    report = _report(model, load_pixels(folder.images, model.config.image_size), y, labels)
    return {**report, "skipped": dict(folder.skipped)}


def evaluate(args: argparse.Namespace) -> int:
    checkpoint = find_checkpoint(args.checkpoint or BUILTIN, MODEL)
    model, labels = build_model(checkpoint, open_model_store(get_settings()), "cpu"), list(checkpoint.labels)
    split = None if args.split == "all" else args.split
    folder = load_image_folder(args.data, tuple(labels), split=split)
    report = evaluate_folder(model, labels, folder)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{args.split}: accuracy {report['accuracy']:.4f}, weighted F1 {report['weighted_f1']:.4f}, n={report['n']}")
    if args.record:
        test = {
            "split": args.split, "accuracy": report["accuracy"], "weighted_f1": report["weighted_f1"],
            "n": report["n"],
            "command": "python -m training evaluate face-encoder "
            + (f"--checkpoint {args.checkpoint} " if args.checkpoint else "")
            + f"--corpus {args.corpus} --data {args.data} --split {args.split} --out {args.out} --record",
        }
        metrics = {**checkpoint.metrics, "test": test}
        card = model_card({**checkpoint.manifest, "metrics": metrics})
        update_metrics(checkpoint, {"test": test}, card=card)
    return 0
