"""Benchmark code paths that CI cannot time: the paper-size GPU benchmark on tiny shapes of the same
model classes (its figures come only from a GPU run; this checks the code runs and measures)."""
import pytest

from benchmarks import gpu_paper


def test_gpu_paper_benchmark_runs_on_tiny_shapes(tmp_path):
    out = tmp_path / "gpu-paper.json"
    result = gpu_paper.main(["--tiny", "--device", "cpu", "--repeats", "1", "--steps", "1", "--out", str(out)])
    assert out.exists() and result["shapes"] == "tiny" and result["device"] == "cpu"
    farcer = result["farcer"]
    assert farcer["turns"] == 20 and farcer["shots"] == 7
    assert farcer["same_labels"] and farcer["max_abs_logprob_diff"] <= 1e-4
    assert result["mister-e"]["one_dialogue_s"] > 0
    for part in ("text-lora", "speech-lora"):
        assert result[part]["tokens_per_s"] > 0 and result[part]["trainable_params_m"] > 0


def test_paper_shapes_refuse_a_cpu(tmp_path, capsys):
    with pytest.raises(SystemExit):
        gpu_paper.main(["--device", "cpu", "--out", str(tmp_path / "x.json")])
    assert "need a CUDA device" in capsys.readouterr().err
