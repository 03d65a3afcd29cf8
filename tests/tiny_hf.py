"""Tiny randomly initialised Hugging Face models of the paper profile's classes (Qwen2 text, Qwen2-Audio,
Llama, ViT), built from their config classes and saved as local folders: nothing comes from a hub."""
from __future__ import annotations

from pathlib import Path

import torch

QWEN_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def tiny_tokenizer():
    """A byte-level Qwen2 tokenizer with no merges (one token per byte) plus the audio tokens."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    vocab = {c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}
    return Qwen2Tokenizer(vocab=vocab, merges=[], extra_special_tokens=["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"])


def save_qwen2_text(folder: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide Qwen2Model and its tokenizer in `folder`."""
    from transformers import Qwen2Config, Qwen2Model

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    Qwen2Model(Qwen2Config(vocab_size=len(tokenizer), **QWEN_TEXT)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_qwen2_audio(folder: Path, seed: int = 0) -> Path:
    """A Qwen2-Audio model (1-layer, 16-wide audio tower over 2 s windows of 16 mel bins) and its processor."""
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor, WhisperFeatureExtractor

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    processor = Qwen2AudioProcessor(WhisperFeatureExtractor(feature_size=16, chunk_length=2), tokenizer)
    config = Qwen2AudioConfig(
        audio_config=dict(d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                          num_mel_bins=16, max_source_positions=100),
        text_config=dict(model_type="qwen2", vocab_size=len(tokenizer), **QWEN_TEXT),
        audio_token_id=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    Qwen2AudioForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def save_llama(folder: Path, words: list[str], seed: int = 0) -> Path:
    """A 2-layer, 32-wide LlamaForCausalLM with a word-level chat tokenizer covering `words` and the labels."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from benchmarks.farcer_incremental import word_tokenizer

    torch.manual_seed(seed)
    tokenizer = word_tokenizer(words)
    tiny = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), **tiny)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_vit(folder: Path, hidden_size: int = 16, seed: int = 0) -> Path:
    """A 1-layer ViT (32x32 images, 16x16 patches) without pooler, and its image processor."""
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    torch.manual_seed(seed)
    vit = ViTConfig(hidden_size=hidden_size, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                    image_size=32, patch_size=16)
    ViTModel(vit, add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder
