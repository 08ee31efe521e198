"""Check a dataset folder: ids and images per split, and train images without a usable mask.

Usage::

    python tools/check_dataset.py --root reid-data --dataset occluded_duke [--json]
    python tools/check_dataset.py --root reid-data --dataset synthetic_occluded profd.synthetic.num_ids 20

Trailing ``key value`` config overrides (and ``--config-file``) supply ``profd.masks.*`` defaults and the
``profd.synthetic.*`` generator parameters, as in training.

Exit code 1 (with a one-line ``error: ...`` on stderr) when the dataset is unusable (missing folder,
empty split) or an option or config value is bad (e.g. an unknown ``--grouping``), 0 otherwise. With
``--json`` the last stdout line is one JSON object with the keys ``dataset, train_ids, train_images,
query_ids, query_images, gallery_ids, gallery_images, images_without_mask``; ``images_without_mask`` is
null when no train mask was checked (test-only datasets, datasets without masks).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

import profd_plugin  # noqa: F401  (silences torchreid's import warning, registers the datasets)
from profd_plugin.config import ConfigKeyError, setup_cfg
from profd_plugin.data.datamanager import dataset_kwargs_from_cfg
from profd_plugin.data.datasets import DatasetError, split_counts
from profd_plugin.data.masks import part_names
from profd_plugin.reproduction import PUBLISHED_COUNTS, count_warnings, reads_resize_copy


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


def main(argv: Optional[List[str]] = None) -> int:
    from torchreid.reid.data.datasets import init_image_dataset  # after profd_plugin: no import warning

    args = parse_args(argv)
    try:
        cfg = setup_cfg(args.config_file or None, args.opts)
        masks_dir, grouping = args.masks_dir or cfg.profd.masks.dir, args.grouping or cfg.profd.masks.grouping
        try:
            part_names(grouping)
        except KeyError as e:  # unknown grouping: the message lists the valid ones
            raise ValueError(e.args[0]) from None
        kwargs = dataset_kwargs_from_cfg(cfg).get(args.dataset, {})
        ds = init_image_dataset(args.dataset, root=args.root, masks_dir=masks_dir, verbose=False, **kwargs)
    except (DatasetError, ConfigKeyError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    test_only = getattr(ds, "test_only", False)
    summary = {"dataset": args.dataset}
    print(
        f"dataset {args.dataset} at {getattr(ds, 'dataset_dir', args.root)}"
        + (" (test only)" if test_only else "")
    )
    print(f"{'split':8s} {'ids':>6s} {'images':>7s}")
    counts = split_counts(ds)
    for split, (ids, images) in counts.items():
        summary[f"{split}_ids"], summary[f"{split}_images"] = ids, images
        print(f"{split:8s} {ids:6d} {images:7d}")
    published = count_warnings(args.dataset, counts, resize_used=reads_resize_copy(ds))
    known = args.dataset in PUBLISHED_COUNTS
    print("published counts (docs/REPRODUCE.md): " + (published[0] if published else "as published" if known
                                                      else "none for this dataset"))
    checked = hasattr(ds, "train_mask_problems") and not test_only
    bad = ds.train_mask_problems(grouping, load=not args.quick) if checked else []
    summary["images_without_mask"] = len(bad) if checked else None
    why_not = "test-only dataset" if test_only else "no masks"
    print(f"train images without a usable mask: {len(bad) if checked else f'not checked ({why_not})'}")
    for img, mask, why in bad[: args.show]:
        print(f"  {img} -> {mask} ({why})")
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
