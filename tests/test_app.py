"""The page's pieces without a server: results table, subtitle track, teaching view, charts, annotation."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import gradio as gr
import pytest

from backend import predictors
from backend.errors import ModelUnavailableError
from backend.service import Service
from backend.settings import Settings
from tests.app_helpers import FarcerDouble, MisterEDouble, install
from ui import charts
from ui.annotate import HOTKEYS_JS, LABEL_ID, NEXT_ID, PREV_ID, SAVE_ID, Annotate
from ui.callbacks import VIEW_COUNT, Analysis
from ui.corrections import Corrections
from ui.layout import build_app, launch_options, profile_choices, spaces_problem
from ui.results import model_status_html, predictions_vtt, results_table, teaching_html

EVIL = "<img src=x onerror=alert(1)>"


@pytest.fixture
def service(tmp_path):
    service = Service.open(Settings(data_dir=tmp_path / "data"))
    yield service
    service.close()


@pytest.fixture
def doc(service, dialogue, monkeypatch):
    install(monkeypatch, MisterEDouble(), FarcerDouble())
    return service.analyze(*dialogue)


@pytest.fixture
def doc_without_farcer(service, dialogue, monkeypatch):
    install(monkeypatch, MisterEDouble(), None)
    return service.analyze(*dialogue)


def test_results_table_compares_both_models_and_shows_human_labels(doc):
    human = {doc["turns"][1]["turn_id"]: "anger"}
    table = results_table(doc, human)
    first = table.iloc[0]
    assert list(table["speaker"]) == ["Rachel", "Ross", "Rachel"]
    assert (first["MiSTER-E"], first["FARCER"], first["agree"]) == ("neutral", "neutral", "yes")
    assert first["gate speech/text/cross"] == "0.50/0.20/0.30"
    assert first["FARCER conf."] == pytest.approx(0.6)
    assert table.iloc[1]["agree"] == "no" and list(table["human"]) == ["", "anger", ""]
    assert first["time"] == "0:00.3–0:01.5"


def test_a_missing_model_says_why(doc_without_farcer):
    doc = doc_without_farcer
    assert set(results_table(doc)["FARCER"]) == {"n/a"} and set(results_table(doc)["agree"]) == {"n/a"}
    status = model_status_html(doc)
    assert "MiSTER-E</b>: version test-1" in status
    assert "FARCER</b>: not available: switched off in this test" in status
    assert "not available: switched off in this test" in teaching_html(doc, 0)
    assert "not available" in charts.probability_timelines(doc).layout.annotations[-1].text


def test_subtitle_track_carries_the_predictions(doc):
    doc = copy.deepcopy(doc)
    doc["turns"][0]["text"] = "a --> b & <i>"
    vtt = predictions_vtt(doc).split("\n")
    assert vtt[0] == "WEBVTT"
    assert vtt[2:5] == [
        "00:00:00.300 --> 00:00:01.500",
        "Rachel: a --&gt; b &amp; &lt;i&gt;",
        "MiSTER-E neutral 50% · FARCER neutral 60%",
    ]
    assert sum("-->" in line for line in vtt) == 3


def test_teaching_view_explains_both_models_and_escapes_text(doc):
    doc = copy.deepcopy(doc)
    doc["turns"][2]["speaker"] = EVIL
    view = teaching_html(doc, 2)
    assert EVIL not in view and "&lt;img src=x" in view
    assert view.count("class='image-slot'") == 3, "one face slot per turn of the prompt"
    assert "Past labels used: Rachel: neutral, Ross: anger" in view
    assert "0.50 × " in view and "gate × vote for surprise" in view


def test_charts(doc, doc_without_farcer):
    gate = charts.weights_chart(doc)
    assert [t.name for t in gate.data] == ["speech", "text", "cross"] and gate.layout.barmode == "stack"
    assert list(gate.data[1].y) == [0.2, 0.2, 0.2]
    timelines = charts.probability_timelines(doc)
    assert [len(t.z) for t in timelines.data] == [7, 7] and len(timelines.data[0].z[0]) == 3
    votes = charts.turn_distributions(doc, 1)
    assert [t.name for t in votes.data] == [
        "speech expert",
        "text expert",
        "cross expert",
        "MiSTER-E",
        "FARCER",
    ]
    assert len(charts.turn_distributions(doc_without_farcer, 1).data) == 4
    confusion = charts.confusion_chart([[1, 0], [2, 3]], ["joy", "fear"], EVIL, "humans")
    assert EVIL not in confusion.layout.title.text


def test_turn_views_and_stepping(doc, service):
    analysis, annotate = Analysis(service), Annotate(service)
    votes, face, view, span = analysis.turn_views(doc, 1)
    assert face is not None and face.ndim == 3 and "Turn 1" in view and votes.data and span == [2.0, 3.4, 1]
    assert analysis.turn_views(doc, 7) == (None, None, "", None)
    assert (annotate.next(doc, 2), annotate.previous(doc, 0), annotate.next(doc, 0)) == (2, 0, 1)
    assert annotate.turn_state(doc, 1, "ann", None) == ("<p>No human label yet.</p>", "joy", doc["turns"][1]["turn_id"])


def test_saving_needs_a_login_when_required(doc, service):
    annotate = Annotate(service)
    service.settings.require_login = True
    with pytest.raises(gr.Error, match="Hugging Face login"):
        annotate.save(doc, 0, doc["turns"][0]["turn_id"], "joy", "", "typed name", None)
    assert service.history(doc["turns"][0]["turn_id"]) == []
    service.settings.require_login = False
    history, table, note = annotate.save(doc, 0, doc["turns"][0]["turn_id"], "fear", "n", "ann", None)
    assert "<b>fear</b> by ann" in history and table.iloc[0]["human"] == "fear" and note == ""
    history, table, note, label = annotate.accept_handler("farcer")(doc, 1, "", "ann", None)
    assert label == doc["turns"][1]["farcer"]["label"] and table.iloc[1]["human"] == label
    assert annotate.turn_state(doc, 1, "ann", None)[1] == label


def test_a_save_with_the_previous_turns_label_is_refused(doc, service):
    """Right after `j` the picker still shows turn 0's label while turn 1 is selected: a save then
    carries turn 0's id with it and is refused; nothing is written on either turn."""
    annotate = Annotate(service)
    first, second = (t["turn_id"] for t in doc["turns"][:2])
    with pytest.warns(UserWarning, match="turn 1 was still loading"):
        assert annotate.save(doc, 1, first, "anger", "", "ann", None) == (gr.skip(),) * 3
    with pytest.warns(UserWarning, match="still loading"):
        annotate.save(doc, 1, None, "anger", "", "ann", None)
    assert service.history(first) == [] and service.history(second) == []
    annotate.save(doc, 1, second, "anger", "", "ann", None)
    assert [r["label"] for r in service.history(second)] == ["anger"]


def test_blind_mode_shows_annotators_their_own_labels_and_adjudicators_everyones(doc, service):
    service.settings.annotators, service.settings.adjudicators = ["ann", "bob"], ["ada"]
    assert service.settings.blind_mode, "on by default with more than one annotator"
    annotate, first = Annotate(service), doc["turns"][0]["turn_id"]
    model_label = doc["turns"][0]["mister_e"]["label"]
    annotate.save(doc, 0, first, "anger", "", "ann", None)
    history, shown, _ = annotate.turn_state(doc, 0, "bob", None)
    assert "anger" not in history and "Blind labelling" in history
    assert shown == model_label, "bob gets the model's suggestion, not ann's label"
    history, table, _ = annotate.save(doc, 0, first, "fear", "", "bob", None)
    assert "anger" not in history and table.iloc[0]["human"] == "fear"
    assert annotate.turn_state(doc, 0, "ann", None)[1] == "anger"
    history, shown, turn_id, table = annotate.viewer_changed(doc, 0, "ann", None)  # the name typed
    assert (shown, turn_id, table.iloc[0]["human"]) == ("anger", first, "anger") and "fear" not in history
    assert Analysis(service).reopen(doc["dialogue_id"], "ann", None)[4].iloc[0]["human"] == "anger"
    corrections = Corrections(service)
    assert set(corrections.show(None, None, None, None, None, "bob", None)[0]["annotator"]) == {"bob"}
    with pytest.raises(gr.Error, match="blind mode"):
        corrections.show(None, None, None, None, None, "", None)

    history, shown, _ = annotate.turn_state(doc, 0, "ada", None)
    assert "anger</b> by ann" in history and "fear</b> by bob" in history and "Adjudicator" in history
    assert shown == "fear", "a tie goes to the most recent label"
    history, table, _ = annotate.save(doc, 0, first, "anger", "", "ada", None)
    assert "anger</b> by ada (adjudicated)" in history and table.iloc[0]["human"] == "anger"
    assert service.human_labels(doc["dialogue_id"])[first] == "anger"
    assert annotate.turn_state(doc, 0, "bob", None)[1] == "fear", "bob still sees his own label"

    service.settings.blind = False
    assert "anger</b> by ann" in annotate.turn_state(doc, 0, "bob", None)[0]


def test_page_wires_hotkeys_endpoints_and_limits(service):
    demo = build_app(service)
    config = demo.get_config_file()
    ids = {c["props"].get("elem_id") for c in config["components"]}
    assert {LABEL_ID, SAVE_ID, NEXT_ID, PREV_ID} <= ids
    for element in (LABEL_ID, SAVE_ID, NEXT_ID, PREV_ID):
        assert f"#{element}" in HOTKEYS_JS
    named = {d["api_name"] for d in config["dependencies"] if d.get("api_visibility") == "public"}
    assert named == {"analyze", "save_correction", "export_corrections", "model_versions", "retrain", "job_status",
                     "cancel_job", "activate_model"}
    assert config["analytics_enabled"] is False
    options = launch_options(service.settings)
    assert options["max_file_size"] == 200_000_000 and options["head"] == HOTKEYS_JS
    assert options["allowed_paths"] == [str(service.settings.served_dir.resolve())]


def test_a_link_opens_its_dialogue_and_turn_or_says_why_not(doc, service):
    analysis, annotate = Analysis(service), Annotate(service)
    link = lambda query: SimpleNamespace(query_params=query)  # noqa: E731
    dialogue = str(doc["dialogue_id"])
    opened = analysis.from_link("ann", link({"dialogue": dialogue, "turn": "2"}), None)
    assert opened[0]["dialogue_id"] == doc["dialogue_id"] and opened[7].value == 2 and opened[9] == doc["dialogue_id"]
    assert analysis.from_link("ann", link({"dialogue": dialogue}), None)[7].value == 0
    annotate.save(doc, 1, doc["turns"][1]["turn_id"], "joy", "", "ann", None)
    assert analysis.from_link("ann", link({"dialogue": dialogue}), None)[7].value == 1, "ann's last turn"
    assert analysis.from_link("bob", link({"dialogue": dialogue}), None)[7].value == 0
    assert analysis.from_link("ann", link({"dialogue": dialogue, "turn": "99"}), None)[7].value == 1
    for bad, says in (("987654", "dialogue 987654 has no stored analysis"), ("abc", "must be a whole number")):
        views = analysis.from_link("ann", link({"dialogue": bad}), None)
        assert says in views[3] and all(v == gr.skip() for i, v in enumerate(views) if i != 3)
    assert analysis.from_link("ann", link({}), None) == (gr.skip(),) * VIEW_COUNT


def test_stored_analyses_say_what_they_are(doc, service):
    Annotate(service).save(doc, 1, doc["turns"][1]["turn_id"], "joy", "", "ann", None)
    picker = Analysis(service).stored()
    [(label, value)] = picker.choices
    assert value == doc["dialogue_id"]
    assert label.startswith("talk.mp4 · 0:06.0 · 1/3 turns labelled · offline · MiSTER-E test-1, FARCER test-1 · subtitles · #")
    [entry] = service.dialogues()
    assert (entry["file_name"], entry["turn_source"], entry["models"]) == (
        "talk.mp4", "subtitles", {"mister_e": "test-1", "farcer": "test-1"}
    )
    component = next(
        c for c in build_app(service).get_config_file()["components"]
        if str(c["props"].get("label", "")).startswith("Reopen without recomputing")
    )
    assert component["props"]["filterable"] is True


def test_corrections_choose_the_pair_and_model_and_summarise_each_annotator(doc, service):
    corrections, annotate = Corrections(service), Annotate(service)
    for index, annotator, label in [(0, "ann", "joy"), (0, "bob", "joy"), (0, "cy", "fear"), (1, "cy", "anger")]:
        annotate.save(doc, index, doc["turns"][index]["turn_id"], label, "", annotator, None)
    dialogues, annotators = corrections.filters(doc["dialogue_id"], "bob")
    assert annotators.choices == [("ann", "ann"), ("bob", "bob"), ("cy", "cy")] and annotators.value == "bob"
    assert dialogues.value == doc["dialogue_id"] and "talk.mp4" in dialogues.choices[0][0]
    assert corrections.filters(None, "nobody")[1].value is None

    table, report, pair_chart, model_chart, pairs, models = corrections.show(None, None, None, None, None, "ann", None)
    assert pairs.choices == [(p, p) for p in ("ann vs bob", "ann vs cy", "bob vs cy")] and pairs.value == "ann vs bob"
    assert models.value == "FARCER" and [m for m, _ in models.choices] == ["FARCER", "MiSTER-E"]
    assert "ann (rows) vs bob" in pair_chart.layout.title.text
    _, _, pair_chart, model_chart, pairs, models = corrections.show(None, None, None, "bob vs cy", "MiSTER-E", "ann", None)
    assert "bob (rows) vs cy" in pair_chart.layout.title.text and model_chart.layout.title.text.startswith("MiSTER-E")
    assert (pairs.value, models.value) == ("bob vs cy", "MiSTER-E")
    assert "<h5>Per annotator" in report and "<td>cy</td><td>2</td><td>2</td><td>0.0% of 2</td>" in report


def test_save_and_next_and_next_unlabelled(doc, service):
    annotate, ids = Annotate(service), [t["turn_id"] for t in doc["turns"]]
    *saved, turn = annotate.save_and_next(doc, 0, ids[0], "joy", "", "ann", None)
    assert turn == 1 and [r["label"] for r in service.history(ids[0])] == ["joy"]
    with pytest.warns(UserWarning, match="still loading"):
        assert annotate.save_and_next(doc, 1, ids[0], "joy", "", "ann", None)[3] == gr.skip(), "refused: stays"
    assert annotate.save_and_next(doc, 2, ids[2], "fear", "", "ann", None)[3] == 2, "the last turn stays"
    assert annotate.next_unlabelled(doc, 2, "ann", None) == 1
    assert annotate.next_unlabelled(doc, 0, "ann", None) == 1
    annotate.save(doc, 1, ids[1], "anger", "", "ann", None)
    assert annotate.next_unlabelled(doc, 0, "ann", None) == gr.skip(), "every turn is labelled: stays"


def test_next_turn_where_a_label_teaches_most(doc, service):
    from backend.label_order import teaching_order

    annotate, ids = Annotate(service), [t["turn_id"] for t in doc["turns"]]
    best, *rest = teaching_order(doc, set())
    assert annotate.next_teaching(doc, None, "ann", None) == best
    assert annotate.next_teaching(doc, best, "ann", None) == rest[0], "never the selected turn"
    annotate.save(doc, best, ids[best], "joy", "", "ann", None)
    assert annotate.next_teaching(doc, None, "ann", None) == rest[0], "labelled turns are skipped"
    assert "#next-teaching" in HOTKEYS_JS and '"m"' in HOTKEYS_JS


def test_the_example_dialogue_is_generated_and_analysed(service, models):
    views = Analysis(service).example("offline", "ann", None)
    doc = views[0]
    assert [t["text"] for t in doc["turns"]] == ["Hi & welcome.", "Oh, hello!", "How are you?"]
    assert doc["media"]["name"] == "example-dialogue.mp4" and doc["media"]["duration_s"] == pytest.approx(6.0, abs=0.1)
    assert Analysis(service).example("offline", "ann", None)[0]["reused"], "the second try reopens it"


def test_spaces_mode_needs_the_oauth_extra(monkeypatch):
    import importlib.util

    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("ERC_SPACES_PREVIEW", raising=False)
    assert spaces_problem() is None
    monkeypatch.setenv("ERC_SPACES_PREVIEW", "1")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "authlib" else object())
    assert "needs authlib: install gradio[oauth] (requirements.txt: gradio[oauth]==" in spaces_problem()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert "huggingface-cli login" in spaces_problem()  # the local preview signs in with a local token
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    assert spaces_problem() is None
    monkeypatch.setenv("SPACE_ID", "someone/erc-studio")  # on a Space gradio's own OAuth app signs in
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert spaces_problem() is None


def test_an_analysis_draws_one_progress_bar(service):
    """Analyse, the example, run again, reopen and open-from-link fill the views; progress and errors show once,
    on the notes beside the player, and the other outputs keep what they show."""
    config = build_app(service).get_config_file()
    notes = next(c["id"] for c in config["components"] if c["props"].get("elem_id") == "analysis-notes")
    filling = [d for d in config["dependencies"] if notes in d["outputs"]]
    assert len(filling) == 5 and all(len(d["outputs"]) == VIEW_COUNT for d in filling)
    assert all(d["show_progress_on"] == [notes] for d in filling)


def test_analyse_and_rerun_with_an_edited_transcript(service, dialogue, monkeypatch):
    install(monkeypatch, MisterEDouble(), FarcerDouble())
    analysis = Analysis(service)
    doc, player, status, notes, table, gate, timelines, picker, transcript, dialogue_id = analysis.run(
        *dialogue, "offline", "ann", None
    )
    assert player.subtitles["path"].endswith(f"dialogue-{doc['dialogue_id']}.vtt") and len(table) == 3
    assert list(transcript.columns) == ["speaker", "start", "end", "text"] and picker.value == 0
    assert dialogue_id == doc["dialogue_id"]
    transcript.loc[1, "text"] = "Oh, hello <b>there</b>!"
    edited = analysis.rerun(doc, transcript, "offline", "ann", None)[0]
    assert not edited["reused"] and edited["dialogue_id"] != doc["dialogue_id"]
    assert [t["text"] for t in edited["turns"]] == [
        "Hi & welcome.",
        "Oh, hello <b>there</b>!",
        "How are you?",
    ]
    assert "&lt;b&gt;there" in teaching_html(edited, 1)
    transcript.loc[2, "text"] = None  # a turn still untyped, as after voice activity: allowed
    partial = analysis.rerun(edited, transcript, "offline", "ann", None)[0]
    assert [t["text"] for t in partial["turns"]][1:] == ["Oh, hello <b>there</b>!", ""]
    assert "no text" in teaching_html(partial, 2) and partial["turns"][2]["mister_e"]["label"]
    transcript.loc[2, "start"] = -1.0
    with pytest.raises(gr.Error, match="table row 3: times cannot be negative"):
        analysis.rerun(edited, transcript, "offline", "ann", None)
    assert "Reopened from the database" in analysis.reopen(doc["dialogue_id"], "ann", None)[3]
    with pytest.raises(gr.Error, match="no video was given"):
        analysis.run(None, None, "offline", "ann", None)


def test_a_profile_without_models_is_marked_unavailable_and_never_stored(service, dialogue, monkeypatch):
    mister_e, _ = install(monkeypatch, MisterEDouble(), None)

    def only_offline(profile, settings):
        if profile.name != "offline":
            raise ModelUnavailableError("no mister-e version 'mister-e-paper'")
        return mister_e

    monkeypatch.setitem(predictors.PREDICTOR_LOADERS, "mister_e", only_offline)
    picker = profile_choices(service)
    assert picker["choices"] == [("offline", "offline"), ("paper (unavailable)", "paper")]
    assert "'paper' profile has no model available" in picker["info"] and "mister-e-paper" in picker["info"]
    with pytest.raises(ModelUnavailableError, match="'paper' profile has no model available"):
        service.analyze(*dialogue, profile="paper")
    with pytest.raises(gr.Error, match="no model available"):
        Analysis(service).run(*dialogue, "paper", "ann", None)
    assert service.dialogues() == [] and mister_e.calls == 0, "nothing ran, nothing was stored"


def test_profile_status_before_any_analysis(service, monkeypatch):
    from ui.callbacks import profile_status_html

    install(monkeypatch, MisterEDouble(), None)
    status = profile_status_html("offline", service)
    assert "<li>MiSTER-E: ready (version test-1)</li>" in status
    assert "<li>FARCER: not available: switched off in this test</li>" in status


def test_models_tab_lists_versions_starts_refuses_and_activates(tmp_path, monkeypatch):
    from tests.test_mister_e_training import TINY, run, write_csv_corpus
    from ui.models import Models

    monkeypatch.setenv("ERC_DATA_DIR", str(tmp_path / "data"))
    from backend.settings import get_settings

    get_settings.cache_clear()
    corpus = write_csv_corpus(tmp_path / "corpus", audio=False, dialogues={"train": 3, "validation": 1})
    assert run("train", "mister-e", "--corpus", "csv", "--data", corpus, "--cache", tmp_path / "cache", *TINY) == 0
    get_settings.cache_clear()
    service = Service.open(Settings(data_dir=tmp_path / "data", require_login=True, model_managers="boss"))
    try:
        models = Models(service)
        table, picker = models.versions()
        [trained] = [r for r in service.model_versions() if not r["builtin"]]
        row = table[table["version"] == trained["version"]].iloc[0]
        assert row["model"] == "mister-e" and row["data"] == "csv" and "main.weighted_f1=" in row["validation (weighted F1)"]
        assert f"mister-e:{trained['version']}" in [value for _, value in picker.choices]
        assert models.latest()[1] == "<p>No retraining job yet.</p>"
        with pytest.raises(gr.Error, match="model managers"):
            models.activate(f"mister-e:{trained['version']}", None)
        with pytest.raises(gr.Error, match="model managers"):
            models.start("mister-e", 1.0, None, SimpleNamespace(username="eve"))
        with pytest.raises(gr.Error, match="ERC_RETRAIN_DATA"):  # a manager gets as far as the corpus setting
            models.start("mister-e", 1.0, None, SimpleNamespace(username="boss"))
        message, table, _ = models.activate(f"mister-e:{trained['version']}", SimpleNamespace(username="boss"))
        assert trained["version"] in message
        assert table[table["version"] == trained["version"]].iloc[0]["active"] == "active"
    finally:
        service.close()
        get_settings.cache_clear()


def test_a_job_is_shown_with_progress_then_side_by_side():
    from ui.models import job_html

    running = {"job_id": "ab", "model": "mister-e", "state": "running", "progress": 0.25, "eta_s": 75,
               "message": "training: mister-e stage 2 1/4", "version": None, "metrics": None}
    assert "value='0.250'" in job_html(running) and "about 1:15 left" in job_html(running)
    report = {"version": "new1", "active_version": "old1", "comparison": {
        "corpus validation": {"candidate": {"weighted_f1": 0.5, "accuracy": 0.5, "n": 8},
                              "active": {"weighted_f1": 0.25, "accuracy": 0.5, "n": 8}},
        "held-out corrections": {"candidate": {"error": "nothing held out"}, "active": {"error": "nothing held out"}}}}
    done = job_html({**running, "state": "succeeded", "metrics": report, "message": "new version new1"})
    assert "<code>new1</code>" in done and "<code>old1</code>" in done and "0.500 (accuracy" in done
    assert "<i>nothing held out</i>" in done
