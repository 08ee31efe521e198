"""Human-parsing masks: loading, grouping and the training targets built from them.

BPBReID/ProFD mask files hold 36 OpenPifPaf confidence fields (the vocabulary and the part groupings are
data, in :mod:`profd_plugin.data.parts`, re-exported here). This module turns a mask file into training
targets, as pure functions on torch tensors that also
work on batches: ``load_part_masks`` (load + validate + group 36 -> K by channel max) and, after the
joint augmentation, ``part_targets`` = ``resize_masks`` (nearest) -> ``add_background`` -> ``sharpen``
(softmax) -> ``visibility_targets``. The official order (``torchvision_transforms.py:213-240``) resizes
last; background and softmax are per-pixel and a nearest resize only picks pixels, so resizing first
gives the same targets from fewer pixels (bit-identical on the standard grids; on grids whose size is
not a multiple of the SIMD width the vectorised softmax may round the last bit differently).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .parts import (  # noqa: F401  (re-exported: the field vocabulary and part groupings)
    NUM_PIFPAF_FIELDS,
    PART_GROUPS,
    PIFPAF_FIELDS,
    PIFPAF_KEYPOINTS,
    PIFPAF_LIMBS,
    part_names,
)

# ---------------------------------------------------------------------------------------------------
# Loading and target construction (ProFD §5.3 of docs/notes: grouping -> background -> softmax -> resize)
#
# Shape shorthand: F = 36 PifPaf fields, K = parts of the grouping, h x w = any mask grid,
# H x W = image grid, (...) = optional leading batch dimensions. Channel dimension is always -3.
# ---------------------------------------------------------------------------------------------------


class MalformedMaskError(ValueError):
    """A mask file that cannot be parsed or breaks the format rules of :func:`load_part_masks`.

    Attributes:
        path: the file.
        detail: what is wrong with it (without the path).
    """

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"malformed mask {path}: {detail}")
        self.path, self.detail = path, detail


@functools.lru_cache(maxsize=None)
def group_indices(grouping: str) -> Tuple[Tuple[int, ...], ...]:
    """Field indices (into ``PIFPAF_FIELDS``) of each part of ``grouping``, in part order."""
    names = part_names(grouping)  # raises a KeyError listing the valid groupings
    index = {name: i for i, name in enumerate(PIFPAF_FIELDS)}
    return tuple(tuple(index[f] for f in PART_GROUPS[grouping][part]) for part in names)


def group_fields(fields: torch.Tensor, grouping: str) -> torch.Tensor:
    """Group 36 PifPaf fields into K parts by channel-wise maximum, clamped to [0, 1].

    Args:
        fields: ``(..., 36, h, w)`` confidence fields.
        grouping: a key of ``PART_GROUPS``.

    Returns:
        ``(..., K, h, w)`` part maps.
    """
    if fields.shape[-3] != NUM_PIFPAF_FIELDS:
        raise ValueError(f"expected {NUM_PIFPAF_FIELDS} fields in dim -3, got shape {tuple(fields.shape)}")
    parts = [fields[..., list(idx), :, :].amax(dim=-3) for idx in group_indices(grouping)]
    return torch.stack(parts, dim=-3).clamp_(0.0, 1.0)  # (..., K, h, w)


def to_parts(array: torch.Tensor, grouping: str) -> torch.Tensor:
    """``(..., 36 | K, h, w)`` fields or already-grouped parts -> ``(..., K, h, w)`` parts in [0, 1]."""
    k = len(part_names(grouping))
    if array.shape[-3] == NUM_PIFPAF_FIELDS and k != NUM_PIFPAF_FIELDS:
        return group_fields(array, grouping)
    if array.shape[-3] == k:
        return array.clamp(0.0, 1.0)
    raise ValueError(f"expected {NUM_PIFPAF_FIELDS} fields or {k} parts in dim -3, got {tuple(array.shape)}")


def load_part_masks(path: str, grouping: str) -> torch.Tensor:
    """Load one mask file and group it into parts.

    Accepts ``(36, h, w)`` OpenPifPaf fields or ``(K, h, w)`` grouped parts, and the transposed
    ``(h, w, 36 | K)`` layout that BPBReID's ``read_masks`` produces (recognised when the last dim is
    36 or K and the first is not).

    Args:
        path: a ``.npy`` file.
        grouping: a key of ``PART_GROUPS``.

    Returns:
        float32 ``(K, h, w)`` in [0, 1].

    Raises:
        FileNotFoundError: no file at ``path``.
        MalformedMaskError: unreadable file, wrong rank, wrong channel count or non-finite values; the
            message names the file.
        KeyError: unknown grouping (lists the valid ones).
    """
    valid = {NUM_PIFPAF_FIELDS, len(part_names(grouping))}
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - any other failure to parse is a malformed file
        raise MalformedMaskError(path, f"cannot read .npy ({type(e).__name__}: {e})") from None
    if array.ndim != 3:
        raise MalformedMaskError(path, f"expected 3 dims (C, h, w), got shape {array.shape}")
    if array.shape[0] not in valid and array.shape[-1] in valid:
        array = np.moveaxis(array, -1, 0)  # (h, w, C) -> (C, h, w)
    if array.shape[0] not in valid:
        raise MalformedMaskError(
            path, f"shape {array.shape}, expected {sorted(valid)} channels for grouping '{grouping}'"
        )
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_) or not np.isfinite(array).all():
        raise MalformedMaskError(path, "non-numeric or non-finite values")
    return to_parts(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)), grouping)


def add_background(parts: torch.Tensor, threshold: float) -> torch.Tensor:
    """Prepend a binary background channel: 1 where the max over parts is below ``threshold``.

    Args:
        parts: ``(..., K, h, w)`` part maps.
        threshold: ``profd.masks.bg_threshold`` (official 0.5).

    Returns:
        ``(..., K+1, h, w)``, channel 0 = background.
    """
    bg = (parts.amax(dim=-3, keepdim=True) < threshold).to(parts.dtype)  # (..., 1, h, w)
    return torch.cat([bg, parts], dim=-3)


def sharpen(masks: torch.Tensor, sharpness: float) -> torch.Tensor:
    """Softmax over channels of ``sharpness * masks`` (official 15): sums to 1 at every pixel."""
    return torch.softmax(sharpness * masks, dim=-3)


def resize_masks(masks: torch.Tensor, size: Tuple[int, int], mode: str = "nearest") -> torch.Tensor:
    """Resize ``(..., C, h, w)`` masks to ``size`` = (h', w') with ``F.interpolate``."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    lead = masks.shape[:-3]
    flat = masks.reshape(-1, *masks.shape[-3:])  # (B, C, h, w)
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    out = F.interpolate(flat, size=tuple(size), mode=mode, **kwargs)
    return out.reshape(*lead, *out.shape[-3:])


def visibility_targets(masks: torch.Tensor) -> torch.Tensor:
    """Bool ``(..., C)``: channel c is the per-pixel argmax of ``(..., C, h, w)`` masks at >= 1 pixel."""
    labels = masks.argmax(dim=-3)  # (..., h, w)
    onehot = F.one_hot(labels, num_classes=masks.shape[-3])  # (..., h, w, C)
    return onehot.flatten(-3, -2).any(dim=-2)


def part_targets(
    parts: torch.Tensor, *, bg_threshold: float, sharpness: float, size: Tuple[int, int]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Augmented part maps -> (sharpened masks with background, visibility targets).

    The nearest resize comes first: it only selects pixels, and background + softmax are per-pixel, so
    the result equals the official background -> softmax -> resize order (bit-identical on the standard
    grids, see the module docstring), computed on fewer pixels.

    Args:
        parts: ``(..., K, H, W)`` grouped part maps after augmentation (erased areas already 0).
        bg_threshold: background threshold.
        sharpness: softmax sharpness.
        size: output grid ``(H / scale, W / scale)``.

    Returns:
        ``masks (..., K+1, h, w)`` float summing to 1 over channels, ``visibility (..., K+1)`` bool.
    """
    parts = resize_masks(parts, size, mode="nearest")  # (..., K, h, w)
    masks = sharpen(add_background(parts, bg_threshold), sharpness)  # (..., K+1, h, w)
    return masks, visibility_targets(masks)


@dataclass(frozen=True)
class MaskParams:
    """How masks are found and turned into targets (mirrors ``cfg.profd.masks``).

    Attributes:
        masks_dir: ``<dataset>/masks/<masks_dir>/...``.
        grouping: a key of ``PART_GROUPS``.
        required: missing train mask = error (True) or all-background mask + one warning (False).
        bg_threshold: background where the max over parts is below this.
        sharpness: softmax sharpness.
        scale: masks are returned at ``(height // scale, width // scale)``.
    """

    masks_dir: str = "pifpaf_maskrcnn_filtering"
    grouping: str = "five_v"
    required: bool = True
    bg_threshold: float = 0.5
    sharpness: float = 15.0
    scale: int = 4

    @property
    def num_parts(self) -> int:
        """K, the number of parts of the grouping."""
        return len(part_names(self.grouping))
