"""Folder and file-name conventions shared by the dataset adapters and the writers of dataset files.

The adapters (``datasets.py``) read these layouts; the synthetic generator (``synthetic.py``) writes
one. Keeping the names here lets both import them without importing each other.
"""
from __future__ import annotations

import os.path as osp
from typing import Dict, Tuple

__all__ = ["SPLITS", "DEFAULT_MASKS_DIR", "RESIZE_SUFFIX", "MARKET_SPLIT_DIRS", "OCCLUDED_DUKE_MASK_SUFFIX",
           "masks_root"]

SPLITS: Tuple[str, ...] = ("train", "query", "gallery")
#: ``<dataset dir>/masks/<this>/...`` holds the BPBReID/ProFD human-parsing masks (``profd.masks.dir``)
DEFAULT_MASKS_DIR = "pifpaf_maskrcnn_filtering"
#: suffix of the pre-resized copies of split folders (ProFD's ``resize.py``)
RESIZE_SUFFIX = "_resize"
#: split -> image folders of Market-1501, DukeMTMC-reID and Occluded-Duke (and the synthetic set)
MARKET_SPLIT_DIRS: Dict[str, Tuple[str, ...]] = {
    "train": ("bounding_box_train",), "query": ("query",), "gallery": ("bounding_box_test",),
}
#: Occluded-Duke mask file = ``<image file name>.confidence_fields.npy`` (BPBReID release)
OCCLUDED_DUKE_MASK_SUFFIX = ".jpg.confidence_fields.npy"


def masks_root(dataset_dir: str, masks_dir: str = DEFAULT_MASKS_DIR) -> str:
    """``<dataset dir>/masks/<masks_dir>``: the folder that mirrors a dataset's image folders."""
    return osp.join(dataset_dir, "masks", masks_dir)
