"""Benchmark: CPU cost of one train item of the main job, with and without ``data.cache_train``.

A train item is read (JPEG decode, mask ``.npy`` load, 36 -> K grouping) and augmented (resize, flip,
pad + crop, erase, patch targets). ``data.cache_train`` does the read half once, when the data manager is
built, so later epochs pay for the augmentation only. Measured on a generated synthetic set with the main
job's image size and augmentation (``configs/profd_synthetic.yaml``), in the main process
(``data.workers 0``, as the main job), as CPU seconds of this process per item (wall clock on a shared
machine is noisier), median of ``--rounds`` passes over the whole train set. Both sets of items are checked
to be bit-identical.

    python benchmarks/bench_data.py            # ~1 minute (generates a small synthetic set once)
    python benchmarks/bench_data.py --quick    # smoke run

Target: the cache at least halves the per-item cost (ratio >= 2).
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import List, Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout without installing

from profd_plugin.config import setup_cfg  # noqa: E402
from profd_plugin.data.datamanager import ProFDDataManager  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "profd_synthetic.yaml")
TARGET = 2.0


def _per_item_cpu_s(dataset, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.process_time()
        for index in range(len(dataset)):
            dataset[index]
        times.append((time.process_time() - start) / len(dataset))
    return statistics.median(times)


def run(num_ids: int, rounds: int, root: str) -> dict:
    cfg = setup_cfg(CONFIG, ["data.root", root, "profd.synthetic.num_ids", str(num_ids)])
    ProFDDataManager.from_cfg(cfg, with_masks=True)  # generates the set, so the timed builds only read it
    sets = {}
    for cache in (False, True):
        cfg.defrost()
        cfg.data.cache_train = cache
        start = time.perf_counter()
        sets[cache] = ProFDDataManager.from_cfg(cfg, with_masks=True).train_loader.dataset
        sets[f"build_{cache}"] = time.perf_counter() - start
    plain, cached = sets[False], sets[True]
    torch.manual_seed(0)
    a = [plain[i] for i in range(len(plain))]
    torch.manual_seed(0)
    b = [cached[i] for i in range(len(cached))]
    identical = all(x[k].equal(y[k]) for x, y in zip(a, b) for k in ("img", "masks", "visibility"))
    plain_s, cached_s = _per_item_cpu_s(plain, rounds), _per_item_cpu_s(cached, rounds)
    return {"items": len(plain), "threads": torch.get_num_threads(), "plain_ms": 1e3 * plain_s,
            "cached_ms": 1e3 * cached_s, "ratio": plain_s / cached_s, "identical": identical,
            "cache_build_s": sets["build_True"] - sets["build_False"]}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 8 identities, 1 round")
    p.add_argument("--rounds", type=int, default=None, help="passes over the train set (default 3)")
    p.add_argument("--root", default="", help="data root (default: a temporary folder)")
    args = p.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    with tempfile.TemporaryDirectory() as tmp:
        r = run(8 if args.quick else 40, rounds, args.root or tmp)
    print(f"{r['items']} train items of configs/profd_synthetic.yaml, {r['threads']} torch threads, "
          f"CPU per item (median of {rounds})")
    print(f"  without cache: {r['plain_ms']:.2f} ms")
    print(f"  with cache:    {r['cached_ms']:.2f} ms   (building the cache: {r['cache_build_s']:.1f} s)")
    verdict = "PASS" if r["ratio"] >= TARGET and r["identical"] else "FAIL"
    print(f"  ratio {r['ratio']:.2f}x (target >= {TARGET:.0f}x), items identical: {r['identical']}  "
          f"{verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
