"""Heads: BNNeck + identity classifiers, per-part BN, visibility head, spatial alignment scores.

Official code (Cuixxx/ProFD): ``BNClassifier`` (``profd.py:15-42``: BatchNorm1d with a frozen zero bias,
then a bias-free Linear initialised N(0, 0.001)), the ``IAI`` visibility classifiers (``profd.py:456,536``,
one Linear(D, 1) per part on pre-BN part features), the test-time 'dai' visibility
(``profd.py:538-539``) and the segmentation scores (``profd.py:500-504``, paper Eq. 5).

Shape shorthand:
    N: batch size
    K: number of body parts
    D: feature width; C: training identities
    h, w: patch grid; L = h * w
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..choices import VISIBILITY_MODES

__all__ = ["BNNeck", "IdentityClassifier", "PartBatchNorm", "VisibilityHead", "alignment_scores",
           "visibility_scores", "VISIBILITY_MODES"]

#: std of the identity classifier init (official ``profd.py:33``).
CLASSIFIER_INIT_STD = 0.001


class BNNeck(nn.Module):
    """BatchNorm1d with weight 1 / bias 0 init and a frozen bias (BNNeck, official ``BNClassifier.bn``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        self.bn.bias.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        """(N, dim) -> (N, dim)."""
        return self.bn(x)


class IdentityClassifier(nn.Module):
    """Training-only identity classifiers on the BNNeck features: global (D) and concatenated parts (K*D).

    It is the model's ``classifier`` attribute, so torchreid's ``count_num_param`` ignores it and
    ``open_layers=['classifier']`` opens exactly the new identity layers.

    Args:
        global_dim: D.
        concat_dim: K * D.
        num_classes: C.
    """

    def __init__(self, global_dim: int, concat_dim: int, num_classes: int) -> None:
        super().__init__()
        self.global_fc = nn.Linear(global_dim, num_classes, bias=False)
        self.concat_fc = nn.Linear(concat_dim, num_classes, bias=False)
        for fc in (self.global_fc, self.concat_fc):
            nn.init.normal_(fc.weight, std=CLASSIFIER_INIT_STD)

    def forward(self, global_bn: Tensor, concat_bn: Tensor) -> Tuple[Tensor, Tensor]:
        """Args: global_bn (N, D), concat_bn (N, K*D). Returns global and concat logits, each (N, C)."""
        return self.global_fc(global_bn), self.concat_fc(concat_bn)


class PartBatchNorm(nn.Module):
    """One BatchNorm1d per part, affine fixed at (1, 0): only running statistics move.

    Official: 5 per-part ``BNClassifier`` whose ID weight is 0, so their BN keeps weight 1 / bias 0 and
    only tracks statistics; their output ``bn_parts`` is the test feature. K independent BNs over D
    channels equal one non-affine BN over K*D channels, which is what is stored.

    Args:
        num_parts: K.
        dim: D.
    """

    def __init__(self, num_parts: int, dim: int) -> None:
        super().__init__()
        self.num_parts, self.dim = num_parts, dim
        self.bn = nn.BatchNorm1d(num_parts * dim, affine=False)

    def forward(self, part_feats: Tensor) -> Tensor:
        """(N, K, D) -> (N, K, D)."""
        return self.bn(part_feats.flatten(1)).view_as(part_feats)


class VisibilityHead(nn.Module):
    """K independent binary classifiers Linear(D, 1) on the pre-BN part features (Sec. 4.2.2).

    Stored as one (K, D) weight and (K,) bias with PyTorch's default Linear init per part.

    Args:
        num_parts: K.
        dim: D.
    """

    def __init__(self, num_parts: int, dim: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(dim)  # nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        self.weight = nn.Parameter(torch.empty(num_parts, dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_parts).uniform_(-bound, bound))

    def forward(self, part_feats: Tensor) -> Tensor:
        """(N, K, D) part features -> (N, K) visibility logits."""
        return torch.einsum("nkd,kd->nk", part_feats, self.weight) + self.bias


def visibility_scores(logits: Tensor, *, mode: str, temperature: float, threshold: float) -> Tensor:
    """Test-time part visibility from the visibility logits.

    Args:
        logits: (N, K) visibility logits.
        mode: ``softmax`` (official 'dai': softmax over the K parts of sigmoid(logit) / temperature) or
            ``sigmoid`` (paper: the plain sigmoid).
        temperature: T of the softmax mode (``profd.visibility.temperature``, official 0.1).
        threshold: values below it are set to 0 (``profd.visibility.threshold``, official 0.1).

    Returns:
        (N, K) visibility in [0, 1].
    """
    scores = torch.sigmoid(logits)  # (N, K)
    if mode == "softmax":
        scores = torch.softmax(scores / temperature, dim=-1)
    elif mode != "sigmoid":
        raise ValueError(f"visibility mode '{mode}' not in {VISIBILITY_MODES}")
    return scores.masked_fill(scores < threshold, 0.0)


def alignment_scores(patches: Tensor, prompts: Tensor, grid_size: Tuple[int, int],
                     logit_scale: float) -> Tensor:
    """Spatial-level alignment scores S = logit_scale * cos(patch feature, prompt) (Eq. 5).

    Args:
        patches: (N, L, D) patch features.
        prompts: (K+1, D) prompt features [background, parts] (no foreground).
        grid_size: (h, w) with h * w = L.
        logit_scale: fixed scale (``profd.loss.alignment_logit_scale``, official 5).

    Returns:
        (N, K+1, h, w) scores.
    """
    cos = F.normalize(patches, dim=-1) @ F.normalize(prompts, dim=-1).t()  # (N, L, K+1)
    return (logit_scale * cos).transpose(1, 2).reshape(patches.shape[0], -1, *grid_size)
