"""Rendering PifPaf-like confidence fields from 17 COCO keypoints (shared by the synthetic generator and
``tools/make_masks.py``).

A keypoint field is a Gaussian blob at the keypoint, a limb field a Gaussian band around the segment between
its two keypoints (OpenPifPaf's COCO skeleton, ``PIFPAF_LIMBS``), each scaled by its confidence and sampled at
the centres of a stride-``s`` grid. The widths scale with the person's height but never get thinner than about
one grid cell (PifPaf's fields live on a stride-8 grid). ``cell_support`` turns a person silhouette into the
per-cell factor that the fields are multiplied by (the Mask R-CNN filtering of the published masks).

Shapes: ``(17, 2)`` keypoints as ``(x, y)`` pixels, ``(h, w)`` the field grid (``ceil(H / s), ceil(W / s)``).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from .parts import PIFPAF_KEYPOINTS, PIFPAF_LIMBS

_KP = {name: i for i, name in enumerate(PIFPAF_KEYPOINTS)}
#: keypoint indices ``(start, end)`` of each limb, in ``PIFPAF_LIMBS`` order
LIMB_ENDS: np.ndarray = np.array([[_KP[e] for e in name.split("_to_")] for name in PIFPAF_LIMBS])  # (19, 2)

KEYPOINT_SIGMA = 0.04  # keypoint blob sigma, as a fraction of the person's height
LIMB_SIGMA = 0.03  # limb band sigma, as a fraction of the person's height
MIN_KEYPOINT_SIGMA_CELLS = 0.8  # ... but at least this many grid cells
MIN_LIMB_SIGMA_CELLS = 0.75
SUPPORT_GAIN = 2.0  # cell_support: a cell half covered by the silhouette counts as fully inside
_EPS = 1e-6  # squared length below which a limb is a point


def grid_shape(height: int, width: int, stride: int) -> Tuple[int, int]:
    """``(ceil(height / stride), ceil(width / stride))``: the field grid of an image."""
    return -(-height // stride), -(-width // stride)


def field_sigmas(person_height: float, stride: int) -> Tuple[float, float]:
    """``(keypoint sigma, limb sigma)`` in pixels for a person ``person_height`` pixels tall."""
    return (max(KEYPOINT_SIGMA * person_height, MIN_KEYPOINT_SIGMA_CELLS * stride),
            max(LIMB_SIGMA * person_height, MIN_LIMB_SIGMA_CELLS * stride))


def render_fields(keypoints: np.ndarray, keypoint_conf: np.ndarray, limb_conf: np.ndarray, *,
                  grid: Tuple[int, int], stride: int, sigmas: Tuple[float, float]) -> np.ndarray:
    """The 36 fields of one person, before any silhouette filtering.

    Args:
        keypoints: ``(17, 2)`` keypoint ``(x, y)`` in pixels, ``PIFPAF_KEYPOINTS`` order.
        keypoint_conf: ``(17,)`` peak value of each keypoint blob (0 = not detected).
        limb_conf: ``(19,)`` peak value of each limb band, ``PIFPAF_LIMBS`` order.
        grid: ``(h, w)`` field grid; cell ``(i, j)`` is sampled at pixel ``((j + .5) s, (i + .5) s)``.
        stride: pixels per grid cell ``s``.
        sigmas: ``(keypoint sigma, limb sigma)`` in pixels (:func:`field_sigmas`).

    Returns:
        float64 ``(36, h, w)``: 17 keypoint fields then 19 limb fields (``PIFPAF_FIELDS`` order).
    """
    (h, w), s, (sigma_k, sigma_l), p = grid, stride, sigmas, np.asarray(keypoints, float)
    q = np.stack(np.meshgrid((np.arange(w) + 0.5) * s, (np.arange(h) + 0.5) * s), -1)  # (h, w, 2) centres
    blobs = keypoint_conf[:, None, None] * np.exp(-((q - p[:, None, None]) ** 2).sum(-1) / (2 * sigma_k ** 2))
    a = p[LIMB_ENDS[:, 0]][:, None, None]  # (19, 1, 1, 2) limb start
    ab = (p[LIMB_ENDS[:, 1]] - p[LIMB_ENDS[:, 0]])[:, None, None]  # (19, 1, 1, 2) limb vector
    u = ((q - a) * ab).sum(-1, keepdims=True) / np.maximum((ab ** 2).sum(-1, keepdims=True), _EPS)
    u = np.clip(u, 0, 1)  # (19, h, w, 1) position of the nearest point on the limb
    bands = limb_conf[:, None, None] * np.exp(-((q - a - u * ab) ** 2).sum(-1) / (2 * sigma_l ** 2))
    return np.concatenate([blobs, bands])  # (36, h, w)


def cell_coverage(mask: np.ndarray, stride: int) -> np.ndarray:
    """Mean of ``mask (H, W)`` over each grid cell: float64 ``(ceil(H / s), ceil(W / s))``.

    Cells on the right and bottom edges that stick out of the image average their in-image pixels only.
    """
    (H, W), s = mask.shape, stride
    h, w = grid_shape(H, W, s)
    if (h * s, w * s) == (H, W):
        return mask.reshape(h, s, w, s).mean((1, 3))
    padded, inside = np.zeros((h * s, w * s)), np.zeros((h * s, w * s))
    padded[:H, :W], inside[:H, :W] = mask, 1.0
    return padded.reshape(h, s, w, s).sum((1, 3)) / inside.reshape(h, s, w, s).sum((1, 3))


def cell_support(silhouette: np.ndarray, stride: int) -> np.ndarray:
    """Cell filter ``(h, w)`` in [0, 1] of a boolean silhouette ``(H, W)``: ``SUPPORT_GAIN`` x coverage."""
    return np.clip(SUPPORT_GAIN * cell_coverage(silhouette, stride), 0, 1)
