"""Detected people -> the 36 OpenPifPaf-format fields of one image (the format ``load_part_masks`` reads).

Of the people a backend found, the one nearest the image centre is kept (re-id crops are centred on their
person). Its keypoints with a score of at least ``MIN_KEYPOINT_SCORE`` that lie inside the image become
Gaussian blobs whose peak is the score; each limb whose two keypoints are kept becomes a band whose peak is
the smaller of the two scores (``data/fields.py``, the renderer of the synthetic set). Everything is
multiplied by the person's silhouette per stride-8 cell, so the fields are zero off the person and zero
everywhere when nobody was found.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from ..data.fields import LIMB_ENDS, cell_support, field_sigmas, grid_shape, render_fields
from ..data.masks import NUM_PIFPAF_FIELDS
from .base import Person

MASK_STRIDE = 8  # field grid = ceil(image / 8), the stride of OpenPifPaf's fields and the published masks
MIN_KEYPOINT_SCORE = 0.5  # below: not detected (MediaPipe's drawing_utils visibility threshold)
MASK_THRESHOLD = 0.5  # person-mask probability from which a pixel belongs to the person
#: person height from the keypoint extent when the silhouette is empty: nose-to-ankle ~ 0.85 of the height
KEYPOINT_EXTENT_TO_HEIGHT = 1 / 0.85


def empty_fields(height: int, width: int, stride: int = MASK_STRIDE) -> np.ndarray:
    """All-zero float32 fields ``(36, ceil(H / s), ceil(W / s))``: nobody detected."""
    return np.zeros((NUM_PIFPAF_FIELDS, *grid_shape(height, width, stride)), np.float32)


def person_centre(person: Person) -> Tuple[float, float]:
    """``(x, y)``: centre of the silhouette's bounding box, else the mean keypoint."""
    ys, xs = np.nonzero(person.mask >= MASK_THRESHOLD)
    if len(xs):
        return (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
    return tuple(np.asarray(person.keypoints, float).mean(0))


def select_person(people: Sequence[Person], height: int, width: int) -> Optional[Person]:
    """The person whose centre is nearest the image centre (None for no people)."""
    if not people:
        return None
    centre = np.array([width / 2, height / 2])
    return min(people, key=lambda p: float(np.hypot(*(np.subtract(person_centre(p), centre)))))


def keypoint_confidences(person: Person, height: int, width: int) -> np.ndarray:
    """``(17,)`` scores of the keypoints kept (score >= ``MIN_KEYPOINT_SCORE``, inside the image), else 0."""
    (x, y), scores = np.asarray(person.keypoints, float).T, np.clip(person.scores, 0, 1)
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    return np.where(inside & (scores >= MIN_KEYPOINT_SCORE), scores, 0.0)


def person_height(silhouette: np.ndarray, keypoints: np.ndarray, conf: np.ndarray) -> float:
    """Height in pixels the field widths scale with: the silhouette's, else the kept keypoints' extent."""
    rows = np.flatnonzero(silhouette.any(1))
    if len(rows):
        return float(rows[-1] - rows[0] + 1)
    ys = keypoints[conf > 0, 1]
    return float(np.ptp(ys) * KEYPOINT_EXTENT_TO_HEIGHT) if len(ys) > 1 else 0.0


def person_fields(person: Person, height: int, width: int, stride: int = MASK_STRIDE) -> np.ndarray:
    """The fields of one person: float32 ``(36, ceil(H / s), ceil(W / s))`` in [0, 1].

    Args:
        person: keypoints, scores and a ``(height, width)`` mask.
        height, width: the image size.
        stride: pixels per field cell.
    """
    if person.mask.shape != (height, width):
        raise ValueError(f"person mask {person.mask.shape} does not match the image ({height}, {width})")
    silhouette = person.mask >= MASK_THRESHOLD  # (H, W)
    keypoints = np.asarray(person.keypoints, float)  # (17, 2)
    conf = keypoint_confidences(person, height, width)  # (17,)
    limb_conf = conf[LIMB_ENDS].min(1)  # (19,) both ends kept, else 0
    sigmas = field_sigmas(person_height(silhouette, keypoints, conf), stride)
    support = cell_support(silhouette, stride)  # (h, w)
    fields = render_fields(keypoints, conf, limb_conf, grid=support.shape, stride=stride, sigmas=sigmas)
    return np.clip(fields * support, 0, 1).astype(np.float32)  # (36, h, w)


def image_fields(people: Sequence[Person], height: int, width: int, stride: int = MASK_STRIDE) -> np.ndarray:
    """The fields of an image: those of the person nearest the centre, zeros when there is none."""
    person = select_person(people, height, width)
    if person is None:
        return empty_fields(height, width, stride)
    return person_fields(person, height, width, stride)
