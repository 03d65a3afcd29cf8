"""Whisper ASR through the real transformers pipeline, with a tiny random Whisper built locally."""
from __future__ import annotations

import time

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from tokenizers import pre_tokenizers
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperTokenizer,
)

from backend.asr import chunks_to_turns, load_asr, transcribe
from backend.dialogue import Turn
from backend.errors import InputError, ModelUnavailableError

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
    "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>",
]


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory) -> str:
    """A saved random Whisper: byte-level vocab, Whisper's special and timestamp tokens, tiny dims."""
    out = tmp_path_factory.mktemp("tiny-whisper")
    vocab = {token: i for i, token in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tokenizer = WhisperTokenizer(vocab=vocab, merges=[])
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    tokenizer.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(1501)])  # after <|notimestamps|>
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    config = WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=80, d_model=16, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        max_source_positions=1500, max_target_positions=64,
        pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot,
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, bos_token_id=eot,
        no_timestamps_token_id=ids["<|notimestamps|>"], lang_to_id={"<|en|>": ids["<|en|>"]},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        is_multilingual=False, max_initial_timestamp_index=50, max_length=48, begin_suppress_tokens=[eot],
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(out)
    return str(out)


def _assert_turns_within(turns: list[Turn], duration_s: float) -> None:
    assert turns, "the tiny model with seed 0 emits timestamped text"
    for turn in turns:
        assert isinstance(turn.start, float) and isinstance(turn.end, float)
        assert 0.0 <= turn.start <= turn.end <= duration_s
        assert turn.speaker == "Speaker"
        assert isinstance(turn.text, str) and turn.text and turn.text == turn.text.strip()


def test_transcribe_runs_the_real_pipeline(tiny_whisper):
    audio = np.random.default_rng(0).standard_normal(16_000 * 3).astype(np.float32) * 0.1
    turns = transcribe(audio, 16_000, tiny_whisper)
    _assert_turns_within(turns, 3.0)
    starts = [t.start for t in turns]
    assert starts == sorted(starts)


def test_transcribe_resamples_and_downmixes(tiny_whisper):
    stereo = np.random.default_rng(1).standard_normal((8_000 * 2, 2)).astype(np.float32) * 0.1
    _assert_turns_within(transcribe(stereo, 8_000, tiny_whisper), 2.0)


def test_transcribe_rejects_bad_audio(tiny_whisper):
    with pytest.raises(InputError, match="non-empty"):
        transcribe(np.zeros(0, dtype=np.float32), 16_000, tiny_whisper)
    with pytest.raises(InputError, match="sample rate"):
        transcribe(np.zeros(1600, dtype=np.float32), 0, tiny_whisper)


def test_load_asr_is_cached_per_model_and_device(tiny_whisper):
    assert load_asr(tiny_whisper, "cpu") is load_asr(tiny_whisper, "cpu")


@pytest.mark.parametrize("model_id", ["no-such-org/whisper-nowhere", "not a valid id!!"])
def test_missing_model_fails_fast_offline(monkeypatch, model_id):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    began = time.monotonic()
    with pytest.raises(ModelUnavailableError, match="HF_HUB_OFFLINE") as info:
        load_asr(model_id, "cpu")
    assert time.monotonic() - began < 5
    assert model_id in str(info.value)


def test_folder_without_a_model_is_unavailable(tmp_path):
    with pytest.raises(ModelUnavailableError, match="cannot load"):
        load_asr(str(tmp_path), "cpu")


def test_chunks_clip_to_audio_and_drop_empty_or_late():
    chunks = [
        {"timestamp": (-0.2, 1.0), "text": " Hello there. "},
        {"timestamp": (1.5, 2.0), "text": "   "},
        {"timestamp": (2.5, None), "text": "Last words."},
        {"timestamp": (9.0, 9.5), "text": "Beyond the audio."},
    ]
    turns = chunks_to_turns(chunks, duration_s=4.0)
    assert [(t.start, t.end, t.text) for t in turns] == [
        (0.0, 1.0, "Hello there."),
        (2.5, 4.0, "Last words."),
    ]


def test_chunks_merge_only_mid_sentence_with_a_short_gap():
    chunks = [
        {"timestamp": (0.0, 1.0), "text": "I was going"},
        {"timestamp": (1.1, 2.0), "text": "to say."},
        {"timestamp": (2.1, 3.0), "text": "New sentence"},
        {"timestamp": (3.5, 4.0), "text": "after a pause"},
    ]
    turns = chunks_to_turns(chunks, duration_s=5.0)
    assert [(t.start, t.end, t.text) for t in turns] == [
        (0.0, 2.0, "I was going to say."),
        (2.1, 3.0, "New sentence"),
        (3.5, 4.0, "after a pause"),
    ]
