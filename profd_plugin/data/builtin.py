"""Register the plugin's dataset adapters with torchreid (idempotent, the one place that does it).

``market1501`` and ``dukemtmcreid`` *replace* torchreid's built-in entries: the adapters give the same
train/query/gallery items (sorted, see docs/DATASETS.md) and additionally accept the official ProFD
layout (``*_resize`` folders, dataset folder directly under ``data.root``) and expose ``mask_path``.
"""

from __future__ import annotations

import logging
from typing import Dict

from torchreid.reid.data import datasets as _host_datasets
from torchreid.reid.data import register_image_dataset

from .datasets import DATASETS

__all__ = ["register_datasets", "host_dataset_registry"]

logger = logging.getLogger(__name__)


def host_dataset_registry() -> Dict[str, type]:
    """torchreid's image-dataset registry dict (``torchreid.reid.data.datasets.__image_datasets``)."""
    return getattr(_host_datasets, "__image_datasets")


def register_datasets() -> None:
    """Register every adapter of ``datasets.DATASETS`` with torchreid; calling it again is a no-op."""
    registry = host_dataset_registry()
    for name, cls in DATASETS.items():
        if registry.get(name) is cls:
            continue
        if name in registry:  # torchreid's built-in (market1501, dukemtmcreid) or a stale class
            logger.debug(
                "replacing torchreid dataset '%s' (%s) by %s", name, registry[name].__name__, cls.__name__
            )
            registry[name] = cls
        else:
            register_image_dataset(name, cls)
