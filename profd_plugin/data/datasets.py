"""Mask-aware dataset adapters for torchreid (ProFD §5.1 layouts, §5.2 mask locations).

Each class is a torchreid ``ImageDataset``: it builds the host's ``(img_path, pid, camid)`` lists,
forwards ``**kwargs`` (``transform``, ``mode``, ``combineall``, ``verbose``, ...) to
``ImageDataset.__init__`` and keeps the host ``__getitem__``, so torchreid's own ``ImageDataManager``
and built-in models can use them unchanged. On top it exposes ``mask_path(img_path)``; reading and
augmenting masks is the job of :mod:`profd_plugin.data.datamanager`.

Conventions (all datasets): file lists are sorted, train pids are relabelled ``0..C-1`` in sorted raw
pid order, cameras are 0-based, junk pid -1 is dropped, distractor pid 0 stays in the gallery. Each
split folder may be the original one or its pre-resized ``<name>_resize`` copy (preferred when both
exist). Mask folders mirror the image folders; when the mirror is missing, the ``_resize``-toggled
folder is used (masks are rescaled to the image grid on load, so either fits). Each class names its
folders once, in ``split_dirs``; the required folders, error hints and item lists derive from it.
"""

from __future__ import annotations

import glob
import os.path as osp
import re
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple

import torch
from torchreid.reid.data.datasets.dataset import ImageDataset

from ..errors import DatasetError
from .layout import (
    DEFAULT_MASKS_DIR,
    MARKET_SPLIT_DIRS,
    OCCLUDED_DUKE_MASK_SUFFIX,
    RESIZE_SUFFIX,
    SPLITS,
    masks_root,
)
from .masks import MalformedMaskError, load_part_masks
from .synthetic import DATASET_FOLDER, DEFAULT_PARAMS, META_FILE, ensure_synthetic_occluded

__all__ = [
    "DatasetError",
    "ReIDDataset",
    "Market1501",
    "DukeMTMCreID",
    "OccludedDuke",
    "OccludedReID",
    "PDukeMTMCreID",
    "SyntheticOccluded",
    "DATASETS",
    "DEFAULT_MASKS_DIR",
    "SPLITS",
    "load_train_mask",
    "masks_root",
    "split_counts",
]

Item = Tuple[str, int, int]  # (img_path, pid, camid)

PID_CAMID = re.compile(r"([-\d]+)_c(\d)")  # Market/Duke file names: <pid>_c<cam>...
HELP = "see docs/DATASETS.md for the layout; masks: tools/download_masks.py"


def list_images(folder: str, exts: Sequence[str], depth: int = 0) -> List[str]:
    """Sorted image paths ``folder/(*/)^depth *ext``."""
    pattern = osp.join(folder, *(["*"] * depth), "*")
    return sorted(p for p in glob.glob(pattern) if p.lower().endswith(tuple(exts)) and osp.isfile(p))


def relabel(items: List[Item]) -> List[Item]:
    """Map raw pids to ``0..C-1`` in sorted raw-pid order (reproducible, unlike torchreid's set)."""
    pid2label = {pid: label for label, pid in enumerate(sorted({pid for _, pid, _ in items}))}
    return [(path, pid2label[pid], camid) for path, pid, camid in items]


def toggle_resize(name: str) -> str:
    """``x_resize`` <-> ``x``."""
    return name[: -len(RESIZE_SUFFIX)] if name.endswith(RESIZE_SUFFIX) else name + RESIZE_SUFFIX


def split_counts(dataset: Any) -> Dict[str, Tuple[int, int]]:
    """``{split: (ids, images)}`` of a torchreid dataset; the dummy train list of a test-only one counts 0."""
    train = [] if getattr(dataset, "test_only", False) else dataset.train
    lists = (train, dataset.query, dataset.gallery)
    return {split: (len({item[1] for item in items}), len(items)) for split, items in zip(SPLITS, lists)}


def load_train_mask(img_path: str, mask_path: str, grouping: str) -> torch.Tensor:
    """:func:`~profd_plugin.data.masks.load_part_masks` for one image: ``(K, h, w)`` part maps.

    Raises:
        DatasetError: the mask is missing or malformed; the one-line message names the image and the mask.
    """
    try:
        return load_part_masks(mask_path, grouping)
    except FileNotFoundError:
        raise DatasetError(f"missing mask for image {img_path}: expected {mask_path}") from None
    except (OSError, ValueError) as e:  # MalformedMaskError names the mask file and what is wrong
        raise DatasetError(f"{e} (image {img_path})") from None


class ReIDDataset(ImageDataset):
    """Base adapter: folder resolution, split folders, mask paths, empty-split checks.

    Subclasses set the class attributes (``split_dirs`` names every folder) and implement
    :meth:`parse_dir`.

    Args:
        root: folder that holds the dataset folder (``cfg.data.root``).
        masks_dir: masks are looked up in ``<dataset dir>/masks/<masks_dir>/``.
        **kwargs: forwarded to torchreid's ``ImageDataset`` (``transform``, ``mode``, ...).

    Raises:
        DatasetError: dataset folder or split folder missing, empty split, unparsable file name.
    """

    name: ClassVar[str] = ""
    #: dataset folder locations relative to ``root``, first match wins (official, then torchreid nesting)
    dir_candidates: ClassVar[Tuple[str, ...]] = ()
    #: split -> the folders holding its images, relative to the dataset folder (``top[/sub]``, ``top``
    #: without ``_resize``); every folder must exist. The required top folders derive from it.
    split_dirs: ClassVar[Dict[str, Tuple[str, ...]]] = {}
    image_exts: ClassVar[Tuple[str, ...]] = (".jpg",)
    #: mask file = ``<image stem><mask_suffix>``
    mask_suffix: ClassVar[str] = ".npy"
    #: ancestors of the image that name the mask sub-folder (1 = parent, 2 = grandparent, ...)
    mask_levels: ClassVar[Tuple[int, ...]] = (1,)
    #: test-only datasets have a dummy train list and cannot be training sources
    test_only: ClassVar[bool] = False

    def __init__(self, root: str = "", masks_dir: str = DEFAULT_MASKS_DIR, **kwargs) -> None:
        self.root = osp.abspath(osp.expanduser(root))
        self.masks_dir = masks_dir
        self.dataset_dir = self.find_dataset_dir()
        self._mask_dir_cache: Dict[str, str] = {}
        train, query, gallery = self.load_splits()
        for split, items in zip(SPLITS, (train, query, gallery)):
            if not items:
                raise DatasetError(
                    f"dataset '{self.name}': split '{split}' is empty (no {'/'.join(self.image_exts)} images "
                    f"in {', '.join(self.split_folders(split))}); {HELP}"
                )
        super().__init__(train, query, gallery, **kwargs)

    # -- layout -----------------------------------------------------------------------------------
    @classmethod
    def required_dirs(cls) -> Tuple[str, ...]:
        """The top folders of ``split_dirs`` (without ``_resize``), in order of first use."""
        return tuple(dict.fromkeys(d.split("/")[0] for dirs in cls.split_dirs.values() for d in dirs))

    def find_dataset_dir(self) -> str:
        """The first candidate folder under ``root`` that holds the required split folders."""
        required = self.required_dirs()
        layout = ", ".join(f"{d}/" for d in required)
        partial = None  # the first existing candidate that lacks some (not all) split folders
        for cand in self.dir_candidates:
            path = osp.join(self.root, cand)
            missing = [f"{d}/" for d in required if not self._find_split(path, d)]
            if not missing:
                return path
            if partial is None and osp.isdir(path) and len(missing) < len(required):
                partial = (path, missing)
        if partial is not None:  # name what is missing
            raise DatasetError(
                f"dataset '{self.name}': {partial[0]} lacks {', '.join(partial[1])} (expected {layout} "
                f"or their *{RESIZE_SUFFIX} copies); {HELP}"
            )
        expected = " or ".join(osp.join(self.root, c) for c in self.dir_candidates)
        raise DatasetError(
            f"dataset '{self.name}' not found: expected {expected} holding {layout} "
            f"(or their *{RESIZE_SUFFIX} copies); {HELP}"
        )

    @staticmethod
    def _find_split(data_dir: str, name: str) -> Optional[str]:
        for cand in (name + RESIZE_SUFFIX, name):
            path = osp.join(data_dir, cand)
            if osp.isdir(path):
                return path
        return None

    def split_dir(self, name: str) -> str:
        """``<dataset dir>/<name>_resize`` if it exists, else ``<dataset dir>/<name>``."""
        path = self._find_split(self.dataset_dir, name)
        if path is None:
            raise DatasetError(
                f"dataset '{self.name}': missing folder "
                f"{osp.join(self.dataset_dir, name)}[{RESIZE_SUFFIX}]; {HELP}"
            )
        return path

    def split_folders(self, split: str) -> List[str]:
        """The folders of ``split`` (``split_dirs``; ``_resize`` top folders preferred).

        Raises:
            DatasetError: naming the first folder that does not exist.
        """
        folders = []
        for rel in self.split_dirs[split]:
            top, *sub = rel.split("/")
            path = osp.join(self.split_dir(top), *sub)
            if not osp.isdir(path):
                raise DatasetError(f"dataset '{self.name}': missing folder {path}; {HELP}")
            folders.append(path)
        return folders

    def parse_dir(self, folder: str) -> List[Item]:
        """The ``(img_path, raw pid, camid)`` items of one split folder."""
        raise NotImplementedError

    def load_splits(self) -> Tuple[List[Item], List[Item], List[Item]]:
        """Return ``(train, query, gallery)`` with train pids relabelled."""
        train, query, gallery = (
            [item for folder in self.split_folders(split) for item in self.parse_dir(folder)]
            for split in SPLITS
        )
        return relabel(train), query, gallery

    # -- masks ------------------------------------------------------------------------------------
    def mask_path(self, img_path: str) -> str:
        """Where the mask of ``img_path`` lives (ProFD §5.2); the file may not exist.

        ``<dataset dir>/masks/<masks_dir>/<ancestor folder(s)>/<image stem><mask_suffix>``.
        """
        head, fname = osp.split(img_path)
        ancestors = [fname]
        for _ in range(max(self.mask_levels)):
            head, tail = osp.split(head)
            ancestors.append(tail)
        comps = [ancestors[lvl] for lvl in self.mask_levels]
        base = masks_root(self.dataset_dir, self.masks_dir)
        first = self._mask_dir_cache.get(comps[0])
        if first is None:  # decided once per folder: mirror, else the _resize-toggled folder
            first = comps[0]
            if not osp.isdir(osp.join(base, first)) and osp.isdir(osp.join(base, toggle_resize(first))):
                first = toggle_resize(first)
            self._mask_dir_cache[comps[0]] = first
        return osp.join(base, first, *comps[1:], osp.splitext(fname)[0] + self.mask_suffix)

    def train_mask_problems(self, grouping: str, load: bool) -> List[Tuple[str, str, str]]:
        """``(image, mask, reason)`` for every train image whose mask is unusable.

        Args:
            grouping: part grouping the masks are loaded with (a key of ``PART_GROUPS``).
            load: also load every mask and report malformed ones (slow); False only checks existence.

        Returns:
            The problems in train order; ``reason`` is ``"missing"`` or ``"malformed: <what is wrong>"``.

        Raises:
            KeyError: unknown ``grouping`` (only with ``load``), listing the valid ones.
        """
        problems = []
        for img_path, *_ in self.train:
            path = self.mask_path(img_path)
            if not osp.isfile(path):
                problems.append((img_path, path, "missing"))
            elif load:
                try:
                    load_part_masks(path, grouping)
                except MalformedMaskError as e:
                    problems.append((img_path, path, f"malformed: {e.detail}"))
        return problems


class _MarketLike(ReIDDataset):
    """``bounding_box_train`` / ``query`` / ``bounding_box_test`` with ``<pid>_c<cam>`` file names."""

    split_dirs = MARKET_SPLIT_DIRS

    def parse_dir(self, folder: str) -> List[Item]:
        """Items of one folder: pid/camid from ``([-\\d]+)_c(\\d)``, pid -1 dropped, camid 0-based."""
        items = []
        for path in list_images(folder, self.image_exts):
            match = PID_CAMID.search(osp.basename(path))
            if match is None:
                raise DatasetError(f"cannot parse pid/camid from {path} (expected '<pid>_c<cam>...')")
            pid, cam = map(int, match.groups())
            if pid == -1:  # junk
                continue
            items.append((path, pid, cam - 1))
        return items


class Market1501(_MarketLike):
    """Market-1501 (12,936 / 3,368 / 15,913 images). Same lists as torchreid's ``Market1501``.

    Args:
        market1501_500k: add the 500k distractors of ``<dataset dir>/images`` to the gallery.
    """

    name = "market1501"
    dir_candidates = ("Market-1501-v15.09.15", "market1501/Market-1501-v15.09.15", "market1501")
    #: torchreid's convention: ``combineall`` leaves distractors (0) and junk (-1) out of train
    _junk_pids = [0, -1]

    def __init__(self, root: str = "", market1501_500k: bool = False, **kwargs) -> None:
        self.market1501_500k = market1501_500k
        super().__init__(root, **kwargs)

    def load_splits(self) -> Tuple[List[Item], List[Item], List[Item]]:
        train, query, gallery = super().load_splits()
        if self.market1501_500k:
            gallery = gallery + self.parse_dir(self.split_dir("images"))
        return train, query, gallery


class DukeMTMCreID(_MarketLike):
    """DukeMTMC-reID (16,522 / 2,228 / 17,661 images). Same lists as torchreid's ``DukeMTMCreID``.

    Like torchreid's class (and the Duke-derived sets below) it keeps the host's ``_junk_pids = []``.
    """

    name = "dukemtmcreid"
    dir_candidates = ("DukeMTMC-reID", "dukemtmc-reid/DukeMTMC-reID")


class OccludedDuke(_MarketLike):
    """Occluded-Duke (15,618 / 2,210 / 17,661 images); masks ``<file>.jpg.confidence_fields.npy``."""

    name = "occluded_duke"
    dir_candidates = ("Occluded_Duke", "occluded_duke/Occluded_Duke")
    mask_suffix = OCCLUDED_DUKE_MASK_SUFFIX


class _PidFolders(ReIDDataset):
    """Images ``<split>/<pid>/<pid>_*.<ext>``; pid = ``int(name.split('_')[0])``, camid from the folder."""

    #: camid of the images of a folder (occluded = query side, whole = gallery side)
    folder_camids: ClassVar[Dict[str, int]] = {"occluded_body_images": 0, "whole_body_images": 1}

    def parse_dir(self, folder: str) -> List[Item]:
        """Items of ``folder/<pid>/*`` with the folder's camid."""
        name = osp.basename(folder)
        camid = self.folder_camids[toggle_resize(name) if name.endswith(RESIZE_SUFFIX) else name]
        items = []
        for path in list_images(folder, self.image_exts, depth=1):
            try:
                pid = int(osp.basename(path).split("_")[0])
            except ValueError:
                raise DatasetError(f"cannot parse pid from {path} (expected '<pid>_...')") from None
            items.append((path, pid, camid))
        return items


class OccludedReID(_PidFolders):
    """Occluded-ReID (test only, 200 ids): query = occluded images (camid 0), gallery = whole (camid 1).

    Files ``<split>/<pid>/<pid>_<n>.tif``. The train list is a dummy (query + gallery, relabelled)
    because torchreid needs a non-empty one; train on Market-1501. Masks use the grandparent folder:
    ``masks/<dir>/occluded_body_images[_resize]/<stem>.npy``.
    """

    name = "occluded_reid"
    dir_candidates = ("Occluded_REID", "occluded_reid/Occluded_REID")
    split_dirs = {
        "train": ("occluded_body_images", "whole_body_images"),  # the dummy: query + gallery
        "query": ("occluded_body_images",),
        "gallery": ("whole_body_images",),
    }
    image_exts = (".tif", ".tiff", ".jpg", ".png")
    mask_levels = (2,)
    test_only = True


class PDukeMTMCreID(_PidFolders):
    """P-DukeMTMC-reID (12,927 / 2,163 / 9,053 images).

    ``train/{whole_body_images (camid 1), occluded_body_images (camid 0)}/<pid>/*.jpg``, query =
    ``test/occluded_body_images`` (camid 0), gallery = ``test/whole_body_images`` (camid 1); all four
    sub-folders are required. Masks:
    ``masks/<dir>/<train|test>[_resize]/<whole|occluded>_body_images/<stem>.npy``.
    """

    name = "p_dukemtmc_reid"
    dir_candidates = ("P-DukeMTMC-reID", "p_dukemtmc_reid/P-DukeMTMC-reID")
    split_dirs = {
        "train": ("train/whole_body_images", "train/occluded_body_images"),
        "query": ("test/occluded_body_images",),
        "gallery": ("test/whole_body_images",),
    }
    mask_levels = (3, 2)


class SyntheticOccluded(OccludedDuke):
    """Procedural occluded dataset in the Occluded-Duke layout, generated on first use.

    Args:
        root: generation root (``cfg.data.root``), unless ``cache_dir`` is set.
        cache_dir: generate under this folder instead of ``root``.
        generate: (re)generate the dataset if it is missing or was made with other parameters (default);
            False reads the existing folder as it is and never writes.
        **kwargs: generator parameters (the keys of ``synthetic.DEFAULT_PARAMS``; the data manager passes
            ``cfg.profd.synthetic.*``, torchreid passes none so the generator defaults apply); the
            remaining kwargs go to :class:`ReIDDataset`.
    """

    name = "synthetic_occluded"
    dir_candidates = ("synthetic_occluded",)

    @classmethod
    def ensure(cls, root: str = "", cache_dir: str = "", **kwargs) -> str:
        """Generate the dataset unless an up-to-date copy exists; return its folder.

        The constructor's first step, callable alone: in distributed runs the data manager's rank 0
        calls it before any rank builds the dataset.

        Args:
            root, cache_dir: as the constructor.
            **kwargs: constructor kwargs; the generator parameters among them are used, the rest ignored.

        Raises:
            DatasetError: a bad generator parameter.
        """
        params = {k: v for k, v in kwargs.items() if k in DEFAULT_PARAMS}
        try:
            return ensure_synthetic_occluded(osp.abspath(osp.expanduser(cache_dir or root)), **params)
        except ValueError as e:  # bad profd.synthetic.* value
            raise DatasetError(f"dataset '{cls.name}': {e} (profd.synthetic.*)") from None

    def __init__(self, root: str = "", cache_dir: str = "", generate: bool = True, **kwargs) -> None:
        if generate:
            folder = self.ensure(root, cache_dir, **kwargs)
        else:  # read what is there, whatever parameters it was made with (tools that only check)
            folder = osp.join(osp.abspath(osp.expanduser(cache_dir or root)), DATASET_FOLDER)
            if not osp.isfile(osp.join(folder, META_FILE)):
                raise DatasetError(f"dataset '{self.name}' is not generated at {folder} (no {META_FILE}); "
                                   "training generates it, or pass --generate to tools/check_dataset.py")
        self.dir_candidates = (osp.basename(folder),)  # where the generator put it
        super().__init__(osp.dirname(folder), **{k: v for k, v in kwargs.items() if k not in DEFAULT_PARAMS})


#: registry name -> adapter class (registered with torchreid by ``builtin.register_datasets``)
DATASETS: Dict[str, type] = {
    cls.name: cls
    for cls in (Market1501, DukeMTMCreID, OccludedDuke, OccludedReID, PDukeMTMCreID, SyntheticOccluded)
}
