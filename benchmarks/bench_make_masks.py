"""Benchmark: tools/make_masks.py's throughput (images/s) with the MediaPipe backend on this CPU.

Builds a folder of re-id-like crops of the two people photographs that scikit-image bundles (astronaut,
camera; flipped, shifted and re-lit per image) at the usual re-id sizes, then runs the tool's own loop
(``profd_plugin.parsing.make_masks``: decode, pose + segmentation, fields, atomic write) on it and reports
images/s as the tool does. Needs the ``[masks]`` extra.

    python benchmarks/bench_make_masks.py              # 256 images at 128x64 and at 256x128
    python benchmarks/bench_make_masks.py --quick      # 32 images each
"""
import argparse
import os
import os.path as osp
import tempfile

import numpy as np
from PIL import Image

from profd_plugin.parsing import folder_jobs, get_backend, make_masks

SIZES = ((128, 64), (256, 128))  # (height, width): Market/Duke crops and ProFD's resized ones
#: person crops (rows, columns) of the two photographs
CROPS = {"astronaut": (slice(0, 512), slice(40, 420)), "camera": (slice(60, 512), slice(20, 330))}
SHIFT = 12  # pixels: random crop offset per image


def photos():
    import skimage.data

    return {"astronaut": skimage.data.astronaut(), "camera": np.stack([skimage.data.camera()] * 3, -1)}


def make_folder(folder: str, count: int, size, rng: np.random.Generator) -> None:
    """``count`` crops of ``size`` = (height, width) as JPEGs in ``folder``."""
    os.makedirs(folder, exist_ok=True)
    images = photos()
    for n in range(count):
        name = ("astronaut", "camera")[n % 2]
        rows, cols = CROPS[name]
        dy, dx = rng.integers(0, SHIFT, 2)
        crop = images[name][rows.start + dy:rows.stop, cols.start + dx:cols.stop - SHIFT + dx]
        crop = crop[:, ::-1] if rng.random() < 0.5 else crop
        crop = np.clip(crop * rng.uniform(0.7, 1.2), 0, 255).astype(np.uint8)
        Image.fromarray(np.ascontiguousarray(crop)).resize(size[::-1], Image.BILINEAR).save(
            osp.join(folder, f"{n:05d}.jpg"), quality=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="32 images per size")
    p.add_argument("--count", type=int, default=256, help="images per size")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    count = 32 if args.quick else args.count
    rng = np.random.default_rng(0)
    print(f"cpu cores: {os.cpu_count()}, images per size: {count}, backend: mediapipe")
    print(f"{'size':>9s} {'images/s':>9s} {'no person':>10s}")
    with get_backend("mediapipe") as backend, tempfile.TemporaryDirectory() as tmp:
        for height, width in SIZES:
            folder = osp.join(tmp, f"{height}x{width}")
            make_folder(folder, count, (height, width), rng)
            jobs = folder_jobs(folder, folder + "_masks")
            make_masks(jobs[:2], backend, progress=False)  # warm-up (model initialisation)
            summary = make_masks(jobs, backend, batch_size=args.batch_size, workers=args.workers,
                                 overwrite=True, progress=False)
            print(f"{height:4d}x{width:<4d} {summary.images_per_second:9.1f} {summary.no_person:10d}")


if __name__ == "__main__":
    main()
