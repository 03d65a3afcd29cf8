"""Data-parallel training (training/distributed.py): two CPU processes (gloo) under `accelerate launch`
train MiSTER-E stage 2 and a FARCER LoRA head to the same losses and weights as one process on the
same global batches."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests import distributed_training
from training.mister_e import Stage2Config

ROOT = Path(__file__).resolve().parents[1]


def _gradient_free(name: str, value: torch.Tensor) -> torch.Tensor:
    """`value` without the attention key biases: softmax ignores a shift shared by all keys, so their
    true gradient is 0 and Adam turns float noise there into lr-sized steps of either sign."""
    if name.endswith("in_proj_bias"):  # q, k, v biases of nn.MultiheadAttention
        n = len(value) // 3
        return torch.cat([value[:n], value[2 * n :]])
    return value[:0] if name.endswith(".k.bias") else value


def _launch(out: Path, processes: int) -> dict:
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    if accelerate is None:
        pytest.skip("the accelerate command is not installed")
    # --multi_gpu starts the processes with torch's launcher; without CUDA, build_accelerator puts them
    # on the CPU and accelerate joins them with gloo (accelerate's --cpu alone starts one process).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
           "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [accelerate, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
         "-m", "tests.distributed_training", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    # progress bars fill stderr; the lines that say what went wrong are the others
    said = [line for line in done.stderr.splitlines() if line.strip() and not re.search(r"it/s|step/s|\[A|%\|", line)]
    assert done.returncode == 0, "\n".join(said[-60:])
    return json.loads((out / "result.json").read_text())


def test_two_processes_train_to_the_single_process_losses_and_weights(tmp_path):
    result, model, _ = distributed_training.run()
    farcer_result, farcer, packed = distributed_training.run_farcer()
    two = _launch(tmp_path / "two", 2)
    assert two["processes"] == 2

    # MiSTER-E: each process ran only its share of every global batch (3, 3 and 1 dialogues: 2+2+1 and
    # 1+1+0, the short shares padded by an unlabelled filler), never the whole batch (7 per epoch)
    cfg: Stage2Config = distributed_training.CFG
    assert two["seen_per_process"] == [(2 + 2 + 1) * cfg.epochs] * 2
    losses = [h["train_loss"] for h in result["history"]]
    assert len(set(losses)) == cfg.epochs  # the loss moves, so matching it is not a coincidence
    assert two["losses"] == pytest.approx(losses, abs=1e-5, rel=0)
    assert two["best_epoch"] == result["best_epoch"]
    single, launched = model.state_dict(), torch.load(tmp_path / "two" / "weights.pt")
    moved = max((single[k] - distributed_training.model().state_dict()[k]).abs().max().item() for k in single)
    assert moved > 1e-2  # training changed the weights well beyond the tolerance
    for name, value in single.items():
        torch.testing.assert_close(_gradient_free(name, launched[name]), _gradient_free(name, value),
                                   atol=1e-5, rtol=0, msg=name)

    # FARCER: rows of batches of 4, 4 and 1 packed 2+2+1 and 2+2+0 (+1 filler) per epoch, not 9
    assert packed == 9 * 2 and two["packed_per_process"] == [5 * 2, 5 * 2]
    farcer_losses = [row["train_label_loss"] for row in farcer_result["curve"]]
    assert two["farcer_losses"] == pytest.approx(farcer_losses, abs=1e-5, rel=0)
    assert two["farcer_best_step"] == farcer_result["best_step"]
    launched = torch.load(tmp_path / "two" / "farcer.pt")
    for name, value in farcer.trainable_state().items():
        torch.testing.assert_close(launched[name], value, atol=1e-5, rtol=0, msg=name)


def test_gradient_checkpointing_recomputes_a_lora_backbone_with_the_same_gradients():
    from transformers import Qwen2Config, Qwen2Model

    from models.encoders import apply_lora
    from training.distributed import enable_gradient_checkpointing

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    backbone = apply_lora(Qwen2Model(config).train(), r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    for name, p in backbone.named_parameters():
        if "lora_B" in name:  # LoRA starts with B = 0; a nonzero B makes every adapter's gradient nonzero
            torch.nn.init.normal_(p, std=0.1)
    calls = []
    # inside the layer (its own hooks stay out of the recomputation), and before forward: the
    # recomputation stops once it has what backward needs
    backbone.layers[0].self_attn.register_forward_pre_hook(lambda *_: calls.append(1))
    ids = torch.randint(0, 50, (2, 7))

    def gradients() -> dict[str, torch.Tensor]:
        backbone.zero_grad(set_to_none=True)
        backbone(input_ids=ids).last_hidden_state.square().mean().backward()
        return {n: p.grad.clone() for n, p in backbone.named_parameters() if p.requires_grad}

    plain = gradients()
    assert len(calls) == 1
    assert enable_gradient_checkpointing(backbone) == 1
    checkpointed = gradients()
    assert len(calls) == 3  # forward, then the attention recomputed in backward
    assert plain.keys() == checkpointed.keys() and all(g.abs().sum() > 0 for g in plain.values())
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)
