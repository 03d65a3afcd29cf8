"""The registry drives the pipeline, the schema and the page: a third model is one entry plus its code."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pytest

from backend import predictors, registry
from backend.errors import InputError
from backend.registry import ModelSpec, TurnField, model_spec, resolve
from backend.schema import SchemaError, validate_analysis
from backend.service import Service
from backend.settings import Settings
from models.mister_e import EXPERTS
from tests.app_helpers import FarcerDouble, MisterEDouble, install, peaked, write_dialogue
from ui import charts
from ui.layout import build_app
from ui.results import results_table, table_columns, teaching_html

LEXICON = ModelSpec(
    name="lexicon",
    key="lexicon",
    title="Lexicon",
    summary="emotion words counted per turn",
    config_class="models.mister_e:MisterEConfig",
    builder="tests.test_registry:not_used",
    loader="tests.test_registry:not_used",
    checkpoints={"offline": "lexicon"},
    fields=(
        TurnField("mix", "weights", "mix", ("words", "punctuation")),
        TurnField("votes", "distributions", "cue votes", ("words", "punctuation"), weighted_by="mix"),
    ),
    explanation="Each cue votes; the mix weighs the cues.",
    colour="#000000",
)


@dataclass
class LexiconDouble:
    version: str = "lex-1"
    versions: dict = field(default_factory=lambda: {"lexicon": "lex-1"})

    def predict(self, turns, inputs, labels, explain=False):
        rows = []
        for i, _ in enumerate(turns):
            votes = {"words": peaked(labels, i + 2, 0.8), "punctuation": None}
            rows.append({"label": labels[(i + 2) % len(labels)], "probs": votes["words"],
                         "mix": {"words": 1.0, "punctuation": 0.0}, "votes": votes})
        return rows, []


@pytest.fixture
def third_model(monkeypatch):
    monkeypatch.setattr(registry, "MODELS", (*registry.MODELS, LEXICON))


@pytest.fixture
def service(tmp_path):
    service = Service.open(Settings(data_dir=tmp_path / "data"))
    yield service
    service.close()


def test_every_entry_names_real_code_and_a_shipped_offline_checkpoint():
    from backend.model_store import open_model_store
    from backend.settings import get_settings

    store = open_model_store(get_settings())
    for spec in registry.MODELS:
        assert callable(resolve(spec.builder)) and callable(resolve(spec.loader))
        served = resolve(spec.loader.split(":")[0] + ":MODEL")
        assert served == spec.name, "the loader serves checkpoints of the registered model name"
        assert isinstance(resolve(spec.config_class), type)
        assert store.find(spec.name, spec.checkpoints["offline"]).model == spec.name
    assert model_spec("mister_e") is model_spec("mister-e")
    assert model_spec("mister-e").field("weights").over == EXPERTS, "the experts are named in models.mister_e"
    with pytest.raises(InputError, match="unknown model 'nope'; choose one of mister-e, farcer"):
        model_spec("nope")


def test_a_third_model_flows_through_pipeline_schema_and_page(tmp_path, service, third_model, monkeypatch):
    install(monkeypatch, MisterEDouble(), FarcerDouble())
    monkeypatch.setitem(predictors.PREDICTOR_LOADERS, "lexicon", lambda profile, settings: LexiconDouble())
    doc = service.analyze(*write_dialogue(tmp_path))
    assert doc["models"]["lexicon"] == {"name": "Lexicon", "model": "lexicon", "version": "lex-1",
                                        "components": {"lexicon": "lex-1"}}
    assert all("lexicon" in turn for turn in doc["turns"])

    broken = copy.deepcopy(doc)
    broken["turns"][0]["lexicon"]["mix"]["punctuation"] = 0.5
    with pytest.raises(SchemaError, match="lexicon.mix"):
        validate_analysis(broken)

    assert table_columns()[-5:] == ["Lexicon", "Lexicon conf.", "mix words/punctuation", "agree", "human"]
    table = results_table(doc)
    assert list(table["mix words/punctuation"]) == ["1.00/0.00"] * 3
    view = teaching_html(doc, 1)
    assert "<h5>Lexicon</h5>" in view and "mix × vote for" in view and "Each cue votes" in view
    assert [t.name for t in charts.turn_distributions(doc, 0).data][-2:] == ["words cue", "Lexicon"]
    assert len(charts.probability_timelines(doc).data) == 3

    config = build_app(service).get_config_file()
    buttons = {c["props"].get("value") for c in config["components"] if c["type"] == "button"}
    assert {"Accept MiSTER-E's label", "Accept FARCER's label", "Accept Lexicon's label"} <= buttons
