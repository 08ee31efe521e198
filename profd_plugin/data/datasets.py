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
folder is used (masks are rescaled to the image grid on load, so either fits).
"""

from __future__ import annotations

import glob
import os.path as osp
import re
from typing import ClassVar, Dict, List, Optional, Sequence, Tuple

from torchreid.reid.data.datasets.dataset import ImageDataset

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
]

Item = Tuple[str, int, int]  # (img_path, pid, camid)

DEFAULT_MASKS_DIR = "pifpaf_maskrcnn_filtering"
RESIZE_SUFFIX = "_resize"
PID_CAMID = re.compile(r"([-\d]+)_c(\d)")  # Market/Duke file names: <pid>_c<cam>...
HELP = "see docs/DATASETS.md for the layout; masks: tools/download_masks.py"


class DatasetError(RuntimeError):
    """A missing, empty or malformed dataset file or folder (one-line message naming the path)."""

    def __str__(self) -> str:
        msg = super().__str__()
        if msg.startswith("Caught DatasetError"):  # re-raised by a DataLoader worker with its traceback
            return msg.rstrip().splitlines()[-1].split("DatasetError: ", 1)[-1]  # the original one-liner
        return msg


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


class ReIDDataset(ImageDataset):
    """Base adapter: folder resolution, split folders, mask paths, empty-split checks.

    Subclasses set the class attributes and implement :meth:`load_splits`.

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
    #: split folder names (without ``_resize``) that must exist
    required_dirs: ClassVar[Tuple[str, ...]] = ()
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
        for split, items in (("train", train), ("query", query), ("gallery", gallery)):
            if not items:
                raise DatasetError(
                    f"dataset '{self.name}': split '{split}' is empty (no {'/'.join(self.image_exts)} images "
                    f"in {self._split_hint(split)}); {HELP}"
                )
        super().__init__(train, query, gallery, **kwargs)

    # -- layout -----------------------------------------------------------------------------------
    def find_dataset_dir(self) -> str:
        """The first candidate folder under ``root`` that holds the required split folders."""
        for cand in self.dir_candidates:
            path = osp.join(self.root, cand)
            if all(self._find_split(path, d) for d in self.required_dirs):
                return path
        layout = ", ".join(f"{d}/" for d in self.required_dirs)
        for cand in self.dir_candidates:  # a folder exists but lacks splits: name what is missing
            path = osp.join(self.root, cand)
            missing = [f"{d}/" for d in self.required_dirs if not self._find_split(path, d)]
            if osp.isdir(path) and len(missing) < len(self.required_dirs):
                raise DatasetError(
                    f"dataset '{self.name}': {path} lacks {', '.join(missing)} (expected {layout} "
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

    def _split_hint(self, split: str) -> str:
        return self.dataset_dir

    def load_splits(self) -> Tuple[List[Item], List[Item], List[Item]]:
        """Return ``(train, query, gallery)`` with train pids relabelled."""
        raise NotImplementedError

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
        base = osp.join(self.dataset_dir, "masks", self.masks_dir)
        first = self._mask_dir_cache.get(comps[0])
        if first is None:  # decided once per folder: mirror, else the _resize-toggled folder
            first = comps[0]
            if not osp.isdir(osp.join(base, first)) and osp.isdir(osp.join(base, toggle_resize(first))):
                first = toggle_resize(first)
            self._mask_dir_cache[comps[0]] = first
        return osp.join(base, first, *comps[1:], osp.splitext(fname)[0] + self.mask_suffix)


class _MarketLike(ReIDDataset):
    """``bounding_box_train`` / ``query`` / ``bounding_box_test`` with ``<pid>_c<cam>`` file names."""

    required_dirs = ("bounding_box_train", "query", "bounding_box_test")
    _junk_pids = [0, -1]

    def _split_hint(self, split: str) -> str:
        return self.split_dir(
            {"train": "bounding_box_train", "query": "query"}.get(split, "bounding_box_test")
        )

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

    def load_splits(self) -> Tuple[List[Item], List[Item], List[Item]]:
        train = relabel(self.parse_dir(self.split_dir("bounding_box_train")))
        query = self.parse_dir(self.split_dir("query"))
        gallery = self.parse_dir(self.split_dir("bounding_box_test"))
        return train, query, gallery


class Market1501(_MarketLike):
    """Market-1501 (12,936 / 3,368 / 15,913 images). Same lists as torchreid's ``Market1501``.

    Args:
        market1501_500k: add the 500k distractors of ``<dataset dir>/images`` to the gallery.
    """

    name = "market1501"
    dir_candidates = ("Market-1501-v15.09.15", "market1501/Market-1501-v15.09.15", "market1501")

    def __init__(self, root: str = "", market1501_500k: bool = False, **kwargs) -> None:
        self.market1501_500k = market1501_500k
        super().__init__(root, **kwargs)

    def load_splits(self) -> Tuple[List[Item], List[Item], List[Item]]:
        train, query, gallery = super().load_splits()
        if self.market1501_500k:
            gallery = gallery + self.parse_dir(self.split_dir("images"))
        return train, query, gallery


class DukeMTMCreID(_MarketLike):
    """DukeMTMC-reID (16,522 / 2,228 / 17,661 images). Same lists as torchreid's ``DukeMTMCreID``."""

    name = "dukemtmcreid"
    dir_candidates = ("DukeMTMC-reID", "dukemtmc-reid/DukeMTMC-reID")
    _junk_pids: List[int] = []  # as torchreid


class OccludedDuke(_MarketLike):
    """Occluded-Duke (15,618 / 2,210 / 17,661 images); masks ``<file>.jpg.confidence_fields.npy``."""

    name = "occluded_duke"
    dir_candidates = ("Occluded_Duke", "occluded_duke/Occluded_Duke")
    mask_suffix = ".jpg.confidence_fields.npy"


class _PidFolders(ReIDDataset):
    """Images ``<split>/<pid>/<pid>_*.<ext>``; pid = ``int(name.split('_')[0])``, camid fixed per folder."""

    def parse_dir(self, folder: str, camid: int) -> List[Item]:
        """Items of ``folder/<pid>/*`` with a fixed camid."""
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
    required_dirs = ("occluded_body_images", "whole_body_images")
    image_exts = (".tif", ".tiff", ".jpg", ".png")
    mask_levels = (2,)
    test_only = True

    def _split_hint(self, split: str) -> str:
        return self.split_dir("whole_body_images" if split == "gallery" else "occluded_body_images")

    def load_splits(self) -> Tuple[List[Item], List[Item], List[Item]]:
        query = self.parse_dir(self.split_dir("occluded_body_images"), camid=0)
        gallery = self.parse_dir(self.split_dir("whole_body_images"), camid=1)
        return relabel(query + gallery), query, gallery


class PDukeMTMCreID(_PidFolders):
    """P-DukeMTMC-reID (12,927 / 2,163 / 9,053 images).

    ``train/{whole_body_images (camid 1), occluded_body_images (camid 0)}/<pid>/*.jpg``, query =
    ``test/occluded_body_images`` (camid 0), gallery = ``test/whole_body_images`` (camid 1). Masks:
    ``masks/<dir>/<train|test>[_resize]/<whole|occluded>_body_images/<stem>.npy``.
    """

    name = "p_dukemtmc_reid"
    dir_candidates = ("P-DukeMTMC-reID", "p_dukemtmc_reid/P-DukeMTMC-reID")
    required_dirs = ("train", "test")
    image_exts = (".jpg",)
    mask_levels = (3, 2)

    def _split_hint(self, split: str) -> str:
        return self.split_dir("train" if split == "train" else "test")

    def load_splits(self) -> Tuple[List[Item], List[Item], List[Item]]:
        train_dir, test_dir = self.split_dir("train"), self.split_dir("test")
        train = self.parse_dir(osp.join(train_dir, "whole_body_images"), camid=1)
        train += self.parse_dir(osp.join(train_dir, "occluded_body_images"), camid=0)
        query = self.parse_dir(osp.join(test_dir, "occluded_body_images"), camid=0)
        gallery = self.parse_dir(osp.join(test_dir, "whole_body_images"), camid=1)
        return relabel(train), query, gallery


class SyntheticOccluded(OccludedDuke):
    """Procedural occluded dataset in the Occluded-Duke layout, generated on first use.

    Args:
        root: generation root (``cfg.data.root``), unless ``cache_dir`` is set.
        cache_dir: generate under this folder instead of ``root``.
        **kwargs: generator parameters of ``synthetic.ensure_synthetic_occluded`` (``num_ids``,
            ``num_test_ids``, ``images_per_id``, ``height``, ``width``, ``seed``; the data manager passes
            ``cfg.profd.synthetic.*``, torchreid passes none so the generator defaults apply); the
            remaining kwargs go to :class:`ReIDDataset`.
    """

    name = "synthetic_occluded"
    dir_candidates = ("synthetic_occluded",)
    GENERATOR_KEYS: ClassVar[Tuple[str, ...]] = (
        "num_ids",
        "num_test_ids",
        "images_per_id",
        "height",
        "width",
        "seed",
    )

    def __init__(self, root: str = "", cache_dir: str = "", **kwargs) -> None:
        from .synthetic import ensure_synthetic_occluded

        params = {k: kwargs.pop(k) for k in self.GENERATOR_KEYS if k in kwargs}
        gen_root = osp.abspath(osp.expanduser(cache_dir or root))
        try:
            folder = ensure_synthetic_occluded(gen_root, **params)
        except ValueError as e:  # bad profd.synthetic.* value
            raise DatasetError(f"dataset '{self.name}': {e} (profd.synthetic.*)") from None
        self.dir_candidates = (osp.relpath(folder, gen_root),)  # where the generator put it
        super().__init__(gen_root, **kwargs)


#: registry name -> adapter class (registered with torchreid by ``builtin.register_datasets``)
DATASETS: Dict[str, type] = {
    cls.name: cls
    for cls in (Market1501, DukeMTMCreID, OccludedDuke, OccludedReID, PDukeMTMCreID, SyntheticOccluded)
}
