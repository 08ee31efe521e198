"""The mask-making loop: batched, resumable, atomic, with a progress bar and preview pictures.

Jobs whose mask file exists are skipped (unless ``overwrite``), so an interrupted run continues where it
stopped. Every file is written through ``fileio.atomic_write`` (temporary file + rename): a killed run leaves
no half-written ``.npy``, only ``.tmp-*`` files, which the next run removes from the folders it writes to.
Images are decoded by a thread pool one batch ahead of the backend. An image that cannot be read (or that
the backend fails on) is reported and skipped; the others are written.
"""
from __future__ import annotations

import logging
import os.path as osp
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..fileio import atomic_write, remove_stale_temp_files
from .base import Person, PoseBackend
from .convert import MASK_STRIDE, image_fields, keypoint_confidences, select_person
from .jobs import MaskJob
from .preview import render_preview, save_preview

logger = logging.getLogger(__name__)

Loaded = Tuple[Optional[np.ndarray], str]  # (RGB image or None, why it could not be read)


@dataclass
class RunSummary:
    """What a run did.

    Attributes:
        total: jobs given.
        written: mask files written (``no_person`` of them all zeros: nobody detected).
        skipped: jobs whose mask file already existed.
        failed: ``(image, reason)`` of the images that could not be read or processed.
        previews: preview PNGs written.
        seconds: wall time of the processing loop.
    """

    total: int
    written: int = 0
    no_person: int = 0
    skipped: int = 0
    failed: List[Tuple[str, str]] = field(default_factory=list)
    previews: List[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        """Images processed (written or failed) per second of the loop."""
        done = self.written + len(self.failed)
        return done / self.seconds if self.seconds > 0 else 0.0


def load_image(path: str) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)``; raises whatever PIL raises for a missing, truncated or corrupt file."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _try_load(path: str) -> Loaded:
    try:
        return load_image(path), ""
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported, not fatal
        return None, " ".join(f"cannot read image ({type(e).__name__}: {e})".split())


def _predict(backend: PoseBackend, images: List[np.ndarray]) -> List[Tuple[Optional[List[Person]], str]]:
    """``backend.predict`` on a batch; when it fails, image by image to isolate the culprit."""
    try:
        return [(people, "") for people in backend.predict(images)]
    except Exception:  # noqa: BLE001 - retried per image below
        out: List[Tuple[Optional[List[Person]], str]] = []
        for image in images:
            try:
                out.append((backend.predict([image])[0], ""))
            except Exception as e:  # noqa: BLE001 - reported, not fatal
                out.append((None, " ".join(f"backend failed ({type(e).__name__}: {e})".split())))
        return out


class _Runner:
    """State of one :func:`make_masks` call."""

    def __init__(self, backend: PoseBackend, summary: RunSummary, *, stride: int, preview: int,
                 preview_dir: str) -> None:
        self.backend, self.summary, self.stride = backend, summary, stride
        self.preview, self.preview_dir = preview, preview_dir

    def fail(self, job: MaskJob, reason: str) -> None:
        self.summary.failed.append((job.image, reason))
        logger.warning("skipped %s: %s", job.image, reason)

    def process(self, batch: Sequence[MaskJob], loaded: Sequence[Loaded]) -> None:
        """Predict, convert and write one batch."""
        ok = []
        for job, (image, error) in zip(batch, loaded):
            if image is None:
                self.fail(job, error)
            else:
                ok.append((job, image))
        for (job, image), (people, error) in zip(ok, _predict(self.backend, [img for _, img in ok])):
            if people is None:
                self.fail(job, error)
                continue
            H, W = image.shape[:2]
            fields = image_fields(people, H, W, self.stride)  # (36, ceil(H/8), ceil(W/8))
            atomic_write(job.output, lambda f: np.save(f, fields))
            self.summary.written += 1
            self.summary.no_person += not fields.any()
            if len(self.summary.previews) < self.preview:
                person = select_person(people, H, W)
                conf = None if person is None else keypoint_confidences(person, H, W)
                self.write_preview(job, image, fields, None if person is None else person.keypoints, conf)

    def write_preview(self, job: MaskJob, image: np.ndarray, fields: np.ndarray,
                      keypoints: Optional[np.ndarray] = None, conf: Optional[np.ndarray] = None) -> None:
        stem = osp.splitext(osp.basename(job.image))[0]
        path = osp.join(self.preview_dir, f"{len(self.summary.previews):04d}_{stem}.png")
        save_preview(path, render_preview(image, fields, keypoints, conf))
        self.summary.previews.append(path)

    def preview_existing(self, jobs: Sequence[MaskJob]) -> None:
        """Previews (parts only, no keypoints) of already existing mask files, up to ``preview`` in all."""
        for job in jobs:
            if len(self.summary.previews) >= self.preview:
                return
            try:
                image, fields = load_image(job.image), np.load(job.output, allow_pickle=False)
            except Exception:  # noqa: BLE001 - a preview is best effort
                continue
            self.write_preview(job, image, fields)


def _submit(pool: ThreadPoolExecutor, batch: Sequence[MaskJob]) -> List["Future[Loaded]"]:
    return [pool.submit(_try_load, job.image) for job in batch]


def make_masks(jobs: Sequence[MaskJob], backend: PoseBackend, *, batch_size: int = 16, workers: int = 2,
               overwrite: bool = False, preview: int = 0, preview_dir: str = "", stride: int = MASK_STRIDE,
               progress: bool = True) -> RunSummary:
    """Write the mask file of every job.

    Args:
        jobs: what to make (:mod:`profd_plugin.parsing.jobs`).
        backend: the pose backend.
        batch_size: images per ``backend.predict`` call.
        workers: image-decoding threads.
        overwrite: recompute existing mask files instead of skipping them.
        preview: write this many overlay PNGs (new masks first, then existing ones) into ``preview_dir``.
        preview_dir: where previews go.
        stride: pixels per field cell.
        progress: show a tqdm bar (images/s) on stderr.

    Returns:
        The :class:`RunSummary`.
    """
    if batch_size < 1 or workers < 1:
        raise ValueError(f"batch_size and workers must be >= 1, got {batch_size} and {workers}")
    summary = RunSummary(total=len(jobs))
    pending = list(jobs) if overwrite else [job for job in jobs if not osp.isfile(job.output)]
    summary.skipped = len(jobs) - len(pending)
    for folder in sorted({osp.dirname(job.output) for job in pending}):
        remove_stale_temp_files(folder)  # left by a killed run
    runner = _Runner(backend, summary, stride=stride, preview=preview, preview_dir=preview_dir)
    batches = [pending[i:i + batch_size] for i in range(0, len(pending), batch_size)]
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool, \
            tqdm(total=len(pending), unit="img", desc="masks", disable=not progress, smoothing=0.1) as bar:
        upcoming = _submit(pool, batches[0]) if batches else []
        for i, batch in enumerate(batches):
            loaded = [f.result() for f in upcoming]
            upcoming = _submit(pool, batches[i + 1]) if i + 1 < len(batches) else []
            runner.process(batch, loaded)
            bar.update(len(batch))
    summary.seconds = time.perf_counter() - start
    if len(summary.previews) < preview:
        new = set(pending)
        runner.preview_existing([job for job in jobs if job not in new])
    return summary
