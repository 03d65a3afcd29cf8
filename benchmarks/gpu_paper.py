"""Paper-size figures for a GPU machine: FARCER every-turn labels with a Llama-3-8B-shaped core,
MiSTER-E stage 2 at the paper's sizes, and LoRA training throughput of both stage-1 encoders
(Qwen2.5-7B text, Qwen2-Audio-7B's audio tower for speech).

    python -m benchmarks.gpu_paper --out runs/gpu-paper.json            # CUDA, bf16, paper shapes
    python -m benchmarks.gpu_paper --tiny --out runs/gpu-paper-tiny.json # same code, tiny shapes, any device

Weights are random (the real models' shapes, built from their config classes on the device; nothing
comes from a hub), so the figures are speed and memory only. Prints JSON with the device's name.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from backend.encoders import tower_inputs
from backend.labels import MELD7
from benchmarks.farcer_incremental import built_on, random_farcer, timed
from benchmarks.farcer_incremental import run as farcer_every_turn
from models.encoders import (
    SPEECH_LORA,
    AudioTowerEncoder,
    HeadConfig,
    TextUtteranceEncoder,
    apply_lora,
    lora_dict,
    text_lora_spec,
)
from models.farcer import FarcerConfig
from models.mister_e import MisterE, MisterEConfig

# Shapes of the papers' models (their published configs), and tiny ones of the same classes.
LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0)
QWEN25_7B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                 num_attention_heads=28, num_key_value_heads=4)
QWEN2_AUDIO_TOWER = dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
                         num_mel_bins=128)  # Qwen2-Audio-7B's Whisper-large-v3-shaped audio tower
VIT_DIM = 768  # the ViT face-expression encoder's CLS vector
TINY_LLAMA = dict(vocab_size=4000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2)
TINY_QWEN = dict(vocab_size=4000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2)
TINY_TOWER = dict(d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64, num_mel_bins=16)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def farcer_figures(device: str, dtype: torch.dtype, tiny: bool, repeats: int) -> dict:
    """Every-turn labels of a 20-turn dialogue, 7-shot prefix, incremental vs re-encoding."""
    sizes = dict(TINY_LLAMA if tiny else LLAMA3_8B)
    config = FarcerConfig(max_context=8192, image_dim=16 if tiny else VIT_DIM)
    farcer, processor = random_farcer(config, sizes.pop("vocab_size"), 8192, device=device, dtype=dtype, **sizes)
    with torch.no_grad():
        figures = farcer_every_turn(farcer, processor, turns=20, shots=7, repeats=repeats)
    figures["core_params_b"] = round(sum(p.numel() for p in farcer.lm.parameters()) / 1e9, 3)
    # The app encodes the instructions and examples once per process: a dialogue costs the rest.
    figures["dialogue_s_prefix_cached"] = round(figures["incremental_s"] - figures["prefix_s"], 3)
    del farcer
    return figures


def mister_e_figures(device: str, dtype: torch.dtype, tiny: bool, repeats: int) -> dict:
    """Stage-2 inference at the paper's sizes: one 20-turn dialogue, and a batch of 32 dialogues."""
    config = MisterEConfig.tiny(len(MELD7)) if tiny else MisterEConfig.paper(len(MELD7))
    torch.manual_seed(0)
    model = built_on(lambda: MisterE(config), device, dtype).eval()
    result = {"params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}
    for name, batch in (("one_dialogue_s", 1), ("batch32_s", 32)):
        speech = torch.randn(batch, 20, config.speech_dim, device=device, dtype=dtype)
        text = torch.randn(batch, 20, config.text_dim, device=device, dtype=dtype)
        mask = torch.ones(batch, 20, dtype=torch.bool, device=device)
        with torch.no_grad():
            run = lambda: model(speech, text, mask).logits.float().sum().item()  # noqa: E731 (.item() syncs)
            run()  # warm-up: kernels chosen and memory allocated
            result[name] = round(timed(run, repeats)[0], 4)
    return result


def lora_throughput(
    encoder: torch.nn.Module, batch: dict[str, torch.Tensor], tokens: int, device: str, steps: int
) -> dict:
    """Training tokens/s of LoRA + head: forward, focal-free cross-entropy, backward, AdamW step."""
    encoder.train()
    params = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    target = torch.zeros(len(next(iter(batch.values()))), dtype=torch.long, device=device)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(encoder(**batch).float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)

    step()  # warm-up: kernels chosen and optimiser state allocated
    seconds, _ = timed(step, steps)
    return {
        "tokens_per_step": tokens,
        "step_s": round(seconds, 4),
        "tokens_per_s": round(tokens / seconds, 1),
        "trainable_params_m": round(sum(p.numel() for p in params) / 1e6, 2),
    }


def text_lora_figures(device: str, dtype: torch.dtype, tiny: bool, steps: int) -> dict:
    """Qwen2.5-7B-shaped backbone with the paper's text LoRA, 16 utterances x 64 tokens a step."""
    from transformers import Qwen2Config, Qwen2Model

    sizes = TINY_QWEN if tiny else QWEN25_7B
    torch.manual_seed(0)
    backbone = built_on(lambda: Qwen2Model(Qwen2Config(**sizes)), device, dtype)
    backbone.activation_checkpointing_enable()
    apply_lora(backbone, **lora_dict(text_lora_spec(backbone)))
    encoder = TextUtteranceEncoder(backbone, HeadConfig(n_labels=len(MELD7))).to(device)
    ids = torch.randint(0, sizes["vocab_size"], (16, 64), device=device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    figures = lora_throughput(encoder, batch, ids.numel(), device, steps)
    del encoder, backbone
    return figures


def speech_lora_figures(device: str, dtype: torch.dtype, tiny: bool, steps: int) -> dict:
    """Qwen2-Audio-7B's audio tower (Whisper-large-shaped) with the speech LoRA, 8 clips of 5 s a step
    (each padded to the tower's 30 s window, its padding masked out); tokens are the tower's frames."""
    from transformers import Qwen2AudioEncoder, Qwen2AudioEncoderConfig, WhisperFeatureExtractor

    sizes = TINY_TOWER if tiny else QWEN2_AUDIO_TOWER
    extractor = WhisperFeatureExtractor(feature_size=sizes["num_mel_bins"])
    torch.manual_seed(0)
    tower = built_on(lambda: Qwen2AudioEncoder(Qwen2AudioEncoderConfig(**sizes)), device, dtype)
    tower.activation_checkpointing_enable()
    apply_lora(tower, **lora_dict(SPEECH_LORA))
    encoder = AudioTowerEncoder(tower, HeadConfig(n_labels=len(MELD7))).to(device)
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(5 * 16000).astype(np.float32) * 0.1 for _ in range(8)]
    batch = {k: v.to(device) for k, v in tower_inputs(extractor, clips).items()}
    frames = len(clips) * (batch["input_features"].shape[-1] // 2)  # the tower's positions (conv stride 2)
    figures = lora_throughput(encoder, batch, frames, device, steps)
    del encoder, tower
    return figures


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes of the same classes (a code check on any device)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="timed LoRA training steps per encoder")
    parser.add_argument("--only", choices=["farcer", "mister-e", "text-lora", "speech-lora"], action="append",
                        help="run only these parts (repeatable; default all)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if not args.tiny and not args.device.startswith("cuda"):
        parser.error("paper shapes need a CUDA device (16 GB of bf16 weights per model); use --tiny elsewhere")
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    parts = {
        "farcer": lambda: farcer_figures(args.device, dtype, args.tiny, args.repeats),
        "mister-e": lambda: mister_e_figures(args.device, dtype, args.tiny, args.repeats),
        "text-lora": lambda: text_lora_figures(args.device, dtype, args.tiny, args.steps),
        "speech-lora": lambda: speech_lora_figures(args.device, dtype, args.tiny, args.steps),
    }
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    result: dict = {"device": name, "dtype": str(dtype).removeprefix("torch."), "shapes": "tiny" if args.tiny else "paper"}
    for part in args.only or list(parts):
        result[part] = parts[part]()
        if args.device.startswith("cuda"):
            result[part]["peak_gib"] = round(torch.cuda.max_memory_allocated(args.device) / 2**30, 2)
            torch.cuda.reset_peak_memory_stats(args.device)
            torch.cuda.empty_cache()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
