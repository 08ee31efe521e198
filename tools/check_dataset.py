"""Check a dataset folder: ids and images per split, and train images without a usable mask.

Usage::

    python tools/check_dataset.py --root reid-data --dataset occluded_duke [--json]
    python tools/check_dataset.py --root reid-data --dataset synthetic_occluded profd.synthetic.num_ids 20

Trailing ``key value`` config overrides (and ``--config-file``) supply ``profd.masks.*`` defaults and the
``profd.synthetic.*`` generator parameters, as in training.

Exit code 1 when the dataset is unusable (missing folder, empty split), 0 otherwise. With ``--json``
the last stdout line is one JSON object with the keys ``dataset, train_ids, train_images, query_ids,
query_images, gallery_ids, gallery_images, images_without_mask``.
"""

from __future__ import annotations

import argparse
import json
import os.path as osp
import sys
from typing import List, Optional, Tuple

import profd_plugin  # noqa: F401  (silences torchreid's import warning, registers the datasets)
from profd_plugin.config import ConfigKeyError, setup_cfg
from profd_plugin.data.datamanager import dataset_kwargs_from_cfg
from profd_plugin.data.datasets import DatasetError
from profd_plugin.data.masks import load_part_masks


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True, help="folder holding the dataset folders (data.root)")
    p.add_argument("--dataset", required=True, help="registered dataset name, e.g. occluded_duke")
    p.add_argument("--masks-dir", default="", help="masks sub-folder (default: profd.masks.dir)")
    p.add_argument(
        "--grouping", default="", help="part grouping to validate masks with (default: profd.masks.grouping)"
    )
    p.add_argument("--quick", action="store_true", help="only check that mask files exist (do not load them)")
    p.add_argument("--show", type=int, default=5, help="how many images without a usable mask to list")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    p.add_argument("--config-file", default="", help="YAML config (profd.masks.*, profd.synthetic.*)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: key value ...")
    return p.parse_args(argv)


def unusable_masks(ds, grouping: str, quick: bool) -> List[Tuple[str, str, str]]:
    """``(image, mask, reason)`` for every train image whose mask is missing or malformed."""
    bad = []
    for img_path, *_ in ds.train:
        path = ds.mask_path(img_path)
        if not osp.isfile(path):
            bad.append((img_path, path, "missing"))
            continue
        if not quick:
            try:
                load_part_masks(path, grouping)
            except ValueError as e:
                bad.append((img_path, path, str(e).replace(f"malformed mask {path}: ", "malformed: ")))
    return bad


def main(argv: Optional[List[str]] = None) -> int:
    from torchreid.reid.data.datasets import init_image_dataset  # after profd_plugin: no import warning

    args = parse_args(argv)
    try:
        cfg = setup_cfg(args.config_file or None, args.opts)
        masks_dir, grouping = args.masks_dir or cfg.profd.masks.dir, args.grouping or cfg.profd.masks.grouping
        kwargs = dataset_kwargs_from_cfg(cfg).get(args.dataset, {})
        ds = init_image_dataset(args.dataset, root=args.root, masks_dir=masks_dir, verbose=False, **kwargs)
    except (DatasetError, ConfigKeyError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    test_only = getattr(ds, "test_only", False)
    splits = {"train": [] if test_only else ds.train, "query": ds.query, "gallery": ds.gallery}
    summary = {"dataset": args.dataset}
    print(
        f"dataset {args.dataset} at {getattr(ds, 'dataset_dir', args.root)}"
        + (" (test only)" if test_only else "")
    )
    print(f"{'split':8s} {'ids':>6s} {'images':>7s}")
    for split, items in splits.items():
        summary[f"{split}_ids"], summary[f"{split}_images"] = len({it[1] for it in items}), len(items)
        print(f"{split:8s} {summary[f'{split}_ids']:6d} {summary[f'{split}_images']:7d}")
    bad = [] if test_only or not hasattr(ds, "mask_path") else unusable_masks(ds, grouping, args.quick)
    summary["images_without_mask"] = len(bad) if hasattr(ds, "mask_path") else None
    print(f"train images without a usable mask: {summary['images_without_mask']}")
    for img, mask, reason in bad[: args.show]:
        print(f"  {img} -> {mask} ({reason})")
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
