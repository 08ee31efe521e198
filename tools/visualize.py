#!/usr/bin/env python
"""Pictures of a trained ProFD (PNG): ranked lists and part attention maps.

Usage::

    # ranked lists: the first 10 queries of a dataset split and their top 10 gallery images
    python tools/visualize.py ranks --checkpoint CKPT --output vis [--root R --dataset NAME | --config-file C]
    python tools/visualize.py ranks --checkpoint CKPT --output vis --query DIR --gallery DIR   # unlabelled
    # part attention (SPA and alignment map per part, as the paper's Fig. 5)
    python tools/visualize.py attention --checkpoint CKPT --output vis [--root R --dataset NAME] [--split S]
    python tools/visualize.py attention --checkpoint CKPT --output vis --images DIR

``CKPT`` is a checkpoint file, a run folder or a ``data.save_dir`` (its newest checkpoint). Without
``--root/--dataset`` the data come from ``--config-file``, else from the checkpoint's own config
(``data.root`` and the first of ``data.targets``). PNGs go to ``<output>/ranks/`` or ``<output>/attention/``,
one per query / image, named ``<index>_<file stem>.png``; layouts and sizes: docs/INFERENCE.md.

Bad input stops with one line ``error: ...`` and exit code 1 (missing checkpoint, dataset or folder, an
empty folder, an unreadable image in a dataset split); an unreadable image in a folder is reported on
stderr and skipped.
"""
import argparse
import os
import os.path as osp
import sys
from typing import List, Optional, Tuple

import profd_plugin  # noqa: F401  (registers the datasets, silences torchreid's import warning)
from profd_plugin.errors import ProFDError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="picture", required=True)
    for name, what in (("ranks", "ranked lists"), ("attention", "part attention maps")):
        p = sub.add_parser(name, help=what)
        p.add_argument("--checkpoint", required=True, help="checkpoint file, run folder or data.save_dir")
        p.add_argument("--output", required=True, help="output folder")
        p.add_argument("--config-file", default="", help="YAML config giving data.root and data.targets")
        p.add_argument("--root", default="", help="data root (default: from the config or checkpoint)")
        p.add_argument("--dataset", default="", help="dataset name (default: first of data.targets)")
        p.add_argument("--device", default="auto", help="auto | cpu | cuda")
        p.add_argument("--batch-size", type=int, default=64)
    ranks, attention = sub.choices["ranks"], sub.choices["attention"]
    ranks.add_argument("--query", default="", help="folder of query images (with --gallery; unlabelled)")
    ranks.add_argument("--gallery", default="", help="folder of gallery images")
    ranks.add_argument("--topk", type=int, default=10, help="gallery images per query")
    ranks.add_argument("--num-queries", type=int, default=10, help="queries drawn (0 = all)")
    attention.add_argument("--images", default="", help="folder of images")
    attention.add_argument("--split", default="query", choices=("query", "gallery"))
    attention.add_argument("--num-images", type=int, default=8, help="images drawn (0 = all)")
    return parser.parse_args(argv)


def folder_images(folder: str) -> List[str]:
    """The readable images of a folder (sorted); unreadable ones are reported on stderr and skipped.

    Raises:
        DatasetError: a missing folder, or one without a readable image.
    """
    from profd_plugin.data.datamanager import read_image
    from profd_plugin.errors import DatasetError

    if not osp.isdir(folder):
        raise DatasetError(f"image folder not found: {osp.abspath(folder)}")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    readable = []
    for name in names:
        path = osp.join(folder, name)
        try:
            read_image(path)
            readable.append(path)
        except DatasetError as err:
            print(f"warning: skipping {err}", file=sys.stderr)
    if not readable:
        raise DatasetError(f"no readable image ({', '.join(IMAGE_EXTENSIONS)}) in {osp.abspath(folder)}")
    return readable


def dataset_split(args: argparse.Namespace, ckpt_cfg) -> Tuple[list, list]:
    """(query items, gallery items) ``(path, pid, camid, ...)`` of the chosen dataset."""
    from torchreid.reid.data.datasets import init_image_dataset

    from profd_plugin.config import setup_cfg
    from profd_plugin.data.datamanager import dataset_kwargs_from_cfg
    from profd_plugin.errors import DatasetError

    cfg = setup_cfg(args.config_file, []) if args.config_file else ckpt_cfg
    root, name = args.root or cfg.data.root, args.dataset or cfg.data.targets[0]
    try:
        ds = init_image_dataset(name, root=root, masks_dir=cfg.profd.masks.dir, verbose=False,
                                **dataset_kwargs_from_cfg(cfg).get(name, {}))
    except ValueError as err:  # unknown dataset name: torchreid lists the valid ones
        raise DatasetError(str(err)) from None
    if not ds.query or not ds.gallery:
        raise DatasetError(f"dataset {name} at {root} has an empty query or gallery split")
    return list(ds.query), list(ds.gallery)


def _first(items: list, count: int) -> list:
    return items if count <= 0 else items[:count]


def draw_ranks(args: argparse.Namespace, extractor) -> List[str]:
    from profd_plugin.visualize import save_ranked_lists

    if bool(args.query) != bool(args.gallery):
        raise ProFDError("--query and --gallery go together (two image folders)")
    if args.query:
        query, gallery = folder_images(args.query), folder_images(args.gallery)
        q_inputs, g_inputs = query, gallery
    else:
        query, gallery = dataset_split(args, extractor.cfg)
        q_inputs, g_inputs = [it[0] for it in query], [it[0] for it in gallery]
    query, q_inputs = _first(query, args.num_queries), _first(q_inputs, args.num_queries)
    q_feats = extractor.extract(q_inputs, batch_size=args.batch_size)
    g_feats = extractor.extract(g_inputs, batch_size=args.batch_size)
    distmat = extractor.distance(q_feats, g_feats)
    return save_ranked_lists(osp.join(args.output, "ranks"), query, gallery, distmat, q_feats, g_feats,
                             topk=args.topk, part_names=extractor.part_names, metric=extractor.metric)


def draw_attention(args: argparse.Namespace, extractor) -> List[str]:
    from profd_plugin.visualize import save_part_attention

    if args.images:
        images = folder_images(args.images)
    else:
        query, gallery = dataset_split(args, extractor.cfg)
        images = [it[0] for it in (query if args.split == "query" else gallery)]
    images = _first(images, args.num_images)
    feats = extractor.extract(images, batch_size=args.batch_size, attention=True)
    out_dir = osp.join(args.output, "attention")
    return save_part_attention(out_dir, images, feats, part_names=extractor.part_names)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from profd_plugin import ProFDExtractor

    try:
        extractor = ProFDExtractor.from_checkpoint(args.checkpoint, device=args.device)
        paths = (draw_ranks if args.picture == "ranks" else draw_attention)(args, extractor)
    except (ProFDError, FileNotFoundError, ValueError, KeyError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"error: {' '.join(str(msg).split())}", file=sys.stderr)
        return 1
    print(f"wrote {len(paths)} PNG(s) to {osp.dirname(paths[0]) if paths else args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
