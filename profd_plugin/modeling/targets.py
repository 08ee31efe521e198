"""Patch labels M_p from the human-parsing masks and the weighted average pooling WAP (pure functions).

Paper Eq. 6 (``AP(M)``: patch labels M_p) and the WAP of Eq. 17. Code source: Cuixxx/ProFD
``profd.py:569`` (patch labels), ``profd.py:106-120`` (WAP). The model owns the patch geometry and calls
:func:`patch_labels` through ``ProFD.patch_labels``; the loss targets built from M_p (L_attn, L_align)
live in :mod:`profd_plugin.losses.targets`.

Shape shorthand:
    N: batch size
    K: number of body parts; channel 0 of every mask tensor is the background (K+1 channels)
    Hm, Wm: mask resolution (official 64x32 = image / 4)
    h, w: patch grid; L = h * w
    D: feature width
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["patch_labels", "weighted_average_pooling"]

#: Denominator guard of the weighted average pooling (official ``profd.py:117``).
WAP_EPS = 1e-6


def _pool_to_grid(masks: Tensor, grid_size: Tuple[int, int], image_size: Tuple[int, int], patch_size: int,
                  stride: int) -> Tensor:
    """Average-pool masks with the patchifying kernel/stride rescaled to the mask resolution."""
    mask_h, mask_w = masks.shape[-2:]
    scale_h, scale_w = image_size[0] / mask_h, image_size[1] / mask_w
    kernel, step = patch_size / scale_h, stride / scale_h
    if scale_h == scale_w and float(kernel).is_integer() and float(step).is_integer() and kernel >= 1:
        pooled = F.avg_pool2d(masks, kernel_size=int(kernel), stride=int(step))  # (N, K+1, h', w')
        if tuple(pooled.shape[-2:]) == tuple(grid_size):
            return pooled
    # Non-integer kernel/stride (e.g. masks at image/8 with stride 12): fall back to the grid directly.
    return F.adaptive_avg_pool2d(masks, grid_size)  # (N, K+1, h, w)


def patch_labels(masks: Tensor, *, grid_size: Tuple[int, int], image_size: Tuple[int, int], patch_size: int,
                 stride: int, label_scale: float) -> Tensor:
    """Soft patch labels M_p = softmax_c(label_scale * AvgPool(masks)) on the patch grid (Eq. 6).

    The pooling kernel and stride are the patch-embedding ones divided by the mask scale
    (image / mask resolution): kernel 4 / stride 4 (s=16) or stride 3 (s=12) for 64x32 masks of a
    256x128 image, giving exactly the 16x8 / 21x10 patch grid. When they are not integers the masks
    are adaptive-average-pooled to the grid instead.

    Args:
        masks: (N, K+1, Hm, Wm) soft masks, channel 0 = background.
        grid_size: (h, w) patch grid of the backbone.
        image_size: (H, W) input image size.
        patch_size: side of the pixel block a grid position stands for: the ViT's patch-embedding kernel
            P, a CLIP ResNet's output stride S (the block its feature-map position was pooled from).
        stride: step between blocks: the ViT's patch-embedding stride s, the ResNet's S.
        label_scale: sharpening factor (``profd.masks.patch_label_scale``, official 64).

    Returns:
        (N, K+1, h, w) patch labels, summing to 1 over channels.
    """
    pooled = _pool_to_grid(masks.float(), grid_size, image_size, patch_size, stride)  # (N, K+1, h, w)
    return torch.softmax(label_scale * pooled, dim=1)


def weighted_average_pooling(features: Tensor, weights: Tensor) -> Tensor:
    """WAP of Eq. 17: f_k = sum_l w_kl x_l / max(sum_l w_kl, eps).

    Args:
        features: (N, L, D) patch features.
        weights: (N, K, h, w) or (N, K, L) non-negative pooling weights.

    Returns:
        (N, K, D) pooled features.
    """
    weights = weights.flatten(2).to(features.dtype)  # (N, K, L)
    pooled = torch.bmm(weights, features)  # (N, K, D)
    return pooled / weights.sum(dim=-1, keepdim=True).clamp_min(WAP_EPS)
