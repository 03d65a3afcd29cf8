"""FARCER prompt builder and model core, on tiny random Llamas with a local word tokenizer."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from backend.dialogue import Turn
from backend.errors import InputError, ModelUnavailableError
from backend.labels import IEMOCAP6, MELD7
from benchmarks.farcer_incremental import (
    main,
    random_farcer,
    run,
    synthetic_dialogue,
    synthetic_pool,
    word_tokenizer,
)
from models.farcer import (
    Farcer,
    FarcerConfig,
    ModalityProjector,
    apply_lora,
    label_token_weights,
    load_paper_farcer,
    load_trainable,
    save_trainable,
)
from models.farcer_prompt import (
    ChatFormat,
    Example,
    Image,
    build_dialogue_prompt,
    build_prompt,
    render_text,
    sample_shots,
    training_prompts,
)

DIM = 8
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}


def tiny(seed: int = 0, **config) -> Farcer:
    return random_farcer(FarcerConfig(image_dim=DIM, **config), seed=seed, **TINY)


@pytest.fixture(scope="module")
def farcer():
    return tiny()


@pytest.fixture(scope="module")
def shots():
    return sample_shots(synthetic_pool(10, DIM, seed=5), 3, seed=0)


def prompt_of(farcer, n_turns: int, seed: int, shots=()):
    turns, faces = synthetic_dialogue(n_turns, DIM, seed)
    return build_dialogue_prompt(turns, farcer.labels, faces=faces, shots=shots, chat=farcer.chat)


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


def test_chat_format_is_read_off_the_tokenizer_template(farcer):
    assert farcer.chat == ChatFormat(
        "<s><|system|>\n", "<|eot|><|user|>\n", "<|eot|><|assistant|>\n", "<|eot|>"
    )
    eot = farcer.tokenizer.convert_tokens_to_ids("<|eot|>")
    assert all(c[-1] == eot and len(c) == 2 for c in farcer.candidates)


# --- model -----------------------------------------------------------------------------------------


def test_three_layer_projector_is_saved_in_full(farcer, tmp_path):
    projector = ModalityProjector(DIM, 32, "three-layer", dropout=0.1)
    assert {k for k in projector.state_dict() if k.endswith("weight")} == {
        "net.0.weight",
        "net.3.weight",
        "net.6.weight",
    }
    assert projector.net[0].out_features == DIM and projector.net[6].out_features == 32
    model = tiny(projector="three-layer").eval()
    save_trainable(model, tmp_path / "p.safetensors")
    fresh = tiny(seed=1, projector="three-layer").eval()
    load_trainable(fresh, tmp_path / "p.safetensors")
    for key, value in model.projector.state_dict().items():
        assert torch.equal(fresh.projector.state_dict()[key], value)
    with pytest.raises(InputError, match="three-layer projector"):
        load_trainable(farcer, tmp_path / "p.safetensors")


def test_batch_scores_equal_per_row_scores(farcer):
    prompts = [prompt_of(farcer, n, seed) for n, seed in [(1, 1), (4, 2), (2, 3)]]
    batched = farcer.label_logprobs(prompts)
    for row, prompt in enumerate(prompts):
        torch.testing.assert_close(batched[row], farcer.label_logprobs([prompt])[0], atol=1e-5, rtol=0)
    probs = farcer.score_labels(prompts)
    assert probs.shape == (3, len(MELD7))
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))


def test_batch_loss_equals_per_row_losses(farcer):
    prompts = [prompt_of(farcer, n, seed) for n, seed in [(1, 4), (3, 5)]]
    targets = ["joy", "disgust"]
    with torch.no_grad():
        rows = [farcer([p], [t]) for p, t in zip(prompts, targets)]
        # Unweighted, every answer is 2 tokens (label + eot): the pooled mean is the mean of rows.
        torch.testing.assert_close(farcer(prompts, targets), (rows[0] + rows[1]) / 2, atol=1e-5, rtol=0)
    with pytest.raises(InputError, match="unknown target label"):
        farcer(prompts[:1], ["happy-ish"])


def test_label_scores_match_full_teacher_forced_sequence(farcer):
    """The tree-masked candidate pass gives the same log P(label + eot | prompt) as running each
    prompt + candidate sequence through the plain LM."""
    prompt = prompt_of(farcer, 3, seed=7)
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
        model = tiny(seed=seed)
        prompts, targets = [], []
        for s in range(6):
            turns, faces = synthetic_dialogue(3, DIM, seed=100 * seed + s)
            prompts.append(build_dialogue_prompt(turns, model.labels, faces=faces, chat=model.chat))
            targets.append(turns[-1].label)
        model.lm.requires_grad_(True)
        model.train()
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        first = None
        for _ in range(60):
            loss = model(prompts, targets)
            first = first if first is not None else loss.item()
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert loss.item() < first / 3
        model.eval()
        argmax = model.score_labels(prompts).argmax(-1)
        for prompt, best in zip(prompts, argmax):
            _, label = model.greedy_label(prompt)
            if label is not None:
                assert label == model.labels[int(best)]
                checked.add(label)
    assert checked, "greedy decoding never produced a valid label"


@pytest.mark.parametrize("turns_per_pass", [1, 3, 16])
@pytest.mark.parametrize("past_labels", ["none", "gold", "predicted"])
def test_incremental_labelling_matches_naive(farcer, shots, past_labels, turns_per_pass):
    turns, faces = synthetic_dialogue(7, DIM, seed=11)
    faces[2] = None  # a turn without a face has no slot
    prefix = farcer.encode_prefix(shots, past_labels)
    incremental = farcer.label_dialogue(turns, faces, prefix, past_labels, turns_per_pass)
    naive = farcer.label_dialogue_naive(turns, faces, prefix, past_labels=past_labels)
    assert incremental.logprobs.shape == (7, len(MELD7))
    assert float((incremental.logprobs - naive.logprobs).abs().max()) <= 1e-4
    assert incremental.labels == naive.labels and incremental.warning is None
    again = farcer.label_dialogue(turns, faces, prefix, past_labels, turns_per_pass)  # the prefix is reusable
    torch.testing.assert_close(again.logprobs, incremental.logprobs)


@pytest.mark.parametrize("turns_per_pass", [1, 4, 16])
@pytest.mark.parametrize("past_labels", ["none", "gold"])
def test_sliding_window_drops_oldest_turns_and_warns(shots, past_labels, turns_per_pass):
    model = tiny(max_context=260)
    turns, faces = synthetic_dialogue(12, DIM, seed=12)
    prefix = model.encode_prefix(shots, past_labels)
    incremental = model.label_dialogue(turns, faces, prefix, past_labels, turns_per_pass)
    naive = model.label_dialogue_naive(turns, faces, prefix, past_labels)
    assert incremental.warning and "oldest past turns were dropped" in incremental.warning
    assert incremental.warning == naive.warning and incremental.starts == naive.starts
    assert len(set(naive.starts)) > 2  # the window moved more than once, inside and across passes
    assert float((incremental.logprobs - naive.logprobs).abs().max()) <= 1e-4
    too_long = [Turn("A", None, None, " ".join(["oh"] * 300))]
    with pytest.raises(InputError, match="more than the model context"):
        model.label_dialogue(too_long, None, prefix, past_labels)
    other = "none" if past_labels == "gold" else "gold"
    with pytest.raises(InputError, match="same past_labels"):
        model.label_dialogue(turns, faces, prefix, past_labels=other)
    with pytest.raises(InputError, match="at least 1"):
        model.label_dialogue(turns, faces, prefix, past_labels, turns_per_pass=0)


def test_benchmark_compares_the_three_ways_on_one_dialogue(farcer):
    result = run(farcer, turns=20, shots=3)
    assert result["same_labels"] and result["max_abs_logprob_diff"] <= 1e-4
    assert result["prefix_tokens"] > 0 and result["warning"] is None


def test_benchmark_cli_writes_its_json_on_the_offline_core(tmp_path):
    out = tmp_path / "farcer.json"
    result = main(["--turns", "3", "--shots", "3", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert {"naive_s", "incremental_s", "speedup", "same_labels", "max_abs_logprob_diff", "model"} <= set(result)
    assert result["same_labels"] and "farcer-core" in result["model"]


def test_bad_faces_are_input_errors(farcer):
    turns, _ = synthetic_dialogue(2, DIM, seed=13)
    with pytest.raises(InputError, match="expected \\(8,\\)"):
        farcer.label_logprobs([build_dialogue_prompt(turns, MELD7, faces=[np.zeros(5), None])])
    with pytest.raises(InputError, match="one per turn"):
        farcer.label_dialogue(turns, [None], farcer.encode_prefix())


def test_label_token_weights_are_balanced(farcer):
    counts = {"neutral": 6, "joy": 3, "fear": 1}
    weights = label_token_weights(MELD7, farcer.tokenizer, counts, eot="<|eot|>")
    ids = {label: farcer.tokenizer.convert_tokens_to_ids(label) for label in counts}
    eot = farcer.tokenizer.convert_tokens_to_ids("<|eot|>")
    total, classes = 20, 4  # 10 label tokens + 10 eot tokens over 4 distinct tokens
    assert weights[ids["fear"]] == pytest.approx(total / (classes * 1))
    assert weights[ids["neutral"]] == pytest.approx(total / (classes * 6))
    assert weights[eot] == pytest.approx(total / (classes * 10))
    with pytest.raises(InputError, match="not one of"):
        label_token_weights(MELD7, farcer.tokenizer, {"frustration": 1})


def test_lora_dropout_is_active_in_train_mode_and_adapters_are_saved(tmp_path):
    model = apply_lora(tiny(seed=3), r=8, alpha=16, dropout=0.5)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("projector.") for n in trainable)
    assert any(".q_proj.lora_A" in n for n in trainable) and any(".v_proj.lora_B" in n for n in trainable)
    with torch.no_grad():
        for name, param in model.lm.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)  # B starts at zero, which would hide the dropout
    prompt, target = [prompt_of(model, 2, seed=14)], ["anger"]
    model.train()
    assert all(m.training for n, m in model.lm.named_modules() if n.endswith("lora_dropout.default"))
    with torch.no_grad():
        assert float(model(prompt, target)) != float(model(prompt, target))
        model.eval()
        assert float(model(prompt, target)) == float(model(prompt, target))
        expected = model.label_logprobs([prompt[0]])
    save_trainable(model, tmp_path / "lora.safetensors")
    fresh = apply_lora(tiny(seed=3), r=8, alpha=16, dropout=0.5).eval()
    with pytest.raises(InputError, match="apply_lora"):
        load_trainable(tiny(seed=3), tmp_path / "lora.safetensors")
    load_trainable(fresh, tmp_path / "lora.safetensors")
    fresh.projector.load_state_dict(model.projector.state_dict())
    torch.testing.assert_close(fresh.label_logprobs([prompt[0]]), expected)


def test_paper_loader_runs_on_tiny_local_models(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM, ViTConfig, ViTImageProcessorPil, ViTModel

    tokenizer = word_tokenizer(["oh", "my", "god", "hi", "bye", "A", "B"])
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), **TINY)).save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    vit = ViTConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=32,
        patch_size=16,
    )
    ViTModel(vit, add_pooling_layer=False).save_pretrained(tmp_path / "vit")
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")

    model, faces = load_paper_farcer(
        str(tmp_path / "lm"), str(tmp_path / "vit"), device="cpu", dtype=torch.float32
    )
    features = faces([np.zeros((48, 40, 3), np.uint8), np.full((20, 20, 3), 200, np.uint8)])
    assert features.shape == (2, 16) and model.config.image_dim == 16
    turns = [Turn("A", None, None, "oh my god"), Turn("B", None, None, "bye")]
    labels = model.label_dialogue(turns, list(features), model.encode_prefix())
    assert len(labels.labels) == 2 and set(labels.labels) <= set(MELD7)

    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError, match="not available"):
        load_paper_farcer(str(tmp_path / "lm"), "no-such-org/no-such-vit", device="cpu")
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize("past_labels", ["none", "gold"])
def test_packed_rows_equal_one_prompt_per_target(farcer, shots, past_labels):
    """A packed row (every turn a target, tree-masked branches) gives the same weighted loss as one
    prompt per target through `forward`, alone and right-padded in a batch."""
    turns, faces = synthetic_dialogue(5, DIM, seed=21)
    faces[1] = None
    farcer.set_label_counts({label: i + 1 for i, label in enumerate(MELD7)})
    with torch.no_grad():
        singles = [farcer.packed_loss([farcer.pack(turns, faces, [i], shots, past_labels)])[0] for i in range(5)]
        prompts = [
            build_dialogue_prompt(turns[: i + 1], MELD7, faces=faces[: i + 1], shots=shots,
                                  past_labels=past_labels, chat=farcer.chat)
            for i in range(5)
        ]
        for i, prompt in enumerate(prompts):
            assert abs(float(singles[i] - farcer([prompt], [turns[i].label]))) < 1e-4
        every = farcer.pack(turns, faces, range(5), shots, past_labels)
        pooled = farcer([prompt for prompt in prompts], [t.label for t in turns])
        assert abs(float(farcer.packed_loss([every])[0] - pooled)) < 1e-4
        # Unweighted, right padding must not change a row: the batch pools the rows' tokens.
        farcer.token_weights = None
        short = farcer.pack(turns[:2], faces[:2], [1], shots, past_labels)
        _, both = farcer.packed_loss([every, short], text_weight=0.5)
        _, alone = farcer.packed_loss([every], text_weight=0.5)
        _, other = farcer.packed_loss([short], text_weight=0.5)
        assert both["label"] == pytest.approx((5 * alone["label"] + other["label"]) / 6, abs=1e-5)
        n, m = len(every.text_at), len(short.text_at)
        assert n > m > 0
        assert both["text"] == pytest.approx((n * alone["text"] + m * other["text"]) / (n + m), abs=1e-5)
    with pytest.raises(InputError, match="target indices"):
        farcer.pack(turns, faces, [5])
