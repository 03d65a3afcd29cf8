"""Embedding cache (hits, keys, atomic shards) and tiny stage-1 runs that write and extract through it."""
from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf
from safetensors.numpy import load_file

from backend.dialogue import Dialogue, Turn
from backend.errors import InputError
from backend.packaged import PACKAGED
from backend.encoders import speech_components
from training.embedding_cache import EmbeddingCache, array_key, file_key, text_key
from training.stage1 import extract_embeddings, train_speech_encoder, train_text_encoder


class CountingEncoder:
    """encode_fn that records every item it is asked to encode."""

    def __init__(self):
        self.seen: list[str] = []

    def __call__(self, batch: list[str]) -> np.ndarray:
        self.seen.extend(batch)
        return np.array([[len(text), text.count("a"), 1.0] for text in batch], dtype=np.float32)


def test_cache_hits_avoid_re_encoding(tmp_path):
    encode = CountingEncoder()
    texts = ["hello", "banana", "hello", "abc"]
    first = EmbeddingCache(tmp_path, "text-minilm", "v1").encode_cached(texts, encode, batch_size=2)
    assert sorted(encode.seen) == ["abc", "banana", "hello"]  # the duplicate is encoded once
    np.testing.assert_array_equal(first[1], [6, 3, 1])
    np.testing.assert_array_equal(first[0], first[2])

    reopened = EmbeddingCache(tmp_path, "text-minilm", "v1")  # a fresh process reads the shards
    encode.seen.clear()
    again = reopened.encode_cached(["abc", "new one", "banana"], encode, batch_size=2)
    assert encode.seen == ["new one"]
    np.testing.assert_array_equal(again[[0, 2]], first[[3, 1]])
    assert len(EmbeddingCache(tmp_path, "text-minilm", "v1")) == 4


def test_versions_and_encoders_do_not_share_vectors(tmp_path):
    EmbeddingCache(tmp_path, "text-minilm", "v1").put_many({text_key("hi"): np.ones(3)})
    assert EmbeddingCache(tmp_path, "text-minilm", "v2").get_many([text_key("hi")]) == {}
    assert EmbeddingCache(tmp_path, "speech/features", "v1").get_many([text_key("hi")]) == {}
    assert text_key("hi") in EmbeddingCache(tmp_path, "text-minilm", "v1").get_many([text_key("hi")])


def test_put_is_atomic_when_the_rename_fails(tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path, "enc", "v1")
    cache.put_many({"a": np.zeros(2)})

    def crash(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        cache.put_many({"b": np.ones(2)})
    monkeypatch.undo()
    fresh = EmbeddingCache(tmp_path, "enc", "v1")
    assert set(fresh.get_many(["a", "b"])) == {"a"}  # the half-written shard is never read
    assert len(list(cache.dir.glob("*.npz"))) == 1


def test_content_keys_follow_content(tmp_path):
    path = tmp_path / "clip.wav"
    sf.write(path, np.zeros(1600, np.float32), 16000)
    before = file_key(path)
    assert file_key(path) == before
    sf.write(path, np.zeros(3200, np.float32), 16000)
    assert file_key(path) != before
    audio = np.arange(10, dtype=np.float32)
    assert array_key(audio, 16000) == array_key(audio.copy(), 16000)
    assert array_key(audio, 16000) != array_key(audio, 8000)
    assert text_key("Hi") != text_key("hi")


WORDS = {"joy": "great wonderful happy", "anger": "furious hate angry", "neutral": "table chair okay"}


def text_dialogues(n: int, split: str) -> list[Dialogue]:
    rng = np.random.default_rng(len(split))
    dialogues = []
    for d in range(n):
        turns = []
        for t in range(4):
            label = list(WORDS)[(d + t) % 3]
            words = rng.permutation(WORDS[label].split()).tolist()
            turns.append(Turn(f"S{t % 2}", None, None, " ".join(words), label=label))
        dialogues.append(Dialogue(f"{split}/{d}", turns, split=split, corpus="synthetic"))
    return dialogues


def test_tiny_text_stage1_writes_adapters_and_extracts_through_cache(tmp_path):
    labels = ["neutral", "joy", "anger"]
    out = tmp_path / "text"
    ckpt = train_text_encoder(text_dialogues(4, "train"), text_dialogues(2, "validation"), labels,
                              epochs=2, lr=1e-3, batch_size=8, lora=True, seed=0, out_dir=out,
                              embed_dim=16, device="cpu")
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "manifest.json"}
    assert ckpt.model == "text-encoder" and ckpt.labels == tuple(labels)
    assert ckpt.data == {"n_train": 16, "n_val": 8} and len(ckpt.metrics["history"]) == 2
    assert 1 <= ckpt.metrics["best_epoch"] <= 2
    assert ckpt.components == {"backbone": PACKAGED["minilm"].component()}
    saved = load_file(str(out / "model.safetensors"))
    backbone_keys = [k for k in saved if k.startswith("backbone.")]
    assert backbone_keys and all(".lora_" in k for k in backbone_keys)  # adapters, not the frozen MiniLM
    assert saved["head.project.weight"].shape == (16, 2 * 384)

    dialogues = text_dialogues(2, "test") + [Dialogue("empty-text", [Turn("A", None, None, " ")])]
    embeddings = extract_embeddings(ckpt, dialogues, cache_root=tmp_path / "cache", device="cpu")
    assert embeddings["test/0"].vectors.shape == (4, 16) and embeddings["test/0"].present.all()
    assert not embeddings["empty-text"].present.any() and not embeddings["empty-text"].vectors.any()
    shards = sorted((tmp_path / "cache").rglob("*.npz"))
    again = extract_embeddings(ckpt, dialogues, cache_root=tmp_path / "cache", device="cpu")
    assert sorted((tmp_path / "cache").rglob("*.npz")) == shards  # all hits, nothing new written
    np.testing.assert_allclose(again["test/1"].vectors, embeddings["test/1"].vectors)


def tone_dialogues(root, actors: range, split: str) -> list[Dialogue]:
    """One-turn dialogues of 0.6 s tones whose pitch band is the label (RAVDESS-like layout)."""
    sr, dialogues = 16000, []
    for actor in actors:
        for i, (label, base) in enumerate([("neutral", 150.0), ("joy", 600.0), ("fear", 2400.0)]):
            freq = base * (1 + 0.05 * actor)
            t = np.arange(int(0.6 * sr)) / sr
            path = root / f"a{actor}_{i}.flac"
            sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr)
            dialogues.append(Dialogue(path.stem, [Turn(f"Actor_{actor}", None, None, "", label=label, audio=path)],
                                      split=split))
    return dialogues


def test_tiny_speech_stage1_learns_pitch_and_caches_features(tmp_path):
    labels = ["neutral", "joy", "anger", "fear"]
    train, val = tone_dialogues(tmp_path, range(6), "train"), tone_dialogues(tmp_path, range(6, 8), "validation")
    cache = tmp_path / "cache"
    ckpt = train_speech_encoder(train, val, labels, epochs=15, lr=3e-3, batch_size=8, seed=0,
                                out_dir=tmp_path / "speech", cache_root=cache, device="cpu")
    assert ckpt.metrics["best_val_weighted_f1"] == 1.0
    assert ckpt.config["kind"] == "whisper-base-pooled" and ckpt.config["encoder"]["in_dim"] == 1024
    assert ckpt.components == speech_components()
    shards = sorted(cache.rglob("*.npz"))
    assert len(shards) == 2  # the pooled Whisper states of train and validation clips

    extract = extract_embeddings(ckpt, val, cache_root=cache, device="cpu")
    assert sorted(cache.rglob("*.npz")) == shards  # the same recordings: all cache hits

    no_audio = Dialogue("silent", [Turn("A", None, None, "hi", label="joy")])
    embeddings = extract_embeddings(ckpt, val + [no_audio], cache_root=cache, device="cpu")
    assert embeddings[val[0].id].vectors.shape == (1, 128) and embeddings[val[0].id].present.all()
    assert not embeddings["silent"].present.any()
    np.testing.assert_allclose(extract[val[0].id].vectors, embeddings[val[0].id].vectors, atol=1e-5)


def test_stage1_needs_labelled_validation_turns(tmp_path):
    with pytest.raises(InputError, match="validation"):
        train_speech_encoder(tone_dialogues(tmp_path, range(1), "train"), [], ["neutral", "joy", "fear"],
                             out_dir=tmp_path / "out", cache_root=tmp_path / "cache", device="cpu")
    bad = [Dialogue("d1", [Turn("A", None, None, "x", label="bored")])]
    with pytest.raises(InputError, match="dialogue d1 turn 0"):
        train_text_encoder(bad, bad, ["neutral", "joy"], out_dir=tmp_path / "out", device="cpu")
