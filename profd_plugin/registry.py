"""Registration of the plugin inside torchreid: the one place that touches host registries.

torchreid has no public model registry, so the model name ``profd`` is written into its factory dict
(the one sanctioned touch of host internals, see ``STYLE.md``). Datasets go through
``register_image_dataset`` (``profd_plugin/data/builtin.py``). Both are idempotent.
"""
from __future__ import annotations

from typing import Any

MODEL_NAME = "profd"


def _profd_factory(num_classes: int, loss: str = "softmax", pretrained: bool = True,
                   use_gpu: bool = True, **kwargs: Any):
    """torchreid-style factory; imports the model lazily so ``import profd_plugin`` stays light."""
    from .modeling import profd_torchreid_factory

    return profd_torchreid_factory(num_classes=num_classes, loss=loss, pretrained=pretrained,
                                   use_gpu=use_gpu, **kwargs)


def register_model() -> None:
    """Make ``torchreid.reid.models.build_model('profd', ...)`` build ProFD (idempotent)."""
    from torchreid.reid import models

    getattr(models, "__model_factory")[MODEL_NAME] = _profd_factory


def register_all() -> None:
    """Register the plugin's datasets and model with torchreid (safe to call any number of times)."""
    from .data.builtin import register_datasets

    register_datasets()
    register_model()
