"""``ReIDImageSet``: the torch ``Dataset`` behind every ProFD loader (host 4-tuples -> batch-dict entries).

Each item is read (image decode, mask file load and 36 -> K grouping), then augmented jointly and turned
into the patch-level targets. The read half does not depend on the epoch, so ``cache=True`` does it once
for every item when the set is built and keeps the results in memory (``data.cache_train``): later epochs
only augment. Items come out bit-identical either way, because the augmentations never modify their input
in place and draw the same random numbers. Built eagerly in the main process, the cache is shared by
forked loader workers (copy-on-write) instead of being rebuilt in each epoch's fresh workers.

Measured on the main job's items (``configs/profd_synthetic.yaml``, 128x64, one thread): 2.21 ms of CPU
per train item without the cache, 0.86 ms with it (``benchmarks/bench_data.py``).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from .datasets import DatasetError, load_train_mask
from .masks import MaskParams, part_targets

__all__ = ["ReIDImageSet", "pil_to_image", "read_image"]

logger = logging.getLogger(__name__)


def pil_to_image(img: Image.Image) -> tv_tensors.Image:
    """A PIL image as an RGB uint8 ``(3, h, w)`` ``tv_tensors.Image``."""
    return tv_tensors.Image(TF.pil_to_tensor(img.convert("RGB")))


def read_image(path: str) -> tv_tensors.Image:
    """Read an RGB image as uint8 ``(3, h, w)``; raises DatasetError naming the file."""
    try:
        with Image.open(path) as im:
            return pil_to_image(im)
    except Exception as e:  # noqa: BLE001 - any decoding failure names the file
        raise DatasetError(f"cannot read image {path} ({type(e).__name__}: {e})") from None


class ReIDImageSet(Dataset):
    """Items ``(img_path, pid, camid, dsetid)`` -> batch-dict entries.

    Args:
        items: the host's 4-tuples.
        transform: train or test transform of :mod:`transforms`.
        mask_paths: per item, the mask file, or None for a known-missing mask (all-background);
            None for the whole argument = no masks (test sets, torchreid baselines).
        mask_params: grouping and target parameters (needed with ``mask_paths``).
        cache: read every item now and keep the decoded image (uint8) and grouped part maps in memory.

    Raises:
        DatasetError: with ``cache``, an unreadable image or mask (naming the file), at construction.
    """

    def __init__(
        self,
        items: Sequence[tuple],
        transform: Any,
        *,
        mask_paths: Optional[Sequence[Optional[str]]] = None,
        mask_params: Optional[MaskParams] = None,
        cache: bool = False,
    ) -> None:
        self.items = list(items)
        self.transform = transform
        self.mask_paths = None if mask_paths is None else list(mask_paths)
        self.mask_params = mask_params or MaskParams()
        self._cache: Optional[List[Tuple[torch.Tensor, Optional[torch.Tensor]]]] = None
        if cache:
            self._cache = [self._read(i) for i in range(len(self.items))]
            size = sum(t.nbytes for entry in self._cache for t in entry if t is not None)
            logger.info("cached %d decoded images%s in memory (%.1f MiB)", len(self._cache),
                        "" if self.mask_paths is None else " and part masks", size / 2**20)

    def __len__(self) -> int:
        return len(self.items)

    def _parts(self, index: int, image_size: Sequence[int]) -> torch.Tensor:
        """Grouped part maps ``(K, h, w)`` of item ``index`` (zeros = all background if known missing)."""
        path = self.mask_paths[index]
        if path is None:
            return torch.zeros(self.mask_params.num_parts, *image_size)
        return load_train_mask(self.items[index][0], path, self.mask_params.grouping)

    def _read(self, index: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The epoch-independent half of an item: the decoded image and its grouped part maps (or None)."""
        img = read_image(self.items[index][0]).as_subclass(torch.Tensor)
        parts = None if self.mask_paths is None else self._parts(index, img.shape[-2:])
        return img, parts

    def __getitem__(self, index: int) -> Dict[str, Any]:
        path, pid, camid, dsetid = self.items[index][:4]
        img, parts = self._read(index) if self._cache is None else self._cache[index]
        img = tv_tensors.Image(img)
        item = {"pid": pid, "camid": camid, "dsetid": dsetid, "impath": path}
        if parts is None:
            item["img"] = self.transform(img).as_subclass(torch.Tensor)  # (3, H, W)
            return item
        img, parts = self.transform(img, tv_tensors.Mask(parts))  # (3, H, W), (K, H, W)
        scale = self.mask_params.scale
        size = (img.shape[-2] // scale, img.shape[-1] // scale)
        masks, visibility = part_targets(
            parts.as_subclass(torch.Tensor),
            bg_threshold=self.mask_params.bg_threshold,
            sharpness=self.mask_params.sharpness,
            size=size,
        )
        item.update(
            img=img.as_subclass(torch.Tensor), masks=masks, visibility=visibility
        )  # (K+1, h, w), (K+1,)
        return item
