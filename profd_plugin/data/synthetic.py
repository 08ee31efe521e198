"""Procedural synthetic occluded pedestrians: the project's embedded default dataset.

Draws simple pedestrians (head, hair or hat, torso, arms, legs, shoes, bag) whose identity is their outfit,
in varied views, poses, scales, offsets and camera conditions. An occluder (car, box, pole, sign, another
person) hides 20-60% of the body in every query image and in ~10% of train and gallery images. Identities
come in sibling groups that share the upper or the lower outfit, so an occluder can make them confusable.
Output follows the Occluded-Duke layout with BPBReID/ProFD-format PifPaf masks (see ``docs/SYNTHETIC_DATA.md``
and ``data/masks.py``). Every random draw comes from ``np.random.default_rng([seed, stream, ...])``, so the
files are byte-identical for equal parameters.

This module plans the dataset (identities, splits, cameras, occlusion flags), owns the seeds and RNG streams,
and writes the files; ``synthetic_draw.py`` draws one image and its fields.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

from .layout import MARKET_SPLIT_DIRS, OCCLUDED_DUKE_MASK_SUFFIX, SPLITS, masks_root
from .synthetic_draw import (  # noqa: F401  (re-exported: the occlusion spec)
    COVERAGE_RANGE,
    OCCLUDER_KINDS,
    _background,
    _camera,
    _camera_effects,
    _colourise,
    _confidence_fields,
    _draw_person,
    _occlude,
    _pose,
    _random_lower,
    _random_outfit,
    _random_upper,
)

__all__ = [
    "generate_synthetic_occluded", "ensure_synthetic_occluded", "build_plan", "render_job", "ImageJob",
    "Sample", "DATASET_FOLDER", "META_FILE", "DEFAULT_PARAMS", "MASK_STRIDE", "FORMAT_VERSION",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 3  # bump whenever the output changes, so ensure_synthetic_occluded regenerates
DATASET_FOLDER = "synthetic_occluded"
META_FILE = "meta.json"  # written last: its presence marks a complete dataset
MASK_STRIDE = 8  # mask grid = image / 8 (256x128 -> 32x16), like the ~30x15 BPBReID files
JPEG_QUALITY = 90
NUM_CAMERAS = 8
OCCLUDED_FRACTION = 0.1  # of train and of gallery images (every query image is occluded)
#: the generator parameters and their defaults (= ``cfg.profd.synthetic.*``); the one list of their names
DEFAULT_PARAMS = dict(num_ids=60, num_test_ids=40, images_per_id=8, height=256, width=128, seed=0)
GROUP_SIZES = (3, 2, 1)  # sibling groups, cycled: base + upper twin + lower twin, then a pair, then a single
_OUTFIT, _PLAN, _IMAGE, _CAMERA = 1, 2, 3, 4  # RNG stream tags


@dataclass(frozen=True)
class ImageJob:
    """One image to draw: split, identity, per-identity index, camera (1..8), frame, occluded or not."""

    split: str
    pid: int
    index: int
    camid: int
    frame: int
    occluded: bool

    @property
    def filename(self) -> str:
        """Occluded-Duke style name ``PPPP_cC_fFFFFFFF.jpg``."""
        return f"{self.pid:04d}_c{self.camid}_f{self.frame:08d}.jpg"


@dataclass
class Sample:
    """A rendered image: ``image (H, W, 3) uint8``, ``fields (36, H/8, W/8) float32``, the person's
    silhouette ``body (H, W) bool``, the occluder's ``occluder (H, W) bool``, its kind and body coverage."""

    image: np.ndarray
    fields: np.ndarray
    body: np.ndarray
    occluder: np.ndarray
    occluder_kind: str
    coverage: float


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def _sibling_outfits(pids: List[int], seed: int) -> Dict[int, dict]:
    """Outfits of one split's identities, in sibling groups (``GROUP_SIZES``).

    Returns:
        pid -> outfit; ``group`` is the pid of the group's base identity and ``shares`` is ``"upper"`` (same
        build, skin, hair, upper garment and bag as the base, different lower half), ``"lower"`` (the
        reverse) or ``"none"`` (the base itself).
    """
    outfits, i, g = {}, 0, 0
    while i < len(pids):
        size = min(GROUP_SIZES[g % len(GROUP_SIZES)], len(pids) - i)
        rng = _rng(seed, _OUTFIT, pids[i])
        base = _random_outfit(rng)
        kinds = ["none"] + (["upper", "lower"] if size == 3 else [("upper", "lower")[(g // 3) % 2]])
        for pid, kind in zip(pids[i:i + size], kinds):
            new = {"upper": _random_lower, "lower": _random_upper}[kind](rng, base) if kind != "none" else {}
            outfits[pid] = {**base, **new, "group": pids[i], "shares": kind}
        i, g = i + size, g + 1
    return outfits


def build_plan(*, num_ids: int, num_test_ids: int, images_per_id: int, seed: int
               ) -> Tuple[Dict[int, dict], List[ImageJob]]:
    """Identities, splits, cameras and occlusion flags of the whole dataset (no drawing).

    Train pids are ``1..num_ids`` and test pids follow. Each identity is seen by 2-4 of the 8 cameras. Per
    test identity the first ``max(1, min(2, n // 4))`` images are queries (all in its first camera, always
    occluded) and its first gallery image is in its second camera.

    Returns:
        ``(outfits, jobs)``: pid -> outfit dict, and the image jobs in a fixed order.
    """
    train, test = list(range(1, num_ids + 1)), list(range(num_ids + 1, num_ids + num_test_ids + 1))
    outfits = {**_sibling_outfits(train, seed), **_sibling_outfits(test, seed)}
    n_query = max(1, min(2, images_per_id // 4))
    jobs: List[ImageJob] = []
    for pid in train + test:
        rng = _rng(seed, _PLAN, pid)
        cams = rng.choice(NUM_CAMERAS, size=int(rng.integers(2, 5)), replace=False) + 1
        base_frame = rng.integers(0, 50_000_000, NUM_CAMERAS + 1)
        for index in range(images_per_id):
            if pid > num_ids:
                split = "query" if index < n_query else "gallery"
                cam = cams[0] if split == "query" else cams[1] if index == n_query else rng.choice(cams)
            else:
                split, cam = "train", cams[index % len(cams)]
            frame = int(base_frame[cam]) + 37 * index  # unique per (pid, camera)
            jobs.append(ImageJob(split, pid, index, int(cam), frame, split == "query"))
    for code, split in ((1, "train"), (2, "gallery")):  # exactly round(10%) of each split is occluded
        idx = [i for i, j in enumerate(jobs) if j.split == split]
        for i in _rng(seed, _PLAN, 0, code).choice(idx, round(OCCLUDED_FRACTION * len(idx)), replace=False):
            jobs[i] = replace(jobs[i], occluded=True)
    return outfits, jobs


def render_job(job: ImageJob, outfit: dict, *, height: int, width: int, seed: int) -> Sample:
    """Draw one image and its mask fields; a deterministic function of ``(seed, job, outfit)``.

    Args:
        job: what to draw (identity, camera, occlusion flag).
        outfit: the identity's outfit from :func:`build_plan`.
        height: image height in pixels (a multiple of ``MASK_STRIDE``).
        width: image width in pixels (a multiple of ``MASK_STRIDE``).
        seed: dataset seed.

    Returns:
        The :class:`Sample` (image, fields, silhouette, occluder and its coverage of the body).
    """
    H, W = height, width
    rng, cam = _rng(seed, _IMAGE, job.pid, job.index), _camera(_rng(seed, _CAMERA, job.camid))
    kp, g = _pose(rng, outfit["build"], H, W)
    labels = _draw_person(g, outfit, H, W)
    body = labels > 0
    rgb = np.where(body[..., None], _colourise(labels, outfit, g), _background(rng, cam, H, W))
    occ, kind, coverage = np.zeros_like(body), "", 0.0
    if job.occluded:
        kind, occ_rgb, occ, coverage = _occlude(rng, body, g, H, W)
        rgb = np.where(occ[..., None], occ_rgb, rgb)
    image = _camera_effects(rng, rgb, cam, g)
    fields = _confidence_fields(rng, kp, g, body, occ, MASK_STRIDE)
    return Sample(image, fields, body, occ, kind, float(coverage))


def _validate(params: dict) -> dict:
    """Check the generator parameters and return them as plain ints; raises ValueError naming a bad one."""
    unknown = sorted(set(params) - set(DEFAULT_PARAMS))
    if unknown:
        raise ValueError(f"unknown synthetic dataset parameter(s) {unknown}; valid: {sorted(DEFAULT_PARAMS)}")
    rules = {"num_ids": (2, "at least 2"), "num_test_ids": (2, "at least 2"),
             "images_per_id": (2, "at least 2"), "height": (64, "a multiple of 8, at least 64"),
             "width": (32, "a multiple of 8, at least 32"), "seed": (0, "non-negative")}
    for name, (low, text) in rules.items():
        value = params[name]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if value < low or (name in ("height", "width") and value % MASK_STRIDE):
            raise ValueError(f"{name} must be {text}, got {value}")
    if params["num_ids"] + params["num_test_ids"] > 9999:
        raise ValueError("num_ids + num_test_ids must be at most 9999 (pids have 4 digits)")
    return {name: int(params[name]) for name in DEFAULT_PARAMS}


def generate_synthetic_occluded(dataset_dir: str, **params: int) -> dict:
    """Write the whole dataset into ``dataset_dir`` (Occluded-Duke layout, masks, and ``meta.json`` last).

    Folder and mask file names are those the ``synthetic_occluded`` adapter reads
    (the Occluded-Duke layout of ``layout.py``, which ``datasets.SyntheticOccluded`` inherits).

    Args:
        dataset_dir: output folder, created if needed; same-named files are overwritten, others are kept.
        **params: generator parameters (keyword only; missing ones take ``DEFAULT_PARAMS``):
            ``num_ids`` train identities (at least 2); ``num_test_ids`` test identities, disjoint from the
            train ones (at least 2); ``images_per_id`` images per identity (at least 2); ``height`` and
            ``width`` image size, multiples of 8; ``seed``: everything written is a deterministic function
            of the parameters.

    Returns:
        ``{split: {"ids": int, "images": int, "occluded": int}}`` for ``train``, ``query`` and ``gallery``.

    Raises:
        ValueError: an unknown or bad parameter, named.
    """
    params = _validate({**DEFAULT_PARAMS, **params})
    height, width, seed = params["height"], params["width"], params["seed"]
    start = time.perf_counter()
    outfits, jobs = build_plan(num_ids=params["num_ids"], num_test_ids=params["num_test_ids"],
                               images_per_id=params["images_per_id"], seed=seed)
    split_dirs = {split: MARKET_SPLIT_DIRS[split][0] for split in SPLITS}
    mask_dir = masks_root(dataset_dir)
    for folder in split_dirs.values():
        os.makedirs(os.path.join(dataset_dir, folder), exist_ok=True)
        os.makedirs(os.path.join(mask_dir, folder), exist_ok=True)
    occlusions = {}
    for job in jobs:
        sample = render_job(job, outfits[job.pid], height=height, width=width, seed=seed)
        folder = split_dirs[job.split]
        image_path = os.path.join(dataset_dir, folder, job.filename)
        Image.fromarray(sample.image).save(image_path, quality=JPEG_QUALITY)
        mask_name = os.path.splitext(job.filename)[0] + OCCLUDED_DUKE_MASK_SUFFIX
        np.save(os.path.join(mask_dir, folder, mask_name), sample.fields)
        if job.occluded:
            occlusions[f"{folder}/{job.filename}"] = {"kind": sample.occluder_kind,
                                                      "coverage": round(sample.coverage, 4)}
    stats = {split: {"ids": len({j.pid for j in jobs if j.split == split}),
                     "images": sum(j.split == split for j in jobs),
                     "occluded": sum(j.occluded for j in jobs if j.split == split)} for split in SPLITS}
    meta = {"format_version": FORMAT_VERSION, "params": params, "stats": stats, "occlusions": occlusions,
            "identities": {f"{pid:04d}": outfits[pid] for pid in sorted(outfits)}}
    with open(os.path.join(dataset_dir, META_FILE), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    logger.info("synthetic_occluded: %d images in %.1f s -> %s", len(jobs), time.perf_counter() - start,
                dataset_dir)
    return stats


def _is_current(dataset_dir: str, params: dict) -> bool:
    try:
        with open(os.path.join(dataset_dir, META_FILE)) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    return meta.get("format_version") == FORMAT_VERSION and meta.get("params") == params


def ensure_synthetic_occluded(root: str, **params) -> str:
    """Return ``<root>/synthetic_occluded``, (re)generating it if missing or made with other parameters.

    The dataset is built in a temporary sibling folder that replaces the old one only once complete, so an
    interrupted run never leaves a half-written dataset in place. Call it from the main process only; in
    distributed runs the data manager lets rank 0 call it first (concurrent calls are tolerated anyway: the
    last complete copy wins).

    Args:
        root: folder that holds the dataset folder (``data.root``).
        **params: generator parameters (see :func:`generate_synthetic_occluded`); missing ones take
            ``DEFAULT_PARAMS``.

    Returns:
        The dataset folder.
    """
    params = _validate({**DEFAULT_PARAMS, **params})
    target = os.path.join(root, DATASET_FOLDER)
    if _is_current(target, params):
        return target
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{DATASET_FOLDER}.tmp-", dir=root)
    logger.info("generating the synthetic occluded dataset %s in %s", params, target)
    try:
        generate_synthetic_occluded(tmp, **params)
        if os.path.exists(target):
            os.rename(target, tmp + ".old")
        try:
            os.rename(tmp, target)
        except OSError:  # a concurrent call put its own complete copy in place first
            if not _is_current(target, params):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(tmp + ".old", ignore_errors=True)
    return target
