"""MiSTER-E stage-2 model: paper sizes, padding invariance, missing modalities, gate, vote, overfitting."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from models.losses import mister_e_loss
from models.mister_e import EXPERTS, ContextExpert, MisterE, MisterEConfig, MisterEOutput, majority_vote

N_LABELS, DS, DT = 4, 12, 10


def tiny_model(seed: int = 0) -> MisterE:
    torch.manual_seed(seed)
    return MisterE(MisterEConfig.tiny(N_LABELS, DS, DT)).eval()


def dialogue(turns: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(turns, DS, generator=g), torch.randn(turns, DT, generator=g), \
        torch.randint(0, N_LABELS, (turns,), generator=g)


def pad(x: torch.Tensor, turns: int, fill: float) -> torch.Tensor:
    extra = torch.full((turns - len(x), *x.shape[1:]), fill, dtype=x.dtype)
    return torch.cat([x, extra])


def test_config_round_trips_through_json():
    config = MisterEConfig.small(7, speech_dim=768, text_dim=384)
    restored = MisterEConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    assert restored.context_kernels == (1, 3, 5)
    with pytest.raises(ValueError, match="unknown MisterEConfig keys: hidden"):
        MisterEConfig.from_dict({**config.to_dict(), "hidden": 3})
    with pytest.raises(ValueError, match="needs n_labels"):
        MisterEConfig.from_dict({"speech_dim": 8})


@pytest.mark.parametrize("change, message", [
    ({"attn_width": 100}, "not divisible"),
    ({"context_kernels": (1, 2)}, "odd"),
    ({"n_labels": 0}, "positive: n_labels"),
])
def test_config_rejects_inconsistent_sizes(change, message):
    with pytest.raises(ValueError, match=message):
        replace(MisterEConfig.paper(6), **change)


def test_paper_preset_has_the_release_sizes():
    config = MisterEConfig.paper(6, speech_dim=2048, text_dim=3584)
    with torch.device("meta"):
        model = MisterE(config)
    speech, text = model.speech_expert, model.text_expert
    assert [tuple(c.weight.shape) for c in speech.convs] == [(1024, 2048, k) for k in (1, 3, 5)]
    assert [c.padding for c in speech.convs] == [(0,), (1,), (2,)]
    assert tuple(text.convs[0].weight.shape) == (1024, 3584, 1)
    gru = speech.gru
    assert (gru.hidden_size, gru.num_layers, gru.bidirectional) == (512, 3, True)
    assert tuple(gru.weight_ih_l0.shape) == (3 * 512, 1024)
    assert tuple(gru.weight_ih_l2_reverse.shape) == (3 * 512, 1024)
    assert tuple(speech.skip.weight.shape) == (1024, 2048)
    assert tuple(speech.head.weight.shape) == (6, 1024)

    cross = model.cross_expert
    assert tuple(cross.text_in.weight.shape) == (1024, 3584)
    assert tuple(cross.speech_skip.weight.shape) == (1024, 2048)
    assert len(cross.blocks) == 4
    layer = cross.blocks[0].text_from_speech
    assert tuple(layer.q.weight.shape) == (120, 1024)
    assert (layer.attn.embed_dim, layer.attn.num_heads, layer.attn.dropout) == (120, 3, 0.1)
    assert tuple(layer.proj.weight.shape) == (1024, 120)
    assert layer.drop.p == 0.5 and layer.norm.eps == 1e-6
    norm, hidden, _, out = cross.head
    assert norm.normalized_shape == (2048,) and tuple(hidden.weight.shape) == (1024, 2048)
    assert tuple(out.weight.shape) == (6, 1024)

    first, _, last = model.gate.net
    assert tuple(first.weight.shape) == (10, 18) and tuple(last.weight.shape) == (3, 10)
    assert model.gate.temperature == 2.0


def test_padding_never_leaks_into_real_turns():
    model = tiny_model()
    short, long = dialogue(3, seed=1), dialogue(6, seed=2)
    (s, t, y), T = short, 6
    alone = model(s[None], t[None], torch.ones(1, 3, dtype=torch.bool))

    # The short dialogue sits second in the batch, its padding full of garbage.
    for garbage in (1e4, float("nan")):
        speech = torch.stack([long[0], pad(s, T, garbage)])
        text = torch.stack([long[1], pad(t, T, -garbage)])
        mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
        batched = model(speech, text, mask)
        assert torch.allclose(batched.logits[1, :3], alone.logits[0], atol=1e-5)
        assert torch.allclose(batched.gate[1, :3], alone.gate[0], atol=1e-5)
        for name in EXPERTS:
            assert torch.allclose(batched.expert_logits[name][1, :3], alone.expert_logits[name][0], atol=1e-5)
        assert torch.allclose(batched.z_text[1, :3], alone.z_text[0], atol=1e-5)
        assert torch.equal(batched.gate[1, 3:], torch.zeros(3, 3))
        assert torch.equal(batched.logits[1, 3:], torch.zeros(3, N_LABELS))

        labels = torch.stack([long[2], pad(y, T, -1).long()])
        only_short = mask & torch.tensor([[False], [True]])
        batch_terms = mister_e_loss(batched, labels, only_short, model.config)
        alone_terms = mister_e_loss(alone, y[None], torch.ones(1, 3, dtype=torch.bool), model.config)
        for key, value in alone_terms.items():
            assert torch.allclose(batch_terms[key], value, atol=1e-5), key


def test_padding_does_not_change_gradients_wrt_real_inputs():
    model = tiny_model()
    (s, t, y), (ls, lt, ly) = dialogue(3, seed=3), dialogue(5, seed=4)

    s_alone = s[None].clone().requires_grad_()
    out = model(s_alone, t[None], torch.ones(1, 3, dtype=torch.bool))
    mister_e_loss(out, y[None], torch.ones(1, 3, dtype=torch.bool), model.config)["total"].backward()

    speech = torch.stack([pad(s, 5, 3.0), ls]).requires_grad_()
    mask = torch.tensor([[True] * 3 + [False] * 2, [True] * 5])
    out = model(speech, torch.stack([pad(t, 5, 3.0), lt]), mask)
    only_short = mask & torch.tensor([[True], [False]])
    labels = torch.stack([pad(y, 5, 0).long(), ly])
    mister_e_loss(out, labels, only_short, model.config)["total"].backward()

    assert s_alone.grad.abs().sum() > 0
    assert torch.allclose(speech.grad[0, :3], s_alone.grad[0], atol=1e-5)
    assert torch.equal(speech.grad[0, 3:], torch.zeros(2, DS))


def missing_batch():
    (s1, t1, _), (s2, t2, _) = dialogue(5, seed=5), dialogue(5, seed=6)
    speech, text = torch.stack([s1, s2]), torch.stack([t1, t2])
    mask = torch.tensor([[True] * 5, [True] * 4 + [False]])
    speech_present = mask.clone()
    speech_present[0, 1] = speech_present[1, 3] = False
    text_present = mask.clone()
    text_present[0, 3] = False
    return speech, text, mask, speech_present, text_present


@pytest.mark.parametrize("train", [False, True])
def test_missing_modality_gets_zero_weight(train):
    model = tiny_model().train(train)
    speech, text, mask, sp, tp = missing_batch()
    out = model(speech, text, mask, sp, tp)

    expected = torch.stack([sp & mask, tp & mask, sp & tp & mask], -1)
    assert torch.equal(out.available, expected)
    assert torch.equal(out.gate[~expected], torch.zeros(int((~expected).sum())))
    assert torch.allclose(out.gate.sum(-1)[mask], torch.ones(int(mask.sum())))
    assert torch.equal(out.gate[0, 1], torch.tensor([0.0, 1.0, 0.0]))  # speech absent: text expert only
    assert torch.equal(out.gate[0, 3], torch.tensor([1.0, 0.0, 0.0]))  # text absent: speech expert only
    assert torch.allclose(out.logits[0, 1], out.expert_logits["text"][0, 1])
    mixed = sum(out.gate[..., i, None] * out.expert_logits[name] for i, name in enumerate(EXPERTS))
    assert torch.allclose(out.logits, mixed)
    for value in (out.logits, out.gate, out.z_speech, out.z_text, *out.expert_logits.values()):
        assert torch.isfinite(value).all()


def test_absent_speech_vector_is_ignored_whatever_it_holds():
    model = tiny_model()
    speech, text, mask, sp, tp = missing_batch()
    outputs = []
    for garbage in (0.0, 1e6, float("inf"), float("nan")):
        speech = speech.clone()
        speech[0, 1] = garbage
        outputs.append(model(speech, text, mask, sp, tp))
    for out in outputs[1:]:
        assert torch.equal(out.logits, outputs[0].logits)
        assert torch.equal(out.gate, outputs[0].gate)


def test_dialogue_without_any_speech_stays_finite():
    model = tiny_model().train()
    speech, text, mask, _, _ = missing_batch()
    speech.requires_grad_()
    no_speech = torch.zeros_like(mask)
    out = model(speech, text, mask, no_speech)
    assert torch.equal(out.gate[mask], torch.tensor([[0.0, 1.0, 0.0]]).expand(int(mask.sum()), 3))
    assert torch.isfinite(out.z_text).all() and torch.isfinite(out.logits).all()
    labels = torch.zeros(mask.shape, dtype=torch.long)
    mister_e_loss(out, labels, mask, model.config)["total"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert torch.equal(speech.grad, torch.zeros_like(speech))


def test_context_expert_ignores_padding_on_its_own():
    config = MisterEConfig.tiny(N_LABELS, DS, DT)
    torch.manual_seed(0)
    expert = ContextExpert(DS, config).eval()
    x, mask = torch.randn(1, 5, DS), torch.tensor([[True] * 3 + [False] * 2])
    clean = expert(x[:, :3], mask[:, :3])
    x[0, 3:] = 1e4
    padded = expert(x, mask)
    assert torch.allclose(padded[0, :3], clean[0], atol=1e-5)
    assert torch.equal(padded[0, 3:], torch.zeros(2, N_LABELS))


def test_predict_gives_probabilities_in_eval_mode_and_restores_training():
    model = tiny_model().train()
    speech, text, mask, sp, tp = missing_batch()
    probs = model.predict(speech, text, mask, sp, tp)
    assert model.training
    assert set(probs) == {"mixed", *EXPERTS}
    assert torch.allclose(probs["mixed"].sum(-1)[mask], torch.ones(int(mask.sum())))
    assert torch.equal(probs["speech"][0, 1], torch.zeros(N_LABELS))
    assert torch.equal(probs["cross"][0, 3], torch.zeros(N_LABELS))
    assert torch.allclose(probs["text"][0, 1].sum(), torch.tensor(1.0))
    assert torch.equal(probs["mixed"][1, 4], torch.zeros(N_LABELS))
    again = model.predict(speech, text, mask, sp, tp)  # no dropout: deterministic
    assert torch.equal(again["mixed"], probs["mixed"])


def test_bad_inputs_raise_value_error():
    model = tiny_model()
    speech, text, mask, sp, tp = missing_batch()
    with pytest.raises(ValueError, match="neither speech nor text"):
        model(speech, text, mask, sp, tp & ~torch.tensor([[False, True, False, False, False]] * 2))
    with pytest.raises(ValueError, match="real turns first"):
        model(speech, text, torch.tensor([[True, False, True, True, True]] * 2))
    with pytest.raises(ValueError, match="at least one real turn"):
        model(speech, text, torch.tensor([[False] * 5, [True] * 5]))
    with pytest.raises(ValueError, match="do not match"):
        model(speech[..., :8], text, mask)
    with pytest.raises(ValueError, match="bool"):
        model(speech, text, mask.float())


def vote_output(expert_logits: list[list[list[float]]], available: list[list[bool]]) -> MisterEOutput:
    """One dialogue; expert_logits[expert][turn] are C logits."""
    logits = torch.tensor(expert_logits).transpose(0, 1)[None]  # [1, T, 3, C]
    avail = torch.tensor(available)[None]
    experts = {name: logits[:, :, i] for i, name in enumerate(EXPERTS)}
    return MisterEOutput(logits=logits.sum(2), expert_logits=experts, gate=avail.float(), z_speech=logits,
                         z_text=logits, available=avail)


def test_majority_vote():
    a, b, c = [5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]
    out = vote_output(
        [[a, a, b, c, a], [b, b, a, a, a], [b, c, c, b, a]],  # speech, text, cross per turn
        [[True] * 3, [True] * 3, [True] * 3, [True, False, False], [False] * 3],
    )
    # turn 0: speech a, text b, cross b -> b; turn 1: a, b, c -> cross's c; turn 2: b, a, c -> c;
    # turn 3: speech only -> c; turn 4: padding -> -1
    assert majority_vote(out).tolist() == [[1, 2, 2, 2, -1]]


def test_tiny_model_overfits_a_tiny_batch():
    torch.manual_seed(0)
    config = replace(MisterEConfig.tiny(N_LABELS, DS, DT), dropout=0.0, attn_dropout=0.0)
    model = MisterE(config)
    (s1, t1, y1), (s2, t2, y2) = dialogue(6, seed=7), dialogue(4, seed=8)
    speech, text = torch.stack([s1, pad(s2, 6, 0.0)]), torch.stack([t1, pad(t2, 6, 0.0)])
    labels = torch.stack([y1, pad(y2, 6, -1).long()])
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    history = []
    for _ in range(50):
        terms = mister_e_loss(model(speech, text, mask), labels, mask, config)
        optimizer.zero_grad()
        terms["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        history.append({k: v.item() for k, v in terms.items()})
    first, last = history[0], history[-1]
    # SupCon at temperature 1 has a floor well above 0 (cosines are bounded), so the total cannot
    # fall as far as the focal terms.
    assert last["total"] < 0.6 * first["total"]
    assert last["supcon"] < 0.8 * first["supcon"]
    for name in ("mixed", *EXPERTS):
        assert last[f"focal_{name}"] < 0.05 * first[f"focal_{name}"]
    predicted = model.predict(speech, text, mask)["mixed"].argmax(-1)
    assert torch.equal(predicted[mask], labels[mask])
