"""The pose-backend interface (image -> people with COCO keypoints and a person mask) and its registry.

A backend is one module in ``profd_plugin/parsing/backends/`` whose class is decorated with
:func:`register_backend`; the registry imports every module of that folder on first use, so adding a backend
(SCHP, SAM, ...) means adding one file. Backend modules import their heavy dependencies in the constructor,
so listing the names stays cheap and a missing optional package only matters for the backend that needs it.
"""
from __future__ import annotations

import abc
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable, ClassVar, Dict, List, Sequence, Type

import numpy as np

__all__ = ["Person", "PoseBackend", "BackendError", "register_backend", "backend_names", "get_backend"]

_BACKENDS: Dict[str, Type["PoseBackend"]] = {}
_BACKEND_PACKAGE = __name__.rsplit(".", 1)[0] + ".backends"


class BackendError(RuntimeError):
    """A backend cannot be used here (missing package or weights, bad option); a one-line message."""


@dataclass(frozen=True)
class Person:
    """One detected person.

    Attributes:
        keypoints: ``(17, 2)`` float ``(x, y)`` pixel positions in ``PIFPAF_KEYPOINTS`` (COCO) order; may lie
            outside the image (the backend's guess for a body part out of frame).
        scores: ``(17,)`` float in [0, 1], how sure the backend is that each keypoint is there and visible.
        mask: ``(H, W)`` float in [0, 1], the person's segmentation (probability per pixel).
    """

    keypoints: np.ndarray
    scores: np.ndarray
    mask: np.ndarray


class PoseBackend(abc.ABC):
    """Image -> people. Subclasses take keyword-only options and raise :class:`BackendError` when unusable.

    Common constructor options (every backend accepts them, rejecting the ones it cannot honour):
    ``weights`` (a local weights file or folder), ``device`` (``cpu``, ``cuda``, ...),
    ``min_confidence`` (person detection threshold in [0, 1]).
    """

    name: ClassVar[str] = ""

    @abc.abstractmethod
    def predict(self, images: Sequence[np.ndarray]) -> List[List[Person]]:
        """The people in each image.

        Args:
            images: RGB uint8 ``(H, W, 3)`` arrays (sizes may differ).

        Returns:
            One list of :class:`Person` per image (empty when nobody was found).
        """

    def close(self) -> None:
        """Release the models (optional)."""

    def __enter__(self) -> "PoseBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def register_backend(name: str) -> Callable[[Type[PoseBackend]], Type[PoseBackend]]:
    """Class decorator: make a :class:`PoseBackend` available as ``--backend name``."""

    def register(cls: Type[PoseBackend]) -> Type[PoseBackend]:
        if name in _BACKENDS and _BACKENDS[name] is not cls:
            raise ValueError(f"pose backend '{name}' is registered twice")
        cls.name = name
        _BACKENDS[name] = cls
        return cls

    return register


def _discover() -> None:
    package = importlib.import_module(_BACKEND_PACKAGE)
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{_BACKEND_PACKAGE}.{info.name}")


def backend_names() -> List[str]:
    """Sorted names of the available backends."""
    _discover()
    return sorted(_BACKENDS)


def get_backend(name: str, **options) -> PoseBackend:
    """Build backend ``name`` with keyword ``options``.

    Raises:
        BackendError: unknown name (the message lists the valid ones), or the backend is unusable here.
    """
    names = backend_names()
    if name not in _BACKENDS:
        raise BackendError(f"unknown pose backend '{name}'; valid: {', '.join(names)}")
    return _BACKENDS[name](**options)
