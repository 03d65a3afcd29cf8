"""GPU checks (`pytest -m gpu`; skipped without CUDA): device placement of the served models, bf16
cores, and incremental FARCER decoding equal to re-encoding on the GPU."""
import pytest
import torch

from backend.analyze import analyze
from backend.settings import get_settings
from benchmarks import gpu_paper
from benchmarks.farcer_incremental import synthetic_dialogue, synthetic_pool
from backend.farcer_processor import sample_shots
from models.farcer import FarcerConfig
from tests.test_farcer import TINY

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture
def exact_matmuls():
    """fp32 matmuls in full precision (TF32 would make the equality check meaningless)."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _every_turn(farcer, processor, turns: int = 12, shots: int = 3):
    dim = farcer.config.image_dim
    dialogue, faces = synthetic_dialogue(turns, dim, seed=1)
    examples = sample_shots(synthetic_pool(10, dim), shots, seed=0)
    with torch.no_grad():
        prefix = processor.encode_prefix(farcer, examples)
        incremental = processor.label_dialogue(farcer, dialogue, faces, prefix, turns_per_pass=5)
        naive = processor.label_dialogue_naive(farcer, dialogue, faces, prefix)
    return incremental, naive


def test_incremental_decoding_equals_reencoding_on_gpu_fp32(exact_matmuls):
    from benchmarks.farcer_incremental import random_farcer

    farcer, processor = random_farcer(FarcerConfig(image_dim=16), **TINY)
    farcer.to("cuda")
    assert farcer.device.type == "cuda" and next(farcer.projector.parameters()).device.type == "cuda"
    incremental, naive = _every_turn(farcer, processor)
    assert incremental.logprobs.device.type == "cuda"
    assert (incremental.logprobs - naive.logprobs).abs().max() <= 1e-4
    assert incremental.labels == naive.labels


def test_bf16_core_labels_every_turn_like_reencoding():
    figures = gpu_paper.farcer_figures("cuda", torch.bfloat16, tiny=True, repeats=1)
    assert figures["same_labels"], figures
    # bf16 keeps ~3 significant digits; the two paths sum in different orders.
    assert figures["max_abs_logprob_diff"] < 0.1, figures


def test_served_models_run_on_the_gpu_and_agree_with_the_cpu(monkeypatch, data_dir, dialogue):
    from backend.model_store import open_model_store
    from backend.registry import model_spec, resolve

    monkeypatch.setenv("ERC_DEVICE", "cuda")
    get_settings.cache_clear()
    settings, store, spec = get_settings(), open_model_store(get_settings()), model_spec("farcer")
    assert settings.torch_dtype() == torch.bfloat16  # the default on a GPU
    farcer = resolve(spec.loader)(store.active("farcer", "farcer"), store, settings).farcer
    assert farcer.device.type == "cuda" and farcer.lm.get_input_embeddings().weight.dtype == torch.bfloat16
    assert next(farcer.projector.parameters()).device.type == "cuda"

    video, subtitles = dialogue
    docs = {}
    monkeypatch.setenv("ERC_DTYPE", "float32")  # same weights on both devices: the answers must agree
    for device in ("cpu", "cuda"):
        monkeypatch.setenv("ERC_DEVICE", device)
        get_settings.cache_clear()
        docs[device] = analyze(video, subtitles=subtitles)
    assert set(docs["cuda"]["models"]) == {"mister_e", "farcer"}
    for key in docs["cuda"]["models"]:
        cpu = [t[key]["probs"] for t in docs["cpu"]["turns"]]
        gpu = [t[key]["probs"] for t in docs["cuda"]["turns"]]
        for a, b in zip(cpu, gpu):
            assert max(abs(a[label] - b[label]) for label in a) < 1e-3, key


def test_paper_benchmark_runs_in_bf16_on_the_gpu(tmp_path):
    result = gpu_paper.main(["--tiny", "--device", "cuda", "--repeats", "1", "--steps", "1", "--out", str(tmp_path / "g.json")])
    assert result["dtype"] == "bfloat16" and result["device"] == torch.cuda.get_device_name()
    assert result["text-lora"]["tokens_per_s"] > 0 and result["speech-lora"]["tokens_per_s"] > 0
    assert all(part["peak_gib"] > 0 for part in (result[k] for k in ("farcer", "mister-e", "text-lora", "speech-lora")))
