"""FARCER processor (prompts, token ids) and model core, on tiny random Llamas with a local word tokenizer."""

from __future__ import annotations

import json
import subprocess
import sys

from dataclasses import replace

import numpy as np
import pytest
import torch

from backend.dialogue import Turn
from backend.errors import InputError, ModelUnavailableError
from backend.farcer_predictor import load_trainable, save_trainable
from backend.farcer_processor import (
    ChatFormat,
    Example,
    FarcerProcessor,
    Image,
    Text,
    build_dialogue_prompt,
    build_prompt,
    label_token_weights,
    render_text,
    sample_shots,
    structured,
    training_prompts,
)
from backend.labels import IEMOCAP6, MELD7
from benchmarks.farcer_incremental import (
    main,
    random_farcer,
    run,
    synthetic_dialogue,
    synthetic_pool,
)
from models.farcer import IMAGE, DialogueTurn, Farcer, FarcerConfig, ModalityProjector, Tokens, apply_lora

DIM = 8
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}


def tiny(seed: int = 0, **config) -> tuple[Farcer, FarcerProcessor]:
    return random_farcer(FarcerConfig(image_dim=DIM, **config), seed=seed, **TINY)


@pytest.fixture(scope="module")
def pair():
    return tiny()


@pytest.fixture(scope="module")
def shots():
    return sample_shots(synthetic_pool(10, DIM, seed=5), 3, seed=0)


def prompt_of(proc: FarcerProcessor, n_turns: int, seed: int, shots=()) -> Tokens:
    turns, faces = synthetic_dialogue(n_turns, DIM, seed)
    return proc.tokens(build_dialogue_prompt(turns, proc.labels, faces=faces, shots=shots, chat=proc.chat))


# --- prompts ---------------------------------------------------------------------------------------


def test_prompt_renders_image_slots_labels_and_query():
    turns = [
        Turn("Mark", 0.0, 1.0, "Why do all your mugs have numbers?", label="surprise"),
        Turn("Rachel", 1.0, 2.0, "Y'know what?"),
    ]
    shot = Example((Turn("Rachel", None, None, "Emma! See?", label="sadness"),), faces=((0.1,) * DIM,))
    text = render_text(
        build_dialogue_prompt(turns, MELD7, faces=[[0.0] * DIM, None], shots=[shot], past_labels="gold")
    )
    assert text.startswith("SYSTEM:\nYou are FARCER")
    assert "one of the 7 emotion labels: neutral, joy, surprise, anger, sadness, disgust, or fear." in text
    assert "nine" not in text
    assert "DIALOGUE:\nRachel: <image:face> Emma! See?\nRachel's EMOTION LABEL: sadness\n" in text
    assert text.endswith(
        "USER:\nDIALOGUE:\n"
        "Mark: <image:face> Why do all your mugs have numbers? (Mark's current emotion: surprise)\n"
        "Rachel: Y'know what?\n"
        "Rachel's EMOTION LABEL:\n\nASSISTANT: "
    )


def test_prompt_parts_flatten_to_the_prompt_and_examples_without_faces_have_no_slot():
    turns, faces = synthetic_dialogue(4, DIM, seed=1)
    pool = synthetic_pool(4, DIM)  # even indices carry faces, odd ones do not
    prompt = build_prompt(turns, MELD7, faces=faces, shots=pool[:2])
    flat = build_dialogue_prompt(turns, MELD7, faces=faces, shots=pool[:2])

    def key(segments):
        return [id(s.vector) if isinstance(s, Image) else s for s in segments]

    assert key(prompt.segments) == key(flat)
    assert sum(isinstance(s, Image) for s in prompt.prefix) == len(pool[0].turns)
    assert [sum(isinstance(s, Image) for s in line) for line in prompt.turns] == [1, 1, 1, 1]
    assert render_text(prompt.query) == f"{turns[-1].speaker}'s EMOTION LABEL:\n\nASSISTANT: "
    iemocap = render_text(build_dialogue_prompt(turns, IEMOCAP6))
    assert "6 emotion labels: happiness, sadness, neutral, anger, excitement, or frustration." in iemocap


def test_past_labels_gold_predicted_and_bad_input():
    turns = [Turn("A", None, None, "hi", label="joy"), Turn("B", None, None, "bye")]
    predicted = render_text(build_dialogue_prompt(turns, MELD7, past_labels="predicted", predicted=["fear"]))
    assert "A: hi (A's current emotion: fear)\nB: bye\n" in predicted
    with pytest.raises(InputError, match="predicted label"):
        build_dialogue_prompt(turns, MELD7, past_labels="predicted")
    with pytest.raises(InputError, match="gold"):
        build_dialogue_prompt([turns[1], turns[1]], MELD7, past_labels="gold")
    with pytest.raises(InputError, match="past_labels"):
        build_dialogue_prompt(turns, MELD7, past_labels="oracle")
    with pytest.raises(InputError, match="faces"):
        build_dialogue_prompt(turns, MELD7, faces=[None])


def test_shots_are_seeded_and_training_prompts_do_not_collapse():
    pool = synthetic_pool(12, DIM)
    assert sample_shots(pool, 7, seed=3) == sample_shots(pool, 7, seed=3)
    assert sample_shots(pool, 7, seed=3) != sample_shots(pool, 7, seed=4)
    assert sample_shots(pool, 0, seed=3) == []
    variants = training_prompts(pool, n=10, k=7, seed=0)
    assert len(variants) == 10 and all(len(v) == 7 for v in variants)
    assert len({tuple(id(e) for e in v) for v in variants}) == 10
    assert variants == training_prompts(pool, n=10, k=7, seed=0)
    with pytest.raises(InputError, match="shots must be one of"):
        sample_shots(pool, 5, seed=0)
    with pytest.raises(InputError, match="only 2"):
        sample_shots(pool[:2], 3, seed=0)


def test_structured_prompt_marks_past_labels_and_joins_to_the_rendered_text():
    turns = [
        Turn("Ross", None, None, "we were on a break", label="anger"),
        Turn("Rachel", None, None, "no way", label="joy"),
        Turn("Ross", None, None, "oh my god"),
    ]
    shot = Example((Turn("Joey", None, None, "how you doin", label="joy"),) * 2, faces=((0.1,) * DIM, None))
    segments = build_dialogue_prompt(turns, MELD7, faces=[[0.0] * DIM, None, [1.0] * DIM], shots=[shot],
                                     past_labels="gold")
    pieces = structured(segments)
    assert "".join(p["text"] for p in pieces) == render_text(segments)
    labels = [p for p in pieces if p["kind"] == "label"]
    assert labels == [
        {"kind": "label", "text": " (Joey's current emotion: joy)", "speaker": "Joey", "label": "joy"},
        {"kind": "label", "text": " (Ross's current emotion: anger)", "speaker": "Ross", "label": "anger"},
        {"kind": "label", "text": " (Rachel's current emotion: joy)", "speaker": "Rachel", "label": "joy"},
    ]
    assert [p["text"] for p in pieces if p["kind"] == "image"] == ["<image:face>"] * 3
    kinds = [p["kind"] for p in pieces]
    assert all(a != b or a != "text" for a, b in zip(kinds, kinds[1:])), "adjacent texts are merged"


def test_chat_format_is_read_off_the_tokenizer_template(pair):
    farcer, proc = pair
    assert proc.chat == ChatFormat(
        "<s><|system|>\n", "<|eot|><|user|>\n", "<|eot|><|assistant|>\n", "<|eot|>"
    )
    eot = proc.tokenizer.convert_tokens_to_ids("<|eot|>")
    assert farcer.candidates == proc.candidates
    assert all(c[-1] == eot and len(c) == 2 for c in farcer.candidates)


def test_processor_ids_embed_text_through_the_table_and_faces_through_the_projector(pair):
    farcer, proc = pair
    face = torch.randn(DIM)
    segments = [Text("Ross: "), Image(face), Text(" no way\n"), Image(face.numpy() * 2)]
    tokens = proc.tokens(segments)
    words = proc.token_ids(" no way\n")
    assert tokens.ids == (*proc.token_ids("Ross: "), IMAGE, *words, IMAGE) and len(tokens.images) == 2
    table = farcer.lm.get_input_embeddings()
    with torch.no_grad():
        expected = torch.cat([
            table(torch.tensor(proc.token_ids("Ross: "))), farcer.projector(face)[None],
            table(torch.tensor(words)), farcer.projector(face * 2)[None],
        ])
        torch.testing.assert_close(farcer.embed(tokens), expected)


def test_the_model_modules_import_neither_backend_nor_training():
    code = (
        "import sys, models.farcer, models.face_cnn; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('backend', 'training')); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_model_arguments_are_checked_with_value_errors(pair):
    farcer, proc = pair
    with pytest.raises(ValueError, match="image vectors"):
        Tokens((1, IMAGE), ())
    with pytest.raises(ValueError, match="same token ids"):
        Farcer(farcer.lm, FarcerConfig(image_dim=DIM), [[5], [5]], proc.end_ids)
    with pytest.raises(ValueError, match="end-of-turn"):
        Farcer(farcer.lm, FarcerConfig(image_dim=DIM), proc.label_ids, [])
    with pytest.raises(ValueError, match="unknown projector"):
        FarcerConfig(projector="five-layer")
    with pytest.raises(ValueError, match="out of range"):
        farcer([prompt_of(proc, 1, seed=1)], [len(MELD7)])
    turns = proc.dialogue_turns(*synthetic_dialogue(2, DIM, seed=1), past_labels="gold")
    with pytest.raises(ValueError, match="later line"):
        farcer.label_dialogue([DialogueTurn(t.line, t.query) for t in turns], proc.encode_prefix(farcer, (), "gold"),
                              past_labels="gold")
    with pytest.raises(ValueError, match="prefix is empty"):
        farcer.encode_prefix(Tokens())


# --- model -----------------------------------------------------------------------------------------


def test_three_layer_projector_is_saved_in_full(pair, tmp_path):
    farcer, _ = pair
    projector = ModalityProjector(DIM, 32, "three-layer", dropout=0.1)
    assert {k for k in projector.state_dict() if k.endswith("weight")} == {
        "net.0.weight",
        "net.3.weight",
        "net.6.weight",
    }
    assert projector.net[0].out_features == DIM and projector.net[6].out_features == 32
    model = tiny(projector="three-layer")[0].eval()
    save_trainable(model, tmp_path / "p.safetensors")
    fresh = tiny(seed=1, projector="three-layer")[0].eval()
    load_trainable(fresh, tmp_path / "p.safetensors")
    for key, value in model.projector.state_dict().items():
        assert torch.equal(fresh.projector.state_dict()[key], value)
    with pytest.raises(ModelUnavailableError, match="three-layer projector"):
        load_trainable(farcer, tmp_path / "p.safetensors")


def test_batch_scores_equal_per_row_scores(pair):
    farcer, proc = pair
    prompts = [prompt_of(proc, n, seed) for n, seed in [(1, 1), (4, 2), (2, 3)]]
    batched = farcer.label_logprobs(prompts)
    for row, prompt in enumerate(prompts):
        torch.testing.assert_close(batched[row], farcer.label_logprobs([prompt])[0], atol=1e-5, rtol=0)
    probs = farcer.score_labels(prompts)
    assert probs.shape == (3, len(MELD7))
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))


def test_batch_loss_equals_per_row_losses(pair):
    farcer, proc = pair
    prompts = [prompt_of(proc, n, seed) for n, seed in [(1, 4), (3, 5)]]
    targets = [proc.label_index("joy"), proc.label_index("disgust")]
    with torch.no_grad():
        rows = [farcer([p], [t]) for p, t in zip(prompts, targets)]
        # Unweighted, every answer is 2 tokens (label + eot): the pooled mean is the mean of rows.
        torch.testing.assert_close(farcer(prompts, targets), (rows[0] + rows[1]) / 2, atol=1e-5, rtol=0)
    with pytest.raises(InputError, match="unknown target label"):
        proc.label_index("happy-ish")


def test_label_scores_match_full_teacher_forced_sequence(pair):
    """The tree-masked candidate pass gives the same log P(label + eot | prompt) as running each
    prompt + candidate sequence through the plain LM."""
    farcer, proc = pair
    prompt = prompt_of(proc, 3, seed=7)
    scores = farcer.label_logprobs([prompt])[0]
    table = farcer.lm.get_input_embeddings()
    for j, candidate in enumerate(farcer.candidates):
        x = torch.cat([farcer.embed(prompt), table(torch.tensor(candidate))])[None]
        with torch.no_grad():
            logp = farcer.lm(inputs_embeds=x).logits[0].log_softmax(-1)
        start = x.shape[1] - len(candidate) - 1
        expected = sum(logp[start + i, token] for i, token in enumerate(candidate))
        assert abs(float(scores[j] - expected)) < 1e-4


def test_label_argmax_equals_greedy_decoding_when_valid():
    checked = set()
    for seed in (0, 1):
        model, proc = tiny(seed=seed)
        prompts, targets = [], []
        for s in range(6):
            turns, faces = synthetic_dialogue(3, DIM, seed=100 * seed + s)
            prompts.append(build_dialogue_prompt(turns, proc.labels, faces=faces, chat=proc.chat))
            targets.append(proc.label_index(turns[-1].label))
        tokens = [proc.tokens(p) for p in prompts]
        model.lm.requires_grad_(True)
        model.train()
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        first = None
        for _ in range(60):
            loss = model(tokens, targets)
            first = first if first is not None else loss.item()
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert loss.item() < first / 3
        model.eval()
        argmax = model.score_labels(tokens).argmax(-1)
        for prompt, best in zip(prompts, argmax):
            _, label = proc.greedy_label(model, prompt)
            if label is not None:
                assert label == proc.labels[int(best)]
                checked.add(label)
    assert checked, "greedy decoding never produced a valid label"


@pytest.mark.parametrize("turns_per_pass", [1, 3, 8, 16])
@pytest.mark.parametrize("past_labels", ["none", "gold", "predicted"])
def test_incremental_labelling_matches_naive(pair, shots, past_labels, turns_per_pass):
    farcer, proc = pair
    turns, faces = synthetic_dialogue(7, DIM, seed=11)
    faces[2] = None  # a turn without a face has no slot
    prefix = proc.encode_prefix(farcer, shots, past_labels)
    incremental = proc.label_dialogue(farcer, turns, faces, prefix, past_labels, turns_per_pass)
    naive = proc.label_dialogue_naive(farcer, turns, faces, prefix, past_labels=past_labels)
    assert incremental.logprobs.shape == (7, len(MELD7))
    assert float((incremental.logprobs - naive.logprobs).abs().max()) <= 1e-4
    assert incremental.labels == naive.labels and incremental.warning is None
    again = proc.label_dialogue(farcer, turns, faces, prefix, past_labels, turns_per_pass)  # the prefix is reusable
    torch.testing.assert_close(again.logprobs, incremental.logprobs)


@pytest.mark.parametrize("turns_per_pass", [1, 4, 16])
@pytest.mark.parametrize("past_labels", ["none", "gold"])
def test_sliding_window_drops_oldest_turns_and_warns(shots, past_labels, turns_per_pass):
    model, proc = tiny(max_context=260)
    turns, faces = synthetic_dialogue(12, DIM, seed=12)
    prefix = proc.encode_prefix(model, shots, past_labels)
    incremental = proc.label_dialogue(model, turns, faces, prefix, past_labels, turns_per_pass)
    naive = proc.label_dialogue_naive(model, turns, faces, prefix, past_labels)
    assert incremental.warning and "oldest past turns were dropped" in incremental.warning
    assert incremental.warning == naive.warning and incremental.starts == naive.starts
    assert len(set(naive.starts)) > 2  # the window moved more than once, inside and across passes
    assert float((incremental.logprobs - naive.logprobs).abs().max()) <= 1e-4
    too_long = [Turn("A", None, None, " ".join(["oh"] * 300))]
    with pytest.raises(InputError, match="more than the model context"):
        proc.label_dialogue(model, too_long, None, prefix, past_labels)
    other = "none" if past_labels == "gold" else "gold"
    with pytest.raises(InputError, match="same past_labels"):
        proc.label_dialogue(model, turns, faces, prefix, past_labels=other)
    with pytest.raises(InputError, match="at least 1"):
        proc.label_dialogue(model, turns, faces, prefix, past_labels, turns_per_pass=0)


def test_benchmark_compares_the_three_ways_on_one_dialogue(pair):
    result = run(*pair, turns=20, shots=3)
    assert result["same_labels"] and result["max_abs_logprob_diff"] <= 1e-4
    assert result["prefix_tokens"] > 0 and result["warning"] is None


def test_benchmark_cli_writes_its_json_on_the_offline_core(tmp_path):
    out = tmp_path / "farcer.json"
    result = main(["--turns", "3", "--shots", "3", "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert {"naive_s", "incremental_s", "speedup", "same_labels", "max_abs_logprob_diff", "model"} <= set(result)
    assert result["same_labels"] and "checkpoints/farcer" in result["model"], "the shipped FARCER, not a random one"


def test_bad_faces_are_errors(pair):
    farcer, proc = pair
    turns, _ = synthetic_dialogue(2, DIM, seed=13)
    with pytest.raises(ValueError, match="expected \\(8,\\)"):
        farcer.label_logprobs([proc.tokens(build_dialogue_prompt(turns, MELD7, faces=[np.zeros(5), None]))])
    with pytest.raises(InputError, match="one per turn"):
        proc.label_dialogue(farcer, turns, [None], proc.encode_prefix(farcer))


def test_label_token_weights_are_balanced(pair):
    _, proc = pair
    counts = {"neutral": 6, "joy": 3, "fear": 1}
    weights = label_token_weights(MELD7, proc.tokenizer, counts, eot="<|eot|>")
    assert weights == proc.token_weights(counts)
    ids = {label: proc.tokenizer.convert_tokens_to_ids(label) for label in counts}
    eot = proc.tokenizer.convert_tokens_to_ids("<|eot|>")
    total, classes = 20, 4  # 10 label tokens + 10 eot tokens over 4 distinct tokens
    assert weights[ids["fear"]] == pytest.approx(total / (classes * 1))
    assert weights[ids["neutral"]] == pytest.approx(total / (classes * 6))
    assert weights[eot] == pytest.approx(total / (classes * 10))
    with pytest.raises(InputError, match="not one of"):
        label_token_weights(MELD7, proc.tokenizer, {"frustration": 1})


def test_label_bias_is_added_to_every_labels_score_and_moves_the_labels(shots):
    farcer, proc = tiny(seed=6)
    turns, faces = synthetic_dialogue(4, DIM, seed=41)
    prefix = proc.encode_prefix(farcer, shots, "none")
    plain = proc.label_dialogue(farcer, turns, faces, prefix, "none")
    bias = [0.0] * len(MELD7)
    bias[MELD7.index("fear")] = 100.0  # far above any log-prob gap: every turn becomes fear
    farcer.set_label_bias(bias)
    try:
        biased = proc.label_dialogue(farcer, turns, faces, prefix, "none")
        torch.testing.assert_close(biased.logprobs, plain.logprobs + torch.tensor(bias))
        assert biased.labels == ["fear"] * 4 != plain.labels
        assert farcer.config.label_bias == tuple(bias)
        one = [proc.tokens(build_dialogue_prompt(turns[:1], MELD7, faces=faces[:1], shots=shots, chat=proc.chat))]
        assert int(farcer.label_logprobs(one).argmax()) == MELD7.index("fear")
        with pytest.raises(ValueError, match="3 values for 7 labels"):
            farcer.set_label_bias([1.0, 2.0, 3.0])
    finally:
        farcer.set_label_bias(())
    torch.testing.assert_close(proc.label_dialogue(farcer, turns, faces, prefix, "none").logprobs, plain.logprobs)


@pytest.mark.parametrize("past_labels", ["none", "gold"])
def test_face_weight_moves_the_labels_that_share_of_the_way_from_the_text_only_ones(shots, past_labels):
    farcer, proc = tiny(seed=7)
    turns, faces = synthetic_dialogue(5, DIM, seed=43)
    faces[1] = None
    prefix = proc.encode_prefix(farcer, shots, past_labels)
    text = proc.label_dialogue(farcer, turns, None, prefix, past_labels)
    full = proc.label_dialogue(farcer, turns, faces, prefix, past_labels)
    assert float((full.logprobs - text.logprobs).abs().max()) > 1e-3  # the faces do move this model
    try:
        for weight in (0.0, 0.3):
            farcer.set_face_weight(weight)
            for label in (proc.label_dialogue, proc.label_dialogue_naive):
                mixed = label(farcer, turns, faces, prefix, past_labels)
                torch.testing.assert_close(mixed.logprobs, text.logprobs + weight * (full.logprobs - text.logprobs),
                                           atol=1e-4, rtol=0)
                assert mixed.labels == [MELD7[int(j)] for j in mixed.logprobs.argmax(-1)]
        assert proc.label_dialogue(farcer, turns, faces, prefix, past_labels).starts == full.starts
        with pytest.raises(ValueError, match="between 0 and 1"):
            farcer.set_face_weight(1.5)
    finally:
        farcer.set_face_weight(1.0)
    torch.testing.assert_close(proc.label_dialogue(farcer, turns, faces, prefix, past_labels).logprobs, full.logprobs)


def test_lora_on_top_layers_trains_from_frozen_states_as_from_the_embeddings(shots):
    """Adapters on the last layer only: the layer below holds nothing that trains, and a batch that
    enters the top layer with `frozen_states` gives the same loss and adapter gradients as one run
    from the embeddings (right padding included)."""
    farcer, proc = random_farcer(FarcerConfig(image_dim=DIM), seed=4, **{**TINY, "num_hidden_layers": 3})
    apply_lora(farcer, r=4, alpha=8, dropout=0.0, layers=1)
    trainable = [n for n, p in farcer.lm.named_parameters() if p.requires_grad]
    assert trainable and all(".layers.2." in n for n in trainable)
    assert farcer.frozen_layers == 2 and farcer.config.lora_layers == 1
    with torch.no_grad():
        for name, param in farcer.lm.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)  # B starts at zero: give the adapters a say
    farcer.set_token_weights(proc.token_weights({label: i + 1 for i, label in enumerate(MELD7)}))
    rows = []
    for n, seed in ((5, 31), (2, 32)):
        turns, _ = synthetic_dialogue(n, DIM, seed=seed)
        rows.append(proc.pack(farcer, turns, [None] * n, range(n), shots, "none"))

    def loss_and_grads(rows, start_layer):
        farcer.zero_grad()
        loss, _ = farcer.packed_loss(rows, 0.5, start_layer)
        loss.backward()
        return loss.item(), [p.grad.clone() for n, p in farcer.lm.named_parameters() if "lora_" in n]

    full, full_grads = loss_and_grads(rows, 0)
    states = farcer.frozen_states(rows, 2)
    assert [len(s) for s in states] == [len(r.x) for r in rows]
    cut, cut_grads = loss_and_grads([replace(r, x=x) for r, x in zip(rows, states)], 2)
    assert cut == pytest.approx(full, abs=1e-5)
    assert len(cut_grads) == len(full_grads) > 0
    for a, b in zip(cut_grads, full_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # the decoder is whole again afterwards, and a depth the LM does not have is refused
    assert len(farcer.lm.get_decoder().layers) == 3
    with pytest.raises(ValueError, match="has 2 decoder layers"):
        apply_lora(random_farcer(FarcerConfig(image_dim=DIM), seed=4, **TINY)[0], layers=3)


def test_lora_dropout_is_active_in_train_mode_and_adapters_are_saved(tmp_path):
    model, proc = tiny(seed=3)
    model = apply_lora(model, r=8, alpha=16, dropout=0.5)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("projector.") for n in trainable)
    assert any(".q_proj.lora_A" in n for n in trainable) and any(".v_proj.lora_B" in n for n in trainable)
    with torch.no_grad():
        for name, param in model.lm.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)  # B starts at zero, which would hide the dropout
    prompt, target = [prompt_of(proc, 2, seed=14)], [proc.label_index("anger")]
    model.train()
    assert all(m.training for n, m in model.lm.named_modules() if n.endswith("lora_dropout.default"))
    with torch.no_grad():
        assert float(model(prompt, target)) != float(model(prompt, target))
        model.eval()
        assert float(model(prompt, target)) == float(model(prompt, target))
        expected = model.label_logprobs([prompt[0]])
    save_trainable(model, tmp_path / "lora.safetensors")
    fresh = apply_lora(tiny(seed=3)[0], r=8, alpha=16, dropout=0.5).eval()
    with pytest.raises(ModelUnavailableError, match="apply_lora"):
        load_trainable(tiny(seed=3)[0], tmp_path / "lora.safetensors")
    load_trainable(fresh, tmp_path / "lora.safetensors")
    fresh.projector.load_state_dict(model.projector.state_dict())
    torch.testing.assert_close(fresh.label_logprobs([prompt[0]]), expected)


@pytest.mark.parametrize("past_labels", ["none", "gold"])
def test_packed_rows_equal_one_prompt_per_target(pair, shots, past_labels):
    """A packed row (every turn a target, tree-masked branches) gives the same weighted loss as one
    prompt per target through `forward`, alone and right-padded in a batch."""
    farcer, proc = pair
    turns, faces = synthetic_dialogue(5, DIM, seed=21)
    faces[1] = None
    farcer.set_token_weights(proc.token_weights({label: i + 1 for i, label in enumerate(MELD7)}))
    labels = [proc.label_index(t.label) for t in turns]
    with torch.no_grad():
        singles = [
            farcer.packed_loss([proc.pack(farcer, turns, faces, [i], shots, past_labels)])[0] for i in range(5)
        ]
        prompts = [
            proc.tokens(build_dialogue_prompt(turns[: i + 1], MELD7, faces=faces[: i + 1], shots=shots,
                                              past_labels=past_labels, chat=proc.chat))
            for i in range(5)
        ]
        for i, prompt in enumerate(prompts):
            assert abs(float(singles[i] - farcer([prompt], [labels[i]]))) < 1e-4
        every = proc.pack(farcer, turns, faces, range(5), shots, past_labels)
        pooled = farcer(prompts, labels)
        assert abs(float(farcer.packed_loss([every])[0] - pooled)) < 1e-4
        # Unweighted, right padding must not change a row: the batch pools the rows' tokens.
        farcer.set_token_weights(None)
        short = proc.pack(farcer, turns[:2], faces[:2], [1], shots, past_labels)
        _, both = farcer.packed_loss([every, short], text_weight=0.5)
        _, alone = farcer.packed_loss([every], text_weight=0.5)
        _, other = farcer.packed_loss([short], text_weight=0.5)
        assert both["label"] == pytest.approx((5 * alone["label"] + other["label"]) / 6, abs=1e-5)
        n, m = len(every.text_at), len(short.text_at)
        assert n > m > 0
        assert both["text"] == pytest.approx((n * alone["text"] + m * other["text"]) / (n + m), abs=1e-5)
    with pytest.raises(InputError, match="target indices"):
        proc.pack(farcer, turns, faces, [5])
