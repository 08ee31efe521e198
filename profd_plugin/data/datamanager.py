"""``ProFDDataManager``: torchreid-compatible data manager yielding the batch dict of docs/ARCHITECTURE.md.

A duck-typed replacement for torchreid's ``ImageDataManager`` (same attributes the host ``Engine``
reads), built on the host's dataset registry (``init_image_dataset``), dataset ``+`` for multiple
sources and ``build_train_sampler`` (``RandomIdentitySampler``: P identities x K instances), with
the joint image + mask transforms of :mod:`profd_plugin.data.transforms`. Masks are read for training
only, and only when ``with_masks`` is set; test loaders never read masks.

Distributed training shards the host sampler's identity groups over ranks
(:class:`profd_plugin.data.sampler.ShardedIdentitySampler`), and rank 0 generates the synthetic dataset
before any rank builds one.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchreid.reid.data.datasets import init_image_dataset
from torchreid.reid.data.sampler import build_train_sampler

from ..errors import ConfigError
from ..reproduction import reads_resize_copy
from .builtin import register_datasets
from .datasets import DatasetError, SyntheticOccluded, split_counts
from .imageset import ReIDImageSet, pil_to_image, read_image
from .masks import MaskParams, part_names
from .sampler import ShardedIdentitySampler
from .transforms import AugmentParams, build_test_transform, build_train_transform

__all__ = ["ProFDDataManager", "ReIDImageSet", "dataset_kwargs_from_cfg", "pil_to_image", "read_image"]

logger = logging.getLogger(__name__)


def _params_from_node(cls: type, node, **renames: str):
    """Dataclass ``cls`` from a config node with the same key names (``renames``: field -> key)."""
    values = {f.name: node[renames.get(f.name, f.name)] for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def dataset_kwargs_from_cfg(cfg) -> Dict[str, Dict[str, Any]]:
    """Extra constructor kwargs per dataset name from a config: every ``profd.synthetic.*`` key (the
    generator parameters and ``cache_dir``) for ``synthetic_occluded``."""
    node = cfg.profd.synthetic
    return {SyntheticOccluded.name: {key: node[key] for key in node}}


class ProFDDataManager:
    """Train and test loaders over torchreid-registered datasets, yielding batch dicts.

    Provides what torchreid's ``Engine`` reads: ``train_loader``, ``test_loader`` (name ->
    {'query', 'gallery'} loaders), ``test_dataset`` (name -> {'query', 'gallery'} item lists),
    ``sources``, ``targets``, ``num_train_pids``, ``num_train_cams``, ``fetch_test_loaders``,
    ``data_type``, ``height``, ``width``; plus ``num_parts`` and ``part_names``.

    Args:
        root: folder holding the dataset folders.
        sources, targets: dataset names (targets default to sources).
        height, width: image size.
        transforms: enabled train augmentations (``TRAIN_TRANSFORMS`` names).
        norm_mean, norm_std: normalisation.
        batch_size_train: global train batch size (P x K); each rank loads ``batch_size_train // world_size``.
        batch_size_test: test batch size.
        workers: loader worker processes.
        cache_train: read (decode) every train image and mask once, at construction, and keep them in
            memory (:class:`~profd_plugin.data.imageset.ReIDImageSet`); batches are unchanged.
        train_sampler: a torchreid sampler name; ``num_instances``/``num_cams``/``num_datasets`` as torchreid.
        combineall: torchreid's combineall.
        with_masks: read masks and yield ``masks``/``visibility`` in train batches.
        mask_params, augment: mask and augmentation parameters.
        dataset_kwargs: extra constructor kwargs per dataset name (e.g. ``synthetic_occluded`` generator).
        seed: base seed of the loader generators (torch derives the worker seeds from them) and of the
            sharded sampler.
        rank, world_size: distributed position (``world_size > 1`` shards the train sampler; with
            ``torch.distributed`` initialised, rank 0 also generates ``synthetic_occluded`` first).
        use_gpu: pin memory (default: CUDA available).

    Raises:
        DatasetError: missing/empty dataset, missing train masks (when required), test-only source.
        ValueError: unknown transform name, inconsistent batch / world size.
    """

    data_type = "image"

    def __init__(
        self,
        *,
        root: str,
        sources: Union[str, Sequence[str]],
        targets: Union[str, Sequence[str], None] = None,
        height: int = 256,
        width: int = 128,
        transforms: Union[str, Sequence[str]] = ("random_flip", "random_crop", "random_erase"),
        norm_mean: Sequence[float] = (0.5, 0.5, 0.5),
        norm_std: Sequence[float] = (0.5, 0.5, 0.5),
        batch_size_train: int = 64,
        batch_size_test: int = 64,
        workers: int = 2,
        cache_train: bool = False,
        train_sampler: str = "RandomIdentitySampler",
        num_instances: int = 4,
        num_cams: int = 1,
        num_datasets: int = 1,
        combineall: bool = False,
        with_masks: bool = True,
        mask_params: Optional[MaskParams] = None,
        augment: Optional[AugmentParams] = None,
        dataset_kwargs: Optional[Dict[str, Dict[str, Any]]] = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        use_gpu: Optional[bool] = None,
    ) -> None:
        self.sources = [sources] if isinstance(sources, str) else list(sources)
        self.targets = (
            list(self.sources)
            if targets is None
            else ([targets] if isinstance(targets, str) else list(targets))
        )
        self.height, self.width = height, width
        self.with_masks, self.mask_params = with_masks, mask_params or MaskParams()
        self.part_names = part_names(self.mask_params.grouping)
        self.num_parts = len(self.part_names)
        self.use_gpu = (
            torch.cuda.is_available() if use_gpu is None else (use_gpu and torch.cuda.is_available())
        )
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.transform_tr = build_train_transform(
            height=height,
            width=width,
            transforms=transforms,
            norm_mean=norm_mean,
            norm_std=norm_std,
            augment=augment,
        )
        self.transform_te = build_test_transform(
            height=height, width=width, norm_mean=norm_mean, norm_std=norm_std
        )

        register_datasets()
        names, dataset_kwargs = list(dict.fromkeys(self.sources + self.targets)), dataset_kwargs or {}
        self._generate_before_other_ranks(names, root, dataset_kwargs)
        kwargs = dict(root=root, masks_dir=self.mask_params.masks_dir, combineall=combineall, verbose=False)
        datasets = {
            name: self._init_dataset(name, **kwargs, **dataset_kwargs.get(name, {})) for name in names
        }
        self._build_train_loader(
            datasets, batch_size_train, workers, cache_train, train_sampler, num_instances, num_cams,
            num_datasets
        )
        self.test_dataset = {
            n: {"query": datasets[n].query, "gallery": datasets[n].gallery} for n in self.targets
        }
        self.test_loader = {
            n: {
                split: self._loader(ReIDImageSet(items, self.transform_te), batch_size_test, workers)
                for split, items in self.test_dataset[n].items()
            }
            for n in self.targets
        }
        self._log_summary(datasets)

    @classmethod
    def from_cfg(cls, cfg, *, with_masks: bool, rank: int = 0, world_size: int = 1) -> "ProFDDataManager":
        """Build from a config (``data.*``, ``sampler.*``, ``train.batch_size/seed``, ``test.batch_size``,
        ``profd.masks.*``, ``profd.augment.*``, ``profd.synthetic.*``)."""
        if cfg.data.k_tfm != 1 or cfg.data.load_train_targets:
            raise ConfigError(
                "data.k_tfm > 1 and data.load_train_targets are not supported by ProFDDataManager"
            )
        return cls(
            root=cfg.data.root,
            sources=list(cfg.data.sources),
            targets=list(cfg.data.targets),
            height=cfg.data.height,
            width=cfg.data.width,
            transforms=list(cfg.data.transforms),
            norm_mean=list(cfg.data.norm_mean),
            norm_std=list(cfg.data.norm_std),
            batch_size_train=cfg.train.batch_size,
            batch_size_test=cfg.test.batch_size,
            workers=cfg.data.workers,
            cache_train=cfg.data.cache_train,
            train_sampler=cfg.sampler.train_sampler,
            num_instances=cfg.sampler.num_instances,
            num_cams=cfg.sampler.num_cams,
            num_datasets=cfg.sampler.num_datasets,
            combineall=cfg.data.combineall,
            with_masks=with_masks,
            mask_params=_params_from_node(MaskParams, cfg.profd.masks, masks_dir="dir"),
            augment=_params_from_node(AugmentParams, cfg.profd.augment),
            dataset_kwargs=dataset_kwargs_from_cfg(cfg),
            seed=cfg.train.seed,
            rank=rank,
            world_size=world_size,
        )

    # -- construction helpers ---------------------------------------------------------------------
    def _generate_before_other_ranks(
        self, names: List[str], root: str, dataset_kwargs: Dict[str, Dict[str, Any]]
    ) -> None:
        """Distributed runs: rank 0 generates ``synthetic_occluded`` (if used) while the other ranks wait.

        Every rank then builds its datasets and finds the generated one complete, instead of each rank
        generating its own copy. A no-op unless ``world_size > 1`` and ``torch.distributed`` is initialised.
        """
        if self.world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
            return
        try:
            if self.rank == 0 and SyntheticOccluded.name in names:
                SyntheticOccluded.ensure(root, **dataset_kwargs.get(SyntheticOccluded.name, {}))
        finally:  # also on failure, so the other ranks fail on their own instead of waiting forever
            dist.barrier()

    @staticmethod
    def _init_dataset(name: str, **kwargs):
        try:
            return init_image_dataset(name, **kwargs)
        except ValueError as e:  # unknown name: torchreid lists the valid ones
            raise DatasetError(str(e)) from None

    def _loader(self, dataset: Dataset, batch_size: int, workers: int, **kwargs) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=workers,
            pin_memory=self.use_gpu,
            generator=torch.Generator().manual_seed(self.seed + self.rank),
            **kwargs,
        )

    def _build_train_loader(
        self,
        datasets,
        batch_size: int,
        workers: int,
        cache: bool,
        sampler_name: str,
        num_instances: int,
        num_cams: int,
        num_datasets: int,
    ) -> None:
        for name in self.sources:
            if getattr(datasets[name], "test_only", False):
                raise DatasetError(
                    f"dataset '{name}' is test-only (no train split): use it in data.targets only"
                )
        trainset = sum(datasets[name] for name in self.sources)
        self.num_train_pids, self.num_train_cams = trainset.num_train_pids, trainset.num_train_cams
        if sampler_name == "RandomIdentitySampler" and self.num_train_pids < batch_size // num_instances:
            raise DatasetError(
                f"train.batch_size {batch_size} / sampler.num_instances {num_instances} identities per "
                f"batch, but the train split of {self.sources} has only {self.num_train_pids} identities"
            )
        sampler = build_train_sampler(
            trainset.train,
            sampler_name,
            batch_size=batch_size,
            num_instances=num_instances,
            num_cams=num_cams,
            num_datasets=num_datasets,
        )
        if self.world_size > 1:
            sampler = self._shard(sampler, sampler_name, batch_size, num_instances)
            batch_size //= self.world_size
        mask_paths = self._train_mask_paths(datasets, trainset.train) if self.with_masks else None
        trainset_ = ReIDImageSet(
            trainset.train, self.transform_tr, mask_paths=mask_paths, mask_params=self.mask_params,
            cache=cache,
        )
        self.train_sampler = sampler
        # Workers are not persistent: each epoch's workers are seeded from ``train_loader.generator``,
        # which the engine re-seeds per epoch, so a resumed run replays the same augmentations.
        self.train_loader = self._loader(trainset_, batch_size, workers, sampler=sampler, drop_last=True)

    def _shard(
        self, sampler, sampler_name: str, batch_size: int, num_instances: int
    ) -> ShardedIdentitySampler:
        """Wrap the host sampler for this rank (global batch ``batch_size`` split over ``world_size``)."""
        if (
            sampler_name != "RandomIdentitySampler"
            or batch_size % self.world_size
            or (batch_size // self.world_size) % num_instances
        ):
            raise ConfigError(
                f"distributed training needs RandomIdentitySampler and train.batch_size ({batch_size}) "
                f"divisible by world_size ({self.world_size}) x sampler.num_instances ({num_instances})"
            )
        return ShardedIdentitySampler(sampler, self.rank, self.world_size, num_instances, self.seed)

    def _train_mask_paths(self, datasets, items: List[tuple]) -> List[Optional[str]]:
        """Mask path of every train item; missing ones raise (required) or become None + one warning.

        Only existence is checked here (``train_mask_problems(load=False)``); a malformed file raises
        when its item is loaded.
        """
        lookup: Dict[str, str] = {}
        missing: Dict[str, str] = {}  # image -> expected mask path
        for name in self.sources:
            ds = datasets[name]
            if not hasattr(ds, "train_mask_problems"):
                raise DatasetError(
                    f"dataset '{name}' has no masks (not a ProFD adapter); train it with with_masks=False"
                )
            lookup.update((item[0], ds.mask_path(item[0])) for item in ds.train)
            problems = ds.train_mask_problems(self.mask_params.grouping, load=False)  # all "missing"
            missing.update((img, mask) for img, mask, _ in problems)
        if missing:
            first, expected = next(iter(missing.items()))
            if self.mask_params.required:
                raise DatasetError(
                    f"missing mask for {len(missing)} of {len(items)} train images, e.g. image {first}: "
                    f"expected {expected} (get masks with tools/download_masks.py, or set "
                    "profd.masks.required False)"
                )
            logger.warning(
                "%d of %d train images have no mask (e.g. %s -> %s); they get all-background masks",
                len(missing),
                len(items),
                first,
                expected,
            )
        return [None if item[0] in missing else lookup[item[0]] for item in items]

    def _log_summary(self, datasets) -> None:
        """Log ``(ids, images)`` per split; keep them in ``dataset_counts`` and whether a ``*_resize``
        folder was read in ``resize_used`` (per dataset name, for the reproduction guard)."""
        self.dataset_counts = {name: split_counts(ds) for name, ds in datasets.items()}
        self.resize_used = {name: reads_resize_copy(ds) for name, ds in datasets.items()}
        for name, counts in self.dataset_counts.items():
            logger.info(
                "%s: train %d ids / %d images, query %d / %d, gallery %d / %d",
                name,
                *counts["train"],
                *counts["query"],
                *counts["gallery"],
            )

    # -- torchreid DataManager API ------------------------------------------------------------------
    def fetch_test_loaders(self, name: str):
        """``(query items, gallery items)`` of target ``name`` (torchreid's name for the raw lists)."""
        return self.test_dataset[name]["query"], self.test_dataset[name]["gallery"]

    def preprocess_pil_img(self, img: Image.Image) -> torch.Tensor:
        """Test transform of a PIL image -> float ``(3, H, W)``."""
        return self.transform_te(pil_to_image(img)).as_subclass(torch.Tensor)
