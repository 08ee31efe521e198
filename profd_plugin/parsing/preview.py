"""Overlay pictures of generated masks: the image, its grouped parts in colour, the keypoints and limbs.

One PNG per image, two panels side by side: the image with the keypoints and limbs that were kept, and the
image tinted with the part (of the ``five_v`` grouping) that wins at each pixel, background untouched; a
legend row names the parts. Small re-id crops are enlarged so that the picture is readable.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..data.fields import LIMB_ENDS
from ..data.masks import MaskParams, part_names, resize_masks, to_parts
from ..fileio import atomic_write

PREVIEW_GROUPING = "five_v"
MIN_PREVIEW_HEIGHT = 256  # smaller images are enlarged (nearest) to at least this height
TINT_ALPHA = 0.55  # weight of the part colour over the image
LEGEND_HEIGHT = 14  # pixels per legend line
KEYPOINT_RADIUS = 3
#: part colours (RGB), in the grouping's part order
PART_COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
                (70, 240, 240), (240, 50, 230), (210, 245, 60))
KEYPOINT_COLOUR, LIMB_COLOUR = (255, 255, 0), (255, 255, 255)


def part_labels(fields: np.ndarray, height: int, width: int, grouping: str = PREVIEW_GROUPING) -> np.ndarray:
    """Per-pixel winning part ``(height, width)`` int: -1 = background (max below the training threshold)."""
    parts = to_parts(torch.from_numpy(np.ascontiguousarray(fields, np.float32)), grouping)  # (K, h, w)
    parts = resize_masks(parts, (height, width), mode="bilinear")  # (K, H, W)
    best, label = parts.max(dim=0)
    return torch.where(best >= MaskParams.bg_threshold, label, -1).numpy()


def render_preview(image: np.ndarray, fields: np.ndarray, keypoints: Optional[np.ndarray] = None,
                   conf: Optional[np.ndarray] = None, grouping: str = PREVIEW_GROUPING) -> np.ndarray:
    """The preview picture, uint8 ``(H', 2 W', 3)`` plus a legend.

    Args:
        image: RGB uint8 ``(H, W, 3)``.
        fields: its ``(36, h, w)`` fields.
        keypoints: ``(17, 2)`` pixel positions, drawn where ``conf > 0`` (None: no keypoint panel overlay).
        conf: ``(17,)`` kept keypoint scores.
        grouping: the part grouping to colour.
    """
    scale = max(1, -(-MIN_PREVIEW_HEIGHT // image.shape[0]))
    big = np.repeat(np.repeat(image, scale, 0), scale, 1)  # (H', W', 3)
    labels = part_labels(fields, *big.shape[:2], grouping)  # (H', W')
    palette = np.array(PART_COLOURS, float)
    tinted = big.astype(float)
    inside = labels >= 0
    tinted[inside] = (1 - TINT_ALPHA) * tinted[inside] + TINT_ALPHA * palette[labels[inside] % len(palette)]
    left = Image.fromarray(big)
    if keypoints is not None and conf is not None:
        _draw_skeleton(ImageDraw.Draw(left), np.asarray(keypoints, float) * scale, np.asarray(conf))
    names = part_names(grouping)
    canvas = Image.new("RGB", (2 * big.shape[1], big.shape[0] + LEGEND_HEIGHT * len(names)), (0, 0, 0))
    canvas.paste(left, (0, 0))
    canvas.paste(Image.fromarray(tinted.astype(np.uint8)), (big.shape[1], 0))
    draw = ImageDraw.Draw(canvas)
    for k, name in enumerate(names):
        draw.text((2, big.shape[0] + LEGEND_HEIGHT * k), name, fill=PART_COLOURS[k % len(PART_COLOURS)])
    return np.asarray(canvas)


def _draw_skeleton(draw: ImageDraw.ImageDraw, keypoints: np.ndarray, conf: np.ndarray) -> None:
    for a, b in LIMB_ENDS:
        if conf[a] > 0 and conf[b] > 0:
            draw.line([tuple(keypoints[a]), tuple(keypoints[b])], fill=LIMB_COLOUR, width=1)
    r = KEYPOINT_RADIUS
    for (x, y), c in zip(keypoints, conf):
        if c > 0:
            draw.ellipse([x - r, y - r, x + r, y + r], outline=KEYPOINT_COLOUR)


def save_preview(path: str, picture: np.ndarray) -> None:
    """Write ``picture`` as a PNG, atomically."""
    atomic_write(path, lambda f: Image.fromarray(picture).save(f, format="PNG"))
