"""MiSTER-E losses against hand-computed values, masking of padded turns and absent experts."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.losses import focal_loss, mister_e_loss, supervised_contrastive_loss, symmetric_kl
from models.mister_e import EXPERTS, MisterEConfig, MisterEOutput

E, LN3 = math.e, math.log(3)


def test_focal_with_gamma_zero_is_cross_entropy():
    torch.manual_seed(0)
    logits, targets = torch.randn(3, 5, 4), torch.randint(0, 4, (3, 5))
    mask = torch.rand(3, 5) > 0.3
    weight = torch.tensor([0.5, 1.0, 2.0, 3.0])
    assert torch.allclose(focal_loss(logits, targets, 0.0, mask),
                          F.cross_entropy(logits[mask], targets[mask]))
    assert torch.allclose(focal_loss(logits, targets, 0.0, mask, weight),
                          F.cross_entropy(logits[mask], targets[mask], weight=weight))


def test_focal_hand_computed():
    # turn 0: p_t = softmax([0, 0])[0] = 1/2    -> (1 - 1/2)^2 * log 2
    # turn 1: p_t = softmax([log 3, 0])[0] = 3/4 -> (1 - 3/4)^2 * log(4/3)
    # turn 2 is padding (label -1, NaN logits) and must not count.
    logits = torch.tensor([[[0.0, 0.0], [math.log(3), 0.0], [float("nan"), 0.0]]], requires_grad=True)
    targets, mask = torch.tensor([[0, 0, -1]]), torch.tensor([[True, True, False]])
    loss = focal_loss(logits, targets, 2.0, mask)
    expected = (0.25 * math.log(2) + 0.0625 * math.log(4 / 3)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[0, 2].abs().sum() == 0


def test_focal_rejects_out_of_range_labels_on_real_turns():
    with pytest.raises(ValueError, match=r"class ids in \[0, 2\)"):
        focal_loss(torch.zeros(1, 2, 2), torch.tensor([[0, 5]]), 3.0, torch.tensor([[True, True]]))
    with pytest.raises(ValueError, match="bool tensor of shape"):
        focal_loss(torch.zeros(1, 2, 2), torch.tensor([[0, 1]]), 3.0, torch.tensor([True, True]))


def test_supcon_hand_computed_two_labels():
    # Utterance 1 (label 0): speech a1 = (1, 0), text b1 = (0, 1).
    # Utterance 2 (label 1): speech a2 = (1, 0), text b2 = (-1, 0).  Temperature 1.
    # Anchor a1: positive b1 (cos 0); others a2 (1), b1 (0), b2 (-1) -> log(e + 1 + 1/e)
    # Anchor a2: positive b2 (-1);    others a1 (1), b1 (0), b2 (-1) -> 1 + log(e + 1 + 1/e)
    # Anchor b1: positive a1 (0);     others a1, a2, b2 all 0        -> log 3
    # Anchor b2: positive a2 (-1);    others a1 (-1), a2 (-1), b1 (0) -> 1 + log(1 + 2/e)
    expected = (2 * math.log(E + 1 + 1 / E) + 1 + LN3 + 1 + math.log(1 + 2 / E)) / 4
    # Unnormalised on purpose (the loss L2-normalises), plus a padded turn full of garbage.
    z_a = torch.tensor([[[2.0, 0.0], [5.0, 0.0], [1e6, -3.0]]])
    z_b = torch.tensor([[[0.0, 3.0], [-0.5, 0.0], [float("nan"), 0.0]]])
    labels, mask = torch.tensor([[0, 1, 0]]), torch.tensor([[True, True, False]])
    loss = supervised_contrastive_loss(z_a, z_b, labels, mask, temperature=1.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_supcon_hand_computed_one_label_and_temperature():
    # Same vectors, both utterances labelled 0, temperature 0.5 (similarities doubled):
    # every other vector is a positive, so loss(anchor) = logsumexp(others) - mean(others).
    # a1 and a2: others (2, 0, -2)   -> log(e^2 + 1 + e^-2)
    # b1:        others (0, 0, 0)    -> log 3
    # b2:        others (-2, -2, 0)  -> log(2 e^-2 + 1) + 4/3
    expected = (2 * math.log(E**2 + 1 + E**-2) + LN3 + math.log(1 + 2 * E**-2) + 4 / 3) / 4
    z_a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    z_b = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], requires_grad=True)
    loss = supervised_contrastive_loss(z_a, z_b, torch.tensor([0, 0]), torch.tensor([True, True]), 0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.isfinite(z_b.grad).all()


def test_symmetric_kl_hand_computed():
    # p = softmax([0, 0]) = (1/2, 1/2), q = softmax([log 3, 0]) = (3/4, 1/4)
    # KL(p||q) + KL(q||p) = sum (p - q)(log p - log q) = 1/4 log(3/2) + 1/4 log 2 = log(3) / 4
    p, q = [0.0, 0.0], [math.log(3), 0.0]
    nan = [float("nan"), 0.0]
    # turn 0: experts (p, q, p), all available -> pairs log3/4, 0, log3/4
    # turn 1: experts (p, p, q), third unavailable -> one pair, 0
    # turn 2: only the first expert available -> no pair
    # turn 3: padding
    speech = torch.tensor([[p, p, p, nan]])
    text = torch.tensor([[q, p, q, nan]])
    cross = torch.tensor([[p, q, q, nan]])
    available = torch.tensor([[[True] * 3, [True, True, False], [True, False, False], [False] * 3]])
    mask = torch.tensor([[True, True, True, False]])
    loss = symmetric_kl([speech, text, cross], mask, available)
    assert loss.item() == pytest.approx((LN3 / 4 + LN3 / 4) / 4, rel=1e-6)
    only_full_turn = torch.tensor([[True, False, False, False]])
    loss = symmetric_kl([speech, text, cross], only_full_turn, available)
    assert loss.item() == pytest.approx(LN3 / 6, rel=1e-6)


def random_output(seed: int = 0) -> tuple[MisterEOutput, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    B, T, C = 2, 4, 3
    mask = torch.tensor([[True] * 4, [True] * 3 + [False]])
    speech_present = mask.clone()
    speech_present[0, 2] = False
    available = torch.stack([speech_present, mask, speech_present & mask], -1)
    expert_logits = {name: torch.randn(B, T, C, generator=g) * available[..., i, None]
                     for i, name in enumerate(EXPERTS)}
    output = MisterEOutput(logits=torch.randn(B, T, C, generator=g), expert_logits=expert_logits,
                           gate=available.float(), z_speech=torch.randn(B, T, 5, generator=g),
                           z_text=torch.randn(B, T, 5, generator=g), available=available)
    labels = torch.randint(0, C, (B, T), generator=g).masked_fill(~mask, -1)
    return output, labels, mask


def test_mister_e_loss_combines_masked_terms():
    output, labels, mask = random_output()
    config = MisterEConfig.tiny(3)
    terms = mister_e_loss(output, labels, mask, config)
    assert set(terms) == {"total", "focal_mixed", "focal_speech", "focal_text", "focal_cross", "supcon", "kl"}

    has_speech, both = output.available[..., 0], output.available[..., 2]
    assert torch.allclose(terms["focal_speech"],
                          focal_loss(output.expert_logits["speech"], labels, 3.0, has_speech))
    assert torch.allclose(terms["supcon"],
                          supervised_contrastive_loss(output.z_speech, output.z_text, labels, both, 1.0))
    focal = sum(terms[f"focal_{n}"] for n in ("mixed", *EXPERTS))
    assert torch.allclose(terms["total"], focal + 2.0 * terms["supcon"] + 0.1 * terms["kl"])

    # The speech-absent turn's Z vectors and the padded turn's anything cannot move any term.
    output.z_speech[0, 2] = 1e3
    output.z_text[1, 3] = float("nan")
    output.logits[1, 3] = float("nan")
    changed = mister_e_loss(output, labels, mask, config)
    for key, value in terms.items():
        assert torch.allclose(changed[key], value), key
