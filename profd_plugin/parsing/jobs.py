"""What to make: ``(image, mask file)`` pairs for a registered dataset or for a folder of images.

- ``dataset_jobs``: every image of every split of a registered dataset, each to ``ds.mask_path(image)``,
  the exact file (folder levels, ``_resize`` twin, suffix) the dataset's loader reads.
- ``folder_jobs``: every image under a folder (recursively), each to ``<out>/<relative folder>/<stem>.npy``,
  the Market/Duke convention: ``--images <dataset> --out <dataset>/masks/pifpaf_maskrcnn_filtering``
  reproduces those loaders' paths.
"""
from __future__ import annotations

import os
import os.path as osp
from dataclasses import dataclass
from typing import Iterable, List, Tuple

from ..data.datasets import DATASETS, SPLITS, DatasetError, SyntheticOccluded, masks_root

#: the image files ``folder_jobs`` picks up (lower-cased extensions)
IMAGE_EXTS: Tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_EXT = ".npy"
#: datasets the tool can fill: all adapters except the generated one (it writes its own masks)
MASK_DATASETS: Tuple[str, ...] = tuple(name for name in DATASETS if name != SyntheticOccluded.name)


class InputError(ValueError):
    """Bad input (missing folder, unknown dataset, no images, two images for one mask); one line."""


@dataclass(frozen=True)
class MaskJob:
    """One image and the mask file to write for it."""

    image: str
    output: str


def dataset_jobs(root: str, dataset: str, masks_dir: str) -> Tuple[List[MaskJob], str]:
    """Jobs for every image of every split of ``dataset`` under ``root``.

    Args:
        root: the folder holding the dataset folder (``data.root``).
        dataset: a name of ``MASK_DATASETS``.
        masks_dir: the masks sub-folder (``profd.masks.dir``).

    Returns:
        ``(jobs in split order without duplicates, the dataset's masks root)``.

    Raises:
        InputError: unknown dataset, or the dataset's ``DatasetError`` (missing folder, empty split, ...).
    """
    if dataset == SyntheticOccluded.name:
        raise InputError(f"dataset '{dataset}' is generated with its masks; nothing to make")
    if dataset not in MASK_DATASETS:
        raise InputError(f"unknown dataset '{dataset}'; valid: {', '.join(MASK_DATASETS)}")
    try:
        ds = DATASETS[dataset](root=root, masks_dir=masks_dir, verbose=False)
    except DatasetError as e:
        raise InputError(str(e)) from None
    # every split, each image once (a test-only dataset's dummy train list repeats query + gallery)
    images = dict.fromkeys(item[0] for split in SPLITS for item in getattr(ds, split))
    return [MaskJob(img, ds.mask_path(img)) for img in images], masks_root(ds.dataset_dir, masks_dir)


def list_images(folder: str, exclude: Iterable[str] = ()) -> List[str]:
    """Sorted image files under ``folder`` (recursive), skipping hidden entries and the ``exclude`` trees."""
    skip = {osp.abspath(p) for p in exclude}
    found = []
    for parent, dirs, files in os.walk(folder):
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and osp.abspath(osp.join(parent, d)) not in skip
        )
        found += [osp.join(parent, f) for f in files
                  if not f.startswith(".") and osp.splitext(f)[1].lower() in IMAGE_EXTS]
    return sorted(found)


def folder_jobs(images_dir: str, out_dir: str, exclude: Iterable[str] = ()) -> List[MaskJob]:
    """Jobs ``<images_dir>/<rel>/<stem>.<ext>`` -> ``<out_dir>/<rel>/<stem>.npy``.

    ``out_dir`` (and ``exclude``) are not searched when they lie inside ``images_dir``.

    Raises:
        InputError: ``images_dir`` is not a folder, holds no image, or two images share a stem in one folder.
    """
    images_dir, out_dir = osp.abspath(images_dir), osp.abspath(out_dir)
    if not osp.isdir(images_dir):
        raise InputError(f"image folder not found: {images_dir}")
    images = list_images(images_dir, exclude=[out_dir, *exclude])
    if not images:
        raise InputError(f"no images ({'/'.join(IMAGE_EXTS)}) under {images_dir}")
    jobs, owner = [], {}
    for img in images:
        out = osp.join(out_dir, osp.splitext(osp.relpath(img, images_dir))[0] + MASK_EXT)
        if out in owner:
            raise InputError(f"{owner[out]} and {img} would both write {out}; rename one")
        owner[out] = img
        jobs.append(MaskJob(img, out))
    return jobs
