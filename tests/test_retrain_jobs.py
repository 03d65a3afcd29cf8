"""Retraining as a background job in its own process: one at a time, progress, cancel, its result as a
new version, activation, and who may do it on a public Space."""

from __future__ import annotations

import pytest

from backend.errors import InputError, ModelUnavailableError
from backend.retrain_jobs import progress_of
from backend.service import Service
from backend.settings import Settings
from tests.test_mister_e_training import TINY, write_csv_corpus

JOB_WAIT_S = 600  # a hang guard, not a speed target


def test_progress_reads_the_last_bar_and_stage():
    log = ("stage: training\nmister-e stage 2:  20%|##   | 1/5 [00:02<00:08, 2.0s/it]\r"
           "mister-e stage 2:  40%|####  | 2/5 [00:04<01:06, 2.0s/it]")
    assert progress_of(log) == {"progress": 0.4, "eta_s": 66, "message": "training: mister-e stage 2 2/5"}
    assert progress_of("stage: comparing with the active version\n") == {
        "progress": None, "eta_s": None, "message": "comparing with the active version"}


def _labelled(settings: Settings, dialogue) -> None:
    service = Service.open(settings)
    try:
        doc = service.analyze(*dialogue)
        for turn in doc["turns"]:
            service.save_correction(turn["turn_id"], "anger", "ann")
    finally:
        service.close()


@pytest.fixture
def retraining(tmp_path, models, dialogue):
    corpus = write_csv_corpus(tmp_path / "corpus", audio=False, dialogues={"train": 3, "validation": 1})
    settings = Settings(data_dir=tmp_path / "data", retrain_corpus="csv", retrain_data=corpus,
                        retrain_args={"mister-e": " ".join([*TINY, "--cache", str(tmp_path / "cache")])})
    _labelled(settings, dialogue)
    service = Service.open(settings)
    yield service
    service.close()


def test_a_job_trains_a_version_that_can_be_activated(retraining):
    service = retraining
    started = service.retrain("mister-e", {"corrections_weight": 2})
    with pytest.raises(InputError, match="a retraining job is running"):
        service.retrain("mister-e")
    status = service.jobs.wait(started["job_id"], JOB_WAIT_S)
    assert status["state"] == "succeeded", status["message"]
    assert service.jobs.latest()["job_id"] == started["job_id"], "a reloaded page finds the job"
    version = status["version"]
    comparison = status["metrics"]["comparison"]
    assert comparison["corpus validation"]["candidate"]["n"] == 4
    assert "error" in comparison["held-out corrections"]["candidate"], "one video: nothing held out"
    [row] = [r for r in service.model_versions() if r["version"] == version]
    assert not row["active"] and row["data"]["corrections"]["turns"] == 3 and "path" not in row
    assert service.activate_model("mister-e", version) == {"model": "mister-e", "version": version}
    assert [r["version"] for r in service.model_versions() if r["model"] == "mister-e" and r["active"]] == [version]
    again = service.retrain("mister-e", {"epochs": 1})  # the finished job no longer blocks
    service.jobs.cancel(again["job_id"])
    assert service.job_status(again["job_id"])["state"] == "cancelled"


def test_bad_requests_say_what_to_do(tmp_path):
    service = Service.open(Settings(data_dir=tmp_path / "data"))
    try:
        with pytest.raises(InputError, match="ERC_RETRAIN_DATA"):
            service.retrain("mister-e")
        with pytest.raises(InputError, match="unknown model 'bert'"):
            service.retrain("bert")
        with pytest.raises(InputError, match="no retraining job"):
            service.job_status("../etc")
        with pytest.raises(ModelUnavailableError, match="no mister-e version '000000000000'"):
            service.activate_model("mister-e", "000000000000")
    finally:
        service.close()


def test_on_a_public_space_only_model_managers_retrain_or_activate(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", require_login=True, model_managers="boss")
    service = Service.open(settings)
    try:
        for user in (None, "eve"):
            with pytest.raises(InputError, match="ERC_MODEL_MANAGERS"):
                service.retrain("mister-e", username=user)
            with pytest.raises(InputError, match="ERC_MODEL_MANAGERS"):
                service.activate_model("mister-e", "mister-e", username=user)
        with pytest.raises(InputError, match="ERC_RETRAIN_DATA"):  # allowed: it gets as far as the corpus
            service.retrain("mister-e", username="boss")
    finally:
        service.close()


def test_two_processes_starting_at_once_run_one_job(tmp_path, monkeypatch):
    """Two app processes (two RetrainJobs over one jobs folder) press Retrain together, many times:
    exactly one job starts each time and the other is told a job is running or starting."""
    import sys

    from backend.retrain_jobs import RetrainJobs
    from tests.concurrency import run_at_once

    settings = Settings(data_dir=tmp_path / "data")
    monkeypatch.setattr(RetrainJobs, "command", lambda self, *a: [sys.executable, "-c", "import time; time.sleep(60)"])
    for _ in range(10):
        apps, started, refused = [RetrainJobs(settings), RetrainJobs(settings)], [], []

        def press(worker: int, _: int) -> None:
            try:
                started.append((apps[worker], apps[worker].start("mister-e")["job_id"]))
            except InputError as exc:
                refused.append(str(exc))

        run_at_once(press, threads=2, per_thread=1)
        for app, job_id in started:
            app.cancel(job_id)
        assert len(started) == 1, f"{len(started)} jobs started at once"
        assert len(refused) == 1 and ("is running" in refused[0] or "is starting" in refused[0]), refused
