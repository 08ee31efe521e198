"""Patch-level targets derived from the human-parsing masks (pure functions).

Paper Eq. 6 (``AP(M)``: patch labels M_p), the targets of L_attn (Eq. 9) and L_align (Eq. 6), and the
weighted average pooling WAP of Eq. 17. Code source: Cuixxx/ProFD ``profd.py:569`` (patch labels),
``part_based_engine.py:157-182`` (attention / alignment targets), ``profd.py:106-120`` (WAP).

Shape shorthand:
    N: batch size
    K: number of body parts; channel 0 of every mask tensor is the background (K+1 channels)
    Q: attention queries, [bg, fg, parts] (K+2) or [bg, parts] (K+1) without a foreground prompt
    Hm, Wm: mask resolution (official 64x32 = image / 4)
    h, w: patch grid; L = h * w
    D: feature width
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["patch_labels", "PatchLabeler", "alignment_labels", "attention_targets",
           "weighted_average_pooling"]

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
        patch_size: patch-embedding kernel P.
        stride: patch-embedding stride s.
        label_scale: sharpening factor (``profd.masks.patch_label_scale``, official 64).

    Returns:
        (N, K+1, h, w) patch labels, summing to 1 over channels.
    """
    pooled = _pool_to_grid(masks.float(), grid_size, image_size, patch_size, stride)  # (N, K+1, h, w)
    return torch.softmax(label_scale * pooled, dim=1)


@dataclass(frozen=True)
class PatchLabeler:
    """Everything :func:`patch_labels` needs besides the masks: the backbone geometry and M_p's scale.

    The model owns it (``ProFD.patch_labeler``) and puts it into ``ProFDOutput.patch_labeler``, so the
    memory-init pooling, the ``none``-mode pooling and the criterion's L_attn / L_align targets all
    compute M_p with one function and the same inputs.

    Attributes:
        grid_size: (h, w) patch grid of the backbone.
        image_size: (H, W) input image size.
        patch_size: patch-embedding kernel P.
        stride: patch-embedding stride s.
        label_scale: sharpening factor (``profd.masks.patch_label_scale``, official 64).
    """

    grid_size: Tuple[int, int]
    image_size: Tuple[int, int]
    patch_size: int
    stride: int
    label_scale: float

    def __call__(self, masks: Tensor) -> Tensor:
        """(N, K+1, Hm, Wm) soft masks -> (N, K+1, h, w) patch labels M_p (see :func:`patch_labels`)."""
        return patch_labels(masks, grid_size=self.grid_size, image_size=self.image_size,
                            patch_size=self.patch_size, stride=self.stride, label_scale=self.label_scale)


def alignment_labels(labels: Tensor, size: Tuple[int, int]) -> Tensor:
    """Hard targets of L_align: patch labels upsampled (bilinear, align_corners=True), then argmax.

    Args:
        labels: (N, K+1, h, w) patch labels from :func:`patch_labels`.
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
