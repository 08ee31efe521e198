"""Fetch the BPBReID/ProFD human-parsing masks (PifPaf + Mask R-CNN) and put them where the loaders look.

Usage::

    python tools/download_masks.py --root reid-data [--dataset occluded_duke]
    python tools/download_masks.py --root reid-data --dataset market1501 --archive market1501.zip

The masks live in a Google-Drive folder (one archive per dataset, each holding a ``masks/`` folder).
Archives are unpacked into ``<root>/<dataset folder>/masks/pifpaf_maskrcnn_filtering/...``. Offline,
the tool fails within a few seconds and prints the manual steps; ``--archive`` installs an archive that
was downloaded by hand. Exit code 1 (with a one-line ``error: ...`` on stderr) when it fails or installs
nothing, 0 otherwise.
"""

from __future__ import annotations

import argparse
import os
import os.path as osp
import shutil
import socket
import sys
import tarfile
import tempfile
import threading
import zipfile
from typing import List, Optional

import profd_plugin  # noqa: F401  (registers the datasets with torchreid)
from profd_plugin.data.datasets import DATASETS, DEFAULT_MASKS_DIR, SyntheticOccluded

DRIVE_FOLDER = "https://drive.google.com/drive/folders/1IbCAbjj3XtV3_tFOsCuqBi79ZiDqNc1H"
#: datasets with downloadable masks: all adapters except the generated one (it writes its own)
MASK_DATASETS = tuple(name for name in DATASETS if name != SyntheticOccluded.name)
#: archive-name keywords -> dataset, most specific first
KEYWORDS = (
    ("p_duke", "p_dukemtmc_reid"),
    ("pduke", "p_dukemtmc_reid"),
    ("occluded_duke", "occluded_duke"),
    ("occ_duke", "occluded_duke"),
    ("occluded_reid", "occluded_reid"),
    ("occ_reid", "occluded_reid"),
    ("market", "market1501"),
    ("duke", "dukemtmcreid"),
)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True, help="folder holding the dataset folders (data.root)")
    p.add_argument("--dataset", choices=MASK_DATASETS, help="only this dataset (default: all)")
    p.add_argument(
        "--archive", help="install this already-downloaded archive (zip/tar) instead of downloading"
    )
    p.add_argument("--timeout", type=float, default=3.0, help="connectivity check timeout in seconds")
    return p.parse_args(argv)


def dataset_folder(root: str, dataset: str) -> str:
    """The existing dataset folder under ``root`` (official or torchreid nesting), else the official one."""
    candidates = [osp.join(root, c) for c in DATASETS[dataset].dir_candidates]
    return next((c for c in candidates if osp.isdir(c)), candidates[0])


def guess_dataset(filename: str) -> Optional[str]:
    """Dataset of an archive from its file name, or None."""
    name = osp.basename(filename).lower().replace("-", "_").replace(" ", "_")
    return next((ds for key, ds in KEYWORDS if key in name), None)


def reachable(host: str = "drive.google.com", port: int = 443, timeout: float = 3.0) -> bool:
    """True when a TCP connection to ``host:port`` opens within ``timeout`` (DNS included)."""
    ok = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(ok)


def manual_steps(root: str, datasets: List[str]) -> str:
    targets = ", ".join(
        osp.join(dataset_folder(root, d), "masks", DEFAULT_MASKS_DIR, "...") for d in datasets
    )
    return (
        f"download the archive(s) from {DRIVE_FOLDER} in a browser, then run this tool with "
        f"--archive FILE --dataset NAME (or unzip so that the masks land in {targets})"
    )


def _merge(src: str, dst: str) -> None:
    """Move the tree ``src`` into ``dst``, merging folders and replacing files."""
    if osp.isdir(src) and osp.isdir(dst):
        for entry in os.listdir(src):
            _merge(osp.join(src, entry), osp.join(dst, entry))
        return
    os.makedirs(osp.dirname(dst), exist_ok=True)
    if osp.isfile(dst):
        os.remove(dst)
    shutil.move(src, dst)


def install(archive: str, root: str, dataset: str) -> str:
    """Unpack ``archive`` and move its ``masks`` folder into the dataset folder; returns the target."""
    os.makedirs(root, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".masks-", dir=root)
    try:
        # the format from the content (a hand-downloaded file may have any name); shutil skips zip members
        # that would land outside the staging folder, and the tar "data" filter refuses absolute paths and
        # links out of it (zip extraction takes no filter on Python < 3.12)
        if zipfile.is_zipfile(archive):
            shutil.unpack_archive(archive, staging, format="zip")
        elif tarfile.is_tarfile(archive):
            shutil.unpack_archive(archive, staging, format="tar", filter="data")
        else:
            raise RuntimeError(f"{archive} is neither a zip nor a tar archive")
        found = [osp.join(d, "masks") for d, dirs, _ in os.walk(staging) if "masks" in dirs]
        if not found:
            found = [d for d, dirs, _ in os.walk(staging) if DEFAULT_MASKS_DIR in dirs]
        if not found:
            raise RuntimeError(f"no 'masks' or '{DEFAULT_MASKS_DIR}' folder inside {archive}")
        target = osp.join(dataset_folder(root, dataset), "masks")
        _merge(found[0], target)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def download(out_dir: str, dataset: Optional[str]) -> List[str]:
    """Download the Drive folder's archives (only ``dataset``'s when given) into ``out_dir``."""
    import gdown

    os.makedirs(out_dir, exist_ok=True)
    files = gdown.download_folder(url=DRIVE_FOLDER, output=out_dir, quiet=True, skip_download=True)
    paths = []
    for f in files:
        if dataset is None or guess_dataset(f.path) == dataset:
            paths.append(gdown.download(id=f.id, output=f.local_path, quiet=False))
    return paths


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    root = osp.abspath(osp.expanduser(args.root))
    datasets = [args.dataset] if args.dataset else list(MASK_DATASETS)
    try:
        if args.archive:
            archives = [args.archive]
        elif not reachable(timeout=args.timeout):
            print(
                f"error: cannot reach drive.google.com (offline?); {manual_steps(root, datasets)}",
                file=sys.stderr,
            )
            return 1
        else:
            archives = download(osp.join(root, ".masks_download"), args.dataset)
        installed = 0
        for archive in archives:
            dataset = args.dataset or guess_dataset(archive)
            if dataset is None:
                print(
                    f"skipped {archive}: cannot tell its dataset from the name; "
                    "rerun with --archive and --dataset"
                )
                continue
            print(f"{dataset}: masks installed in {install(archive, root, dataset)}")
            installed += 1
        if not installed:
            print(f"error: no masks installed; {manual_steps(root, datasets)}", file=sys.stderr)
            return 1
    except Exception as e:  # noqa: BLE001 - one-line message, no traceback wall
        message = " ".join(f"{type(e).__name__}: {e}".split())  # exception text may span lines
        print(f"error: {message}; {manual_steps(root, datasets)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
