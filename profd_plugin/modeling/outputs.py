"""Typed outputs of the ProFD model: :class:`ProFDOutput` (train) and :class:`ProFDEmbeddings` (eval).

Shape shorthand:
    N: batch size
    K: number of body parts (5 for the official ``five_v`` grouping)
    Q: decoder queries, K + 2 = [background, foreground, parts] (K + 1 without a foreground word)
    D: joint CLIP embedding width (512 for ViT-B/16)
    C: number of training identities
    h, w: patch grid; L = h * w patch tokens
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor

__all__ = ["ProFDOutput", "ProFDEmbeddings"]


@dataclass
class ProFDOutput:
    """Everything the losses need from a train-mode ``forward``: tensors only.

    The criterion (:class:`~profd_plugin.losses.ProFDCriterion`) and the memory banks
    (``ProFD.memory.losses``) read these fields; the targets (masks, patch labels, visibility) travel
    separately in :class:`~profd_plugin.losses.ProFDTargets`.

    Attributes:
        global_feat: (N, D) CLIP class-token feature F_g, before the BNNeck (triplet input).
        global_bn: (N, D) BNNeck output of ``global_feat`` (ID classifier and PCL input, Eq. 16).
        global_logits: (N, C) identity logits of ``global_bn``.
        part_feats: (N, K, D) decoder part features F_p, before any BN (triplet on the concat,
            diversity loss, visibility head).
        concat_bn: (N, K*D) BNNeck output of the concatenated parts F_c (ID and PCL input, Eq. 18).
        concat_logits: (N, C) identity logits of ``concat_bn``.
        visibility_logits: (N, K) part visibility logits (Eq. 13, before the sigmoid).
        spa_attention: (N, Q, L) spatial-aware attention map averaged over decoder layers (Eq. 8);
            ``None`` when the decoder has no SPA branch (``attention`` = sea | none).
        alignment_scores: (N, K+1, h, w) spatial alignment scores S = scale * cos (Eq. 5), channel 0
            = background.
    """

    global_feat: Tensor
    global_bn: Tensor
    global_logits: Tensor
    part_feats: Tensor
    concat_bn: Tensor
    concat_logits: Tensor
    visibility_logits: Tensor
    spa_attention: Optional[Tensor]
    alignment_scores: Tensor


@dataclass
class ProFDEmbeddings:
    """Test-time embeddings (eval-mode ``forward``); distances use Eq. 14 on these.

    Attributes:
        global_feat: (N, D) BNNeck global feature (not L2-normalised).
        part_feats: (N, K, D) per-part BN part features (not L2-normalised).
        visibility: (N, K) test-time part visibility in [0, 1], values below the threshold set to 0.
        attention: (N, Q, L) layer-averaged SPA map, only when ``forward(..., return_attention=True)``
            and the decoder has an SPA branch; otherwise ``None``.
    """

    global_feat: Tensor
    part_feats: Tensor
    visibility: Tensor
    attention: Optional[Tensor] = None
