"""MiSTER-E training losses, masked so that padded turns and absent experts never contribute."""
from __future__ import annotations

from itertools import combinations
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from models.mister_e import EXPERTS, MisterEConfig, MisterEOutput


def _check_mask(mask: Tensor, shape: torch.Size, what: str) -> None:
    if mask.dtype != torch.bool or mask.shape != shape:
        raise ValueError(f"{what} mask must be a bool tensor of shape {tuple(shape)}, "
                         f"got {mask.dtype} {tuple(mask.shape)}")


def focal_loss(logits: Tensor, targets: Tensor, gamma: float, mask: Tensor,
               weight: Tensor | None = None) -> Tensor:
    """-(1 - p_t)^gamma log p_t over the turns in mask; class weights average like F.cross_entropy.

    logits [..., C], targets [...] class ids (anything on masked-out turns), mask [...] bool.
    """
    _check_mask(mask, targets.shape, "focal loss")
    logits, targets = logits[mask], targets[mask]
    if targets.numel() == 0:
        return logits.sum()
    n_labels = logits.size(-1)
    if ((targets < 0) | (targets >= n_labels)).any():
        raise ValueError(f"focal loss targets must be class ids in [0, {n_labels}) on real turns, "
                         f"got {sorted(set(targets.tolist()))}")
    log_pt = logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
    loss = -(1 - log_pt.exp()).pow(gamma) * log_pt
    w = torch.ones_like(loss) if weight is None else weight[targets]
    return (w * loss).sum() / w.sum()


def supervised_contrastive_loss(z_a: Tensor, z_b: Tensor, labels: Tensor, mask: Tensor,
                                temperature: float) -> Tensor:
    """SupCon over two views of each turn in mask (z_a, z_b [..., D]), L2-normalised, no projection.

    All 2N vectors are anchors; positives are every other vector with the same label, from either
    view. Every anchor has at least its own other view as a positive.
    """
    _check_mask(mask, labels.shape, "contrastive loss")
    a, b, y = z_a[mask], z_b[mask], labels[mask]
    if y.numel() == 0:
        return a.sum() + b.sum()
    feats = F.normalize(torch.cat([a, b]), dim=-1)
    y = torch.cat([y, y])
    sim = feats @ feats.T / temperature
    not_self = ~torch.eye(len(y), dtype=torch.bool, device=y.device)
    sim = sim.masked_fill(~not_self, float("-inf"))
    log_prob = sim - sim.logsumexp(-1, keepdim=True)
    positives = (y[:, None] == y[None, :]) & not_self
    mean_log_prob_pos = log_prob.masked_fill(~positives, 0.0).sum(-1) / positives.sum(-1)
    return -mean_log_prob_pos.mean()


def symmetric_kl(logits_list: Sequence[Tensor], mask: Tensor, available: Tensor) -> Tensor:
    """KL(p_i || p_j) + KL(p_j || p_i), averaged over every (expert pair, turn) where both are available.

    logits_list: one [B, T, C] tensor per expert, in the order of available's last axis [B, T, E].
    """
    _check_mask(mask, available.shape[:-1], "symmetric KL")
    if available.size(-1) != len(logits_list):
        raise ValueError(f"available has {available.size(-1)} experts, logits_list has {len(logits_list)}")
    total, count = logits_list[0].new_zeros(()), 0
    for i, j in combinations(range(len(logits_list)), 2):
        both = mask & available[..., i] & available[..., j]
        log_p, log_q = logits_list[i][both].log_softmax(-1), logits_list[j][both].log_softmax(-1)
        # sum_c (p - q)(log p - log q) is exactly KL(p||q) + KL(q||p)
        total = total + ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum()
        count += int(both.sum())
    return total / max(count, 1)


def mister_e_loss(output: MisterEOutput, labels: Tensor, mask: Tensor,
                  config: MisterEConfig) -> dict[str, Tensor]:
    """Focal on the mixed and each available expert's logits + SupCon on turns with both modalities + KL.

    Returns "total" and every term; each term averages over the turns in mask (a subset of the
    model's real turns), so a dialogue's terms do not depend on how it was padded or batched.
    """
    _check_mask(mask, output.available.shape[:-1], "loss")
    available = output.available & mask[..., None]
    terms = {"focal_mixed": focal_loss(output.logits, labels, config.focal_gamma, available.any(-1))}
    for i, name in enumerate(EXPERTS):
        terms[f"focal_{name}"] = focal_loss(output.expert_logits[name], labels, config.focal_gamma,
                                            available[..., i])
    terms["supcon"] = supervised_contrastive_loss(output.z_speech, output.z_text, labels, available[..., 2],
                                                  config.supcon_temperature)
    terms["kl"] = symmetric_kl([output.expert_logits[name] for name in EXPERTS], mask, available)
    focal = sum(terms[f"focal_{name}"] for name in ("mixed", *EXPERTS))
    terms["total"] = focal + config.supcon_weight * terms["supcon"] + config.kl_weight * terms["kl"]
    return terms
