"""ProFD loss terms as pure functions (paper Eq. 6, 9, 12, 13, 19).

Official code (Cuixxx/ProFD): ``losses/cross_entropy_loss.py`` (label-smoothed ID), ``losses/
part_averaged_triplet_loss.py`` (batch-hard triplet), ``engine/image/part_based_engine.py:157-182``
(attention / alignment), ``losses/dissimilar_loss.py`` (diversity), ``losses/focal_loss.py``
(visibility). The PCL terms (Eq. 16, 18) belong to the memory banks (``modeling/memory.py``).

Shape shorthand:
    N: batch size
    K: number of body parts; Q: attention queries; L: patch tokens
    D: feature width; C: identities (or prototypes)
    h, w: patch grid; Hm, Wm: mask resolution
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from ..choices import DIVERSITY_MODES

__all__ = [
    "identity_loss", "euclidean_distance", "batch_hard_triplet_loss", "spatial_attention_loss",
    "alignment_loss", "diversity_loss", "focal_visibility_loss", "DIVERSITY_MODES",
]

#: Guard of the Euclidean distance's square root (its gradient is infinite at 0).
DISTANCE_EPS = 1e-12
#: log(A + eps) guard of the attention loss (official ``part_based_engine.py:170``).
ATTENTION_LOG_EPS = 1e-5


def identity_loss(logits: Tensor, labels: Tensor, label_smooth: float) -> Tensor:
    """Label-smoothed cross-entropy: targets (1 - eps) onehot + eps / C.

    Args:
        logits: (N, C) classifier logits. labels: (N,) identities. label_smooth: eps (official 0.1).
    """
    return F.cross_entropy(logits, labels, label_smoothing=label_smooth)


def euclidean_distance(x: Tensor, y: Tensor) -> Tensor:
    """Pairwise Euclidean distance sqrt(relu(|x|^2 - 2 x.y + |y|^2) + eps): (N, D), (M, D) -> (N, M)."""
    sq = x.pow(2).sum(1, keepdim=True) - 2.0 * x @ y.t() + y.pow(2).sum(1).unsqueeze(0)  # (N, M)
    return torch.sqrt(F.relu(sq) + DISTANCE_EPS)


def batch_hard_triplet_loss(features: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Batch-hard triplet loss on Euclidean distances (no normalisation).

    For each anchor: hardest positive (max distance, same id) and hardest negative (min distance,
    other id); loss = mean_a relu(d_ap - d_an + margin). Anchors without negatives contribute 0.

    Args:
        features: (N, D) pre-BN features. labels: (N,). margin: official 0.3.
    """
    dist = euclidean_distance(features, features)  # (N, N)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)  # (N, N)
    hardest_pos = dist.masked_fill(~same, 0.0).amax(dim=1)  # (N,)
    hardest_neg = dist.masked_fill(same, float("inf")).amin(dim=1)  # (N,)
    return F.relu(hardest_pos - hardest_neg + margin).mean()


def spatial_attention_loss(attention: Tensor, targets: Tensor) -> Tensor:
    """L_attn (Eq. 9): mean over N*Q of -sum_l T_l log(A_l + 1e-5).

    Args:
        attention: (N, Q, L) layer-averaged SPA map. targets: (N, Q, L) rows summing to 1.
    """
    return -(targets * torch.log(attention + ATTENTION_LOG_EPS)).sum(dim=-1).mean()


def alignment_loss(scores: Tensor, labels: Tensor, label_smooth: float) -> Tensor:
    """L_align (Eq. 6): CE between the upsampled alignment scores and hard patch labels.

    The (N, K+1, h, w) scores are bilinearly upsampled (align_corners=True) to the (Hm, Wm) label
    resolution, as the official code does with 64x32.

    Args:
        scores: (N, K+1, h, w). labels: (N, Hm, Wm) long in [0, K]. label_smooth: official 0.1.
    """
    up = F.interpolate(scores, size=tuple(labels.shape[-2:]), mode="bilinear", align_corners=True)
    return F.cross_entropy(up, labels, label_smoothing=label_smooth)


def diversity_loss(part_feats: Tensor, mode: str = "softmax") -> Tensor:
    """L_div (Eq. 12) on c_ij = |cos(f_i, f_j)|, i < j, averaged over the batch.

    Args:
        part_feats: (N, K, D) pre-BN part features.
        mode: ``softmax`` (official 'dynamic balancer': sum_ij softmax(c)_ij c_ij per sample) or
            ``mean`` (paper Eq. 12: mean of c_ij over the pairs).

    Returns:
        Scalar; 0 when K < 2.
    """
    num_parts = part_feats.shape[1]
    if num_parts < 2:
        return part_feats.sum() * 0.0
    unit = F.normalize(part_feats, dim=-1)  # (N, K, D)
    cos = (unit @ unit.transpose(1, 2)).abs()  # (N, K, K)
    rows, cols = torch.triu_indices(num_parts, num_parts, offset=1, device=part_feats.device)
    pairs = cos[:, rows, cols]  # (N, K(K-1)/2)
    if mode == "softmax":
        return (torch.softmax(pairs, dim=-1) * pairs).sum(dim=-1).mean()
    if mode == "mean":
        return pairs.mean()
    raise ValueError(f"diversity mode '{mode}' not in {DIVERSITY_MODES}")


def focal_visibility_loss(logits: Tensor, targets: Tensor, alpha: float, gamma: float) -> Tensor:
    """L_vis (Eq. 13): binary focal loss, mean over N*K, finite for any logit.

    l = -alpha (1-p)^gamma y log p - (1-alpha) p^gamma (1-y) log(1-p), p = sigmoid(x): the official
    form, computed by ``torchvision.ops.sigmoid_focal_loss``, whose cross-entropy term is taken from the
    logits (the official ``log(sigmoid(x))`` NaNs once p rounds to 1, at logits above about 17).

    Args:
        logits: (N, K) visibility logits. targets: (N, K) {0, 1} (bool or float).
        alpha: official 0.65. gamma: official 2.
    """
    return sigmoid_focal_loss(logits, targets.to(logits.dtype), alpha=alpha, gamma=gamma, reduction="mean")
