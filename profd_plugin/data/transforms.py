"""Joint image + part-mask augmentation with ``torchvision.transforms.v2`` (ProFD §3 "Train augmentation").

Train pipeline (official order, ``torchvision_transforms.py:170-199`` of Cuixxx/ProFD), applied to a
``tv_tensors.Image`` (uint8) and a ``tv_tensors.Mask`` holding the K *grouped* part maps:

1. resize to ``(height, width)``: image bilinear (antialiased), mask bilinear;
2. ``random_flip``: horizontal flip with ``flip_prob`` (left/right parts are not swapped, as official);
3. ``random_crop``: zero-pad by ``pad`` then random crop back to size (always applied by default, as
   official; ``crop_prob`` 0.5 = paper);
4. ``color_jitter``: with ``jitter_prob``, image only;
5. to float in [0, 1] and normalise with ``norm_mean`` / ``norm_std`` (image only);
6. ``random_erase``: timm-style (``erase_prob``, area range, log-uniform aspect ratio, per-pixel N(0, 1)
   fill on the normalised image); the same box is zeroed in every mask channel, so it becomes background.

Masks are grouped 36 -> K *before* augmentation, because augmenting K (5) channels is ~7x cheaper than
36. Channel max commutes exactly with flip, pad, crop and erasing, but NOT with the bilinear resize of
step 1: interpolating the max is >= the max of the interpolations, so our part maps are >= the official
resize-then-group ones, and equal wherever one field is the maximum over the whole interpolation
neighbourhood. The final 64x32 argmax labels differ on about 1-2% of pixels (0.85% on the default
synthetic set). This is a deliberate difference, for speed. Which steps run is chosen by
``cfg.data.transforms`` names (unknown names are an error, unlike torchreid). Test pipeline: resize +
normalise, no mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from ..choices import TRAIN_TRANSFORMS
from .masks import resize_masks

__all__ = [
    "TRAIN_TRANSFORMS",
    "AugmentParams",
    "ResizeToGrid",
    "EraseToBackground",
    "check_transform_names",
    "build_train_transform",
    "build_test_transform",
]


@dataclass(frozen=True)
class AugmentParams:
    """Augmentation strengths (mirrors ``cfg.profd.augment``; defaults = official recipe)."""

    flip_prob: float = 0.5  # random_flip probability
    pad: int = 10  # random_crop: zero padding in pixels before cropping back to size
    crop_prob: float = 1.0  # random_crop probability (official: always; paper: 0.5)
    jitter_prob: float = 0.5  # color_jitter probability
    brightness: float = 0.2
    contrast: float = 0.15
    saturation: float = 0.0
    hue: float = 0.0
    erase_prob: float = 0.5  # random_erase probability
    erase_area: Tuple[float, float] = (0.02, 0.333)  # erased area fraction range
    erase_ratio: Tuple[float, float] = (0.3, 3.33)  # aspect ratio range (log-uniform)


def check_transform_names(names: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    """Validate ``cfg.data.transforms``; raises ValueError naming the bad entry and the valid ones."""
    names = (names,) if isinstance(names, str) else tuple(names)
    for name in names:
        if name not in TRAIN_TRANSFORMS:
            raise ValueError(
                f"unknown train transform '{name}' in data.transforms; valid: {', '.join(TRAIN_TRANSFORMS)}"
            )
    return names


class ResizeToGrid(v2.Transform):
    """Resize images (bilinear, antialiased) and part masks (bilinear) to ``size`` = (H, W).

    ``v2.Resize`` would resize a ``tv_tensors.Mask`` with nearest neighbour; soft part maps need
    bilinear interpolation.
    """

    def __init__(self, size: Tuple[int, int]) -> None:
        super().__init__()
        self.size = [int(size[0]), int(size[1])]

    def transform(self, inpt: Any, params: Dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return tv_tensors.Mask(
                resize_masks(inpt.as_subclass(torch.Tensor), tuple(self.size), mode="bilinear")
            )
        if tuple(TF.get_size(inpt)) == tuple(self.size):
            return inpt
        return self._call_kernel(
            TF.resize, inpt, self.size, interpolation=InterpolationMode.BILINEAR, antialias=True
        )


class EraseToBackground(v2.RandomErasing):
    """``v2.RandomErasing`` that also erases masks: the erased box is set to 0 in every mask channel.

    With ``value='random'`` the image box gets per-pixel N(0, 1) noise (timm ``mode='pixel'``); box
    sampling (area range, log-uniform aspect ratio, 10 attempts) is torchvision's, identical to timm's.
    """

    def transform(self, inpt: Any, params: Dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            if params["v"] is None:
                return inpt
            i, j, h, w = params["i"], params["j"], params["h"], params["w"]
            out = inpt.as_subclass(torch.Tensor).clone()
            out[..., i : i + h, j : j + w] = 0.0
            return tv_tensors.Mask(out)
        return super().transform(inpt, params)


def build_train_transform(
    *,
    height: int,
    width: int,
    transforms: Union[str, Sequence[str]],
    norm_mean: Sequence[float],
    norm_std: Sequence[float],
    augment: Optional[AugmentParams] = None,
) -> v2.Compose:
    """The joint train transform; call it as ``img, parts = t(Image, Mask)`` or ``img = t(Image)``.

    Args:
        height, width: output image size.
        transforms: enabled steps (subset of ``TRAIN_TRANSFORMS``).
        norm_mean, norm_std: normalisation (official 0.5 / 0.5).
        augment: strengths (default: the official recipe).

    Returns:
        A ``v2.Compose`` mapping uint8 ``(3, h, w)`` images and float ``(K, h', w')`` masks to a float
        normalised ``(3, height, width)`` image and ``(K, height, width)`` masks.
    """
    augment = augment or AugmentParams()
    enabled = set(check_transform_names(transforms))
    size = (height, width)
    steps = [ResizeToGrid(size)]
    if "random_flip" in enabled:
        steps.append(v2.RandomHorizontalFlip(p=augment.flip_prob))
    if "random_crop" in enabled:
        crop = v2.RandomCrop(size, padding=augment.pad, fill=0, padding_mode="constant")
        steps.append(crop if augment.crop_prob >= 1 else v2.RandomApply([crop], p=augment.crop_prob))
    if "color_jitter" in enabled:
        jitter = v2.ColorJitter(
            brightness=augment.brightness,
            contrast=augment.contrast,
            saturation=augment.saturation,
            hue=augment.hue,
        )
        steps.append(v2.RandomApply([jitter], p=augment.jitter_prob))
    steps += [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(mean=list(norm_mean), std=list(norm_std)),
    ]
    if "random_erase" in enabled:
        steps.append(
            EraseToBackground(
                p=augment.erase_prob, scale=augment.erase_area, ratio=augment.erase_ratio, value="random"
            )
        )
    return v2.Compose(steps)


def build_test_transform(
    *, height: int, width: int, norm_mean: Sequence[float], norm_std: Sequence[float]
) -> v2.Compose:
    """Test transform: resize + normalise (uint8 ``(3, h, w)`` image -> float ``(3, height, width)``)."""
    return v2.Compose(
        [
            ResizeToGrid((height, width)),
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            v2.Normalize(mean=list(norm_mean), std=list(norm_std)),
        ]
    )
