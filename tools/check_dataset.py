"""Check a dataset folder, read-only: ids and images per split, unreadable images, unusable train masks.

Usage::

    python tools/check_dataset.py --root reid-data --dataset occluded_duke [--json] [--quick]
    python tools/check_dataset.py --root reid-data --dataset synthetic_occluded
    python tools/check_dataset.py --root reid-data --dataset synthetic_occluded --generate \
        profd.synthetic.num_ids 20

The tool never writes: ``synthetic_occluded`` is checked as it is on disk (whatever parameters made it);
``--generate`` (re)generates it first with the ``profd.synthetic.*`` parameters, as training would.
The counts are compared with the published ones (``profd_plugin.reproduction``, docs/REPRODUCE.md); a
mismatch is printed with its likely cause (it does not change the exit code). Every image is decoded
(truncated or unreadable files are found) and every train mask is loaded and validated;
``--quick`` only checks that the files exist. Trailing ``key value`` config overrides (and ``--config-file``)
supply ``profd.masks.*`` and ``profd.synthetic.*``.

Exit code 0: no problem found. 1: problems found (unreadable images, missing or malformed train masks;
each listed, the count printed), or the dataset is unusable (missing folder, empty split: one ``error:``
line). 2: a bad option or config value (one ``error:`` line). With ``--json`` the last stdout line is
one JSON object: ``dataset, train_ids, train_images, query_ids, query_images, gallery_ids,
gallery_images, unreadable_images, images_without_mask`` (``images_without_mask`` is null when no
train mask was checked: test-only datasets, datasets without masks).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional, Tuple

import profd_plugin  # noqa: F401  (registers the datasets with torchreid once it is imported)
from profd_plugin.config import setup_cfg
from profd_plugin.errors import ConfigError, ProFDError

EXIT_PROBLEMS = 1


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True, help="folder holding the dataset folders (data.root)")
    p.add_argument("--dataset", required=True, help="registered dataset name, e.g. occluded_duke")
    p.add_argument("--masks-dir", default="", help="masks sub-folder (default: profd.masks.dir)")
    p.add_argument(
        "--grouping", default="", help="part grouping to validate masks with (default: profd.masks.grouping)"
    )
    p.add_argument("--quick", action="store_true", help="only check that files exist (do not decode them)")
    p.add_argument("--show", type=int, default=5, help="how many problems of each kind to list")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    p.add_argument("--generate", action="store_true",
                   help="synthetic_occluded: (re)generate it with profd.synthetic.* first (writes files)")
    p.add_argument("--config-file", default="", help="YAML config (profd.masks.*, profd.synthetic.*)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: key value ...")
    return p.parse_args(argv)


def unreadable_images(items, decode: bool) -> List[Tuple[str, str]]:
    """``(image, reason)`` for every image of ``items`` that is missing or cannot be decoded."""
    import os.path as osp

    from PIL import Image

    problems = []
    for path in dict.fromkeys(item[0] for item in items):  # each file once, in order
        if not osp.isfile(path):
            problems.append((path, "missing"))
            continue
        if decode:
            try:
                with Image.open(path) as im:
                    im.load()  # decodes every pixel: a truncated file raises here
            except Exception as e:  # noqa: BLE001 - any decoding failure is a problem with that file
                problems.append((path, f"{type(e).__name__}: {e}"))
    return problems


def _dataset(args: argparse.Namespace, cfg):
    from torchreid.reid.data.datasets import init_image_dataset

    from profd_plugin.data.datamanager import dataset_kwargs_from_cfg
    from profd_plugin.data.datasets import SyntheticOccluded

    kwargs = dataset_kwargs_from_cfg(cfg).get(args.dataset, {})
    if args.dataset == SyntheticOccluded.name:
        kwargs = dict(kwargs, generate=args.generate)
    elif args.generate:
        raise ConfigError(f"--generate applies to {SyntheticOccluded.name} only, not {args.dataset}")
    masks_dir = args.masks_dir or cfg.profd.masks.dir
    try:
        return init_image_dataset(args.dataset, root=args.root, masks_dir=masks_dir, verbose=False, **kwargs)
    except (KeyError, ValueError) as e:  # torchreid: unknown dataset name (its message lists the valid ones)
        raise ConfigError(str(e.args[0]) if e.args else str(e)) from None


def _report(title: str, problems: list, show: int) -> None:
    print(f"{title}: {len(problems)}")
    for problem in problems[:show]:
        print("  " + " -> ".join(problem[:-1]) + f" ({problem[-1]})")
    if len(problems) > show:
        print(f"  ... and {len(problems) - show} more")


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        cfg = setup_cfg(args.config_file or None, args.opts)
        grouping = args.grouping or cfg.profd.masks.grouping
        from profd_plugin.data.parts import part_names

        try:
            part_names(grouping)
        except KeyError as e:  # unknown grouping: the message lists the valid ones
            raise ConfigError(e.args[0]) from None
        ds = _dataset(args, cfg)
    except ProFDError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    from profd_plugin.data.datasets import split_counts
    from profd_plugin.reproduction import PUBLISHED_COUNTS, count_warnings, reads_resize_copy

    test_only = getattr(ds, "test_only", False)
    summary = {"dataset": args.dataset}
    where = getattr(ds, "dataset_dir", args.root)
    print(f"dataset {args.dataset} at {where}" + (" (test only)" if test_only else ""))
    print(f"{'split':8s} {'ids':>6s} {'images':>7s}")
    counts = split_counts(ds)
    for split, (ids, images) in counts.items():
        summary[f"{split}_ids"], summary[f"{split}_images"] = ids, images
        print(f"{split:8s} {ids:6d} {images:7d}")
    published = count_warnings(args.dataset, counts, resize_used=reads_resize_copy(ds))
    known = args.dataset in PUBLISHED_COUNTS
    print("published counts (docs/REPRODUCE.md): " + (published[0] if published else "as published" if known
                                                      else "none for this dataset"))
    items = ds.query + ds.gallery + ([] if test_only else ds.train)  # a test-only train list is a dummy
    bad_images = unreadable_images(items, decode=not args.quick)
    summary["unreadable_images"] = len(bad_images)
    _report("unreadable images", bad_images, args.show)
    checked = hasattr(ds, "train_mask_problems") and not test_only
    bad_masks = ds.train_mask_problems(grouping, load=not args.quick) if checked else []
    summary["images_without_mask"] = len(bad_masks) if checked else None
    if checked:
        _report("train images without a usable mask", bad_masks, args.show)
    else:
        why_not = "test-only dataset" if test_only else "no masks"
        print(f"train images without a usable mask: not checked ({why_not})")
    if args.json:
        print(json.dumps(summary))
    return EXIT_PROBLEMS if bad_images or bad_masks else 0


if __name__ == "__main__":
    sys.exit(main())
