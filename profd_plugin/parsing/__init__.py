"""Human-parsing masks for any dataset (``tools/make_masks.py``): pose backends -> OpenPifPaf-format fields.

- ``base``: the backend interface (image -> :class:`Person` with 17 COCO keypoints and a person mask) and the
  registry (``backends/`` holds one module per backend: ``mediapipe``, ``torchvision``);
- ``convert``: people -> the 36 fields ``load_part_masks`` reads (rendering shared with the synthetic set);
- ``jobs``: which images, and where their masks go; ``run``: the batched, resumable loop;
- ``preview``: overlay pictures.
"""
from .base import BackendError, Person, PoseBackend, backend_names, get_backend, register_backend
from .convert import MASK_STRIDE, image_fields, person_fields, select_person
from .jobs import InputError, MaskJob, dataset_jobs, folder_jobs
from .run import RunSummary, make_masks

__all__ = [
    "BackendError", "Person", "PoseBackend", "backend_names", "get_backend", "register_backend",
    "MASK_STRIDE", "image_fields", "person_fields", "select_person",
    "InputError", "MaskJob", "dataset_jobs", "folder_jobs", "RunSummary", "make_masks",
]
