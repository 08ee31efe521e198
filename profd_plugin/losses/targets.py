"""Loss targets built from the patch labels M_p: L_attn (Eq. 9) and L_align (Eq. 6) (pure functions).

Code source: Cuixxx/ProFD ``part_based_engine.py:157-182``. The patch labels themselves come from the
model (``ProFD.patch_labels``, which knows the patch geometry).

Shape shorthand:
    N: batch size
    K: number of body parts; channel 0 of every label tensor is the background (K+1 channels)
    Q: attention queries, [bg, fg, parts] (K+2) or [bg, parts] (K+1) without a foreground prompt
    Hm, Wm: mask resolution (official 64x32 = image / 4)
    h, w: patch grid; L = h * w
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["alignment_labels", "attention_targets"]


def alignment_labels(labels: Tensor, size: Tuple[int, int]) -> Tensor:
    """Hard targets of L_align: patch labels upsampled (bilinear, align_corners=True), then argmax.

    Args:
        labels: (N, K+1, h, w) patch labels M_p (``ProFD.patch_labels``).
        size: (Hm, Wm) output resolution (the mask resolution, official 64x32).

    Returns:
        (N, Hm, Wm) long class indices in [0, K] (0 = background).
    """
    up = F.interpolate(labels, size=size, mode="bilinear", align_corners=True)  # (N, K+1, Hm, Wm)
    return up.argmax(dim=1)


def attention_targets(labels: Tensor, *, has_foreground: bool, temperature: float) -> Tensor:
    """Targets of L_attn (Eq. 9): per-query distributions over the patches.

    Channels are taken in query order, [P_bg, 1 - P_bg, P_1..P_K] (the foreground channel is dropped
    when there is no foreground prompt); each becomes softmax over patches of (channel / temperature).

    Args:
        labels: (N, K+1, h, w) patch labels.
        has_foreground: whether the queries include the foreground prompt.
        temperature: softmax temperature (``profd.loss.attention_temperature``, official 0.01).

    Returns:
        (N, Q, L) targets, each row summing to 1.
    """
    background = labels[:, :1]  # (N, 1, h, w)
    foreground = [1.0 - background] if has_foreground else []
    channels = [background, *foreground, labels[:, 1:]]
    stacked = torch.cat(channels, dim=1).flatten(2)  # (N, Q, L)
    return torch.softmax(stacked / temperature, dim=-1)
