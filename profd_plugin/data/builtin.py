"""Register the plugin's dataset adapters with torchreid (idempotent, the one place that does it).

``market1501`` and ``dukemtmcreid`` *replace* torchreid's built-in entries: the adapters give the same
train/query/gallery items (sorted, see docs/DATASETS.md) and additionally accept the official ProFD
layout (``*_resize`` folders, dataset folder directly under ``data.root``) and expose ``mask_path``.

torchreid calls ``registry[name](**kwargs)`` to build a dataset, so each entry is a
:class:`DatasetConstructor` that imports the adapter module on first use: registering (which happens as
torchreid finishes importing, see ``profd_plugin/__init__.py``) imports nothing of the plugin's data code.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, Dict

from torchreid.reid.data import datasets as _host_datasets
from torchreid.reid.data import register_image_dataset

from ..choices import PLUGIN_DATASETS

__all__ = ["register_datasets", "host_dataset_registry", "DatasetConstructor", "ADAPTER_CLASSES"]

logger = logging.getLogger(__name__)

#: registry name -> adapter class name in ``profd_plugin.data.datasets`` (checked against ``DATASETS``)
ADAPTER_CLASSES: Dict[str, str] = dict(zip(PLUGIN_DATASETS, (
    "Market1501", "DukeMTMCreID", "OccludedDuke", "OccludedReID", "PDukeMTMCreID", "SyntheticOccluded")))
_ADAPTER_MODULE = "profd_plugin.data.datasets"


class DatasetConstructor:
    """What torchreid's registry holds for a plugin dataset: builds the adapter, importing it lazily."""

    def __init__(self, name: str, class_name: str) -> None:
        self.name, self.class_name = name, class_name

    @property
    def adapter(self) -> type:
        """The adapter class (imports ``profd_plugin.data.datasets``)."""
        return getattr(importlib.import_module(_ADAPTER_MODULE), self.class_name)

    def __call__(self, **kwargs: Any):
        return self.adapter(**kwargs)

    def __repr__(self) -> str:
        return f"DatasetConstructor({self.name!r} -> {_ADAPTER_MODULE}.{self.class_name})"


def host_dataset_registry() -> Dict[str, Any]:
    """torchreid's image-dataset registry dict (``torchreid.reid.data.datasets.__image_datasets``)."""
    return getattr(_host_datasets, "__image_datasets")


def register_datasets() -> None:
    """Register every adapter with torchreid; calling it again is a no-op."""
    registry = host_dataset_registry()
    for name, class_name in ADAPTER_CLASSES.items():
        entry = registry.get(name)
        if isinstance(entry, DatasetConstructor) and entry.class_name == class_name:
            continue
        if name in registry:  # torchreid's built-in (market1501, dukemtmcreid) or a stale entry
            logger.debug("replacing torchreid dataset '%s' (%r) by the plugin's adapter", name, entry)
            registry[name] = DatasetConstructor(name, class_name)
        else:
            register_image_dataset(name, DatasetConstructor(name, class_name))
