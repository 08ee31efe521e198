"""Make human-parsing masks (OpenPifPaf-format fields) for a dataset or a folder of images, offline on a CPU.

Usage::

    python tools/make_masks.py --root reid-data --dataset market1501            # every split, loader paths
    python tools/make_masks.py --images crops/ --out crops_masks/ --preview 8   # <out>/<rel dir>/<stem>.npy
    python tools/make_masks.py --root reid-data --dataset occluded_duke --backend torchvision --weights w/

Each mask is float32 ``(36, ceil(H/8), ceil(W/8))`` in [0, 1]: 17 COCO keypoint fields then 19 limb fields,
multiplied by the silhouette of the person nearest the image centre, zeros when nobody is found
(docs/DATASETS.md, "Making masks"). Existing mask files are skipped (``--overwrite`` recomputes them), every
file is written atomically, so a killed run can simply be started again.

Exit code: 0 when every image got its mask; 1 when some images could not be read or processed (they are
listed, the others are written); 2 with a one-line ``error: ...`` on stderr and nothing written for bad input
(missing folder, unknown dataset or backend, no images, missing weights).
"""

from __future__ import annotations

import argparse
import os.path as osp
import sys
from typing import List, Optional

import profd_plugin  # noqa: F401  (silences torchreid's import warning, registers the datasets)
from profd_plugin.data.datasets import DEFAULT_MASKS_DIR
from profd_plugin.parsing import (
    BackendError,
    InputError,
    PoseBackend,
    RunSummary,
    backend_names,
    dataset_jobs,
    folder_jobs,
    get_backend,
    make_masks,
)
from profd_plugin.parsing.jobs import MASK_DATASETS

EXIT_FAILED_IMAGES, EXIT_BAD_INPUT = 1, 2
PREVIEW_FOLDER = "_preview"  # default preview folder, inside the masks root / --out
SHOW_FAILED = 10  # failed images listed in the summary


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_argument_group("what (either --root and --dataset, or --images and --out)")
    src.add_argument("--root", help="folder holding the dataset folders (data.root)")
    src.add_argument("--dataset", help=f"registered dataset: {', '.join(MASK_DATASETS)}")
    src.add_argument("--masks-dir", default=DEFAULT_MASKS_DIR,
                     help="masks sub-folder <dataset>/masks/<this> (profd.masks.dir; default %(default)s)")
    src.add_argument("--images", help="a folder of images (searched recursively)")
    src.add_argument("--out", help="where the masks of --images go: <out>/<relative folder>/<stem>.npy")
    how = p.add_argument_group("how")
    how.add_argument("--backend", default="mediapipe",
                     help=f"{' or '.join(backend_names())} (default %(default)s)")
    how.add_argument("--weights", default="", help="torchvision: folder with the R-CNN weight files "
                     "(default: torchvision's cache, $TORCH_HOME/hub/checkpoints)")
    how.add_argument("--device", default="cpu", help="torchvision: torch device (default %(default)s)")
    how.add_argument("--min-confidence", type=float, default=0.5, help="person detection threshold")
    how.add_argument("--batch-size", type=int, default=16, help="images per backend call")
    how.add_argument("--workers", type=int, default=2, help="image-decoding threads")
    how.add_argument("--overwrite", action="store_true", help="recompute existing mask files")
    how.add_argument("--preview", type=int, default=0, metavar="N", help="write N overlay PNGs")
    how.add_argument("--preview-dir", default="",
                     help=f"where previews go (default <masks>/{PREVIEW_FOLDER})")
    how.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def _jobs(args: argparse.Namespace):
    """``(jobs, masks root)`` from the arguments; raises InputError for a bad combination or input."""
    by_dataset, by_folder = (args.root, args.dataset), (args.images, args.out)
    if any(by_dataset) == any(by_folder) or not (all(by_dataset) or all(by_folder)):
        raise InputError("give either --root and --dataset, or --images and --out")
    if args.batch_size < 1 or args.workers < 1 or args.preview < 0:
        raise InputError("--batch-size and --workers must be >= 1, --preview >= 0")
    if args.images:
        return folder_jobs(args.images, args.out, exclude=[args.preview_dir] if args.preview_dir else []), \
            osp.abspath(args.out)
    root = osp.abspath(osp.expanduser(args.root))
    if not osp.isdir(root):
        raise InputError(f"--root folder not found: {root}")
    return dataset_jobs(root, args.dataset, args.masks_dir)


def report(summary: RunSummary, out: str) -> None:
    """Print the one-paragraph summary of a run."""
    print(f"masks: {summary.written} written ({summary.no_person} without a person: all zeros), "
          f"{summary.skipped} skipped (already there), {len(summary.failed)} failed; "
          f"{summary.images_per_second:.1f} images/s -> {out}")
    for image, reason in summary.failed[:SHOW_FAILED]:
        print(f"  failed: {image}: {reason}")
    if len(summary.failed) > SHOW_FAILED:
        print(f"  ... and {len(summary.failed) - SHOW_FAILED} more")
    if summary.previews:
        print(f"previews: {len(summary.previews)} in {osp.dirname(summary.previews[0])}")


def main(argv: Optional[List[str]] = None, backend: Optional[PoseBackend] = None) -> int:
    """Run the tool; ``backend`` replaces ``--backend`` (tests pass a ready one)."""
    args, owned = parse_args(argv), backend is None
    try:
        jobs, out = _jobs(args)
        if owned:
            backend = get_backend(args.backend, weights=args.weights, device=args.device,
                                  min_confidence=args.min_confidence)
    except (InputError, BackendError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        summary = make_masks(jobs, backend, batch_size=args.batch_size, workers=args.workers,
                             overwrite=args.overwrite, preview=args.preview,
                             preview_dir=args.preview_dir or osp.join(out, PREVIEW_FOLDER),
                             progress=not args.quiet)
    finally:
        if owned:
            backend.close()
    report(summary, out)
    return EXIT_FAILED_IMAGES if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
