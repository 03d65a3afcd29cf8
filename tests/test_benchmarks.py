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


def test_simulated_annotator_corrects_training_actors_and_holds_out_the_test_actors(tmp_path):
    """`benchmarks.retraining --domain ravdess-aligned`: corrections come from RAVDESS's training actors
    only, whole dialogues until the turn budget is met, and the held-out dialogues are the test actors'."""
    from benchmarks.retraining import simulated_corrections

    for actor in (1, 2, 18, 19, 21, 24):
        folder = tmp_path / f"Actor_{actor:02d}"
        folder.mkdir()
        for emotion in range(1, 9):
            (folder / f"03-01-{emotion:02d}-01-01-01-{actor:02d}.wav").write_bytes(b"")
    corrected, held_out = simulated_corrections(tmp_path, 10, seed=0, domain="ravdess-aligned")
    assert len(corrected) == 10 and {d.split for d in corrected} == {"train"}
    assert {d.turns[0].speaker for d in held_out} == {"Actor_21", "Actor_24"} and len(held_out) == 16
    again, _ = simulated_corrections(tmp_path, 10, seed=0, domain="ravdess-aligned")
    assert [d.id for d in again] == [d.id for d in corrected]
    other, _ = simulated_corrections(tmp_path, 10, seed=1, domain="ravdess-aligned")
    assert [d.id for d in other] != [d.id for d in corrected]
