"""Benchmark: faiss candidate search + exact re-scoring vs the exact visibility-aware top-k search.

A synthetic feature gallery of 100k images (K = 5 parts, D = 512, ProFD's sizes) and 1000 queries; the
exact search is ``metrics.search.exact_topk`` (blocked, running top-k: the whole gallery is scored), the
candidate search is ``CandidateIndex.topk`` (faiss HNSW on the global features proposes C candidates per
query, which are re-scored with the exact distance). Targets: recall@10 >= 0.99 against the exact top 10 at
>= 10x its speed, for the default C = ``inference.CANDIDATES_PER_RESULT`` x k. Both searches run in this
process, one after the other (the machine is shared: the 1-minute load average is printed).

Synthetic features (a stand-in for a trained model's; what the recall depends on is how well the global
feature predicts the visibility-aware distance): identities are clustered (``--clusters`` centres, each
identity a noisy copy of one), an image is a noisy copy of its identity (its "appearance" a), the global
feature is a + noise plus an occluder term that grows with the fraction of hidden parts, part k is a fixed
permutation of a + noise when visible and noise when hidden; visibility is 0 for hidden parts and uniform in
[0.2, 1] otherwise. Queries hide each part with probability 0.5, gallery images with 0.1 (occluded ReID).

    python benchmarks/bench_search.py            # full size, ~5-10 minutes on 2 shared cores
    python benchmarks/bench_search.py --quick    # 20k gallery x 200 queries smoke run
"""
import argparse
import json
import os
import statistics
import time
from types import SimpleNamespace

import torch

from profd_plugin.inference import CANDIDATES_PER_RESULT
from profd_plugin.metrics.search import HNSW_EF_CONSTRUCTION, HNSW_M, CandidateIndex, exact_topk

RECALL_TARGET, SPEED_TARGET = 0.99, 10.0
NUM_PARTS, DIM = 5, 512
QUERY_HIDDEN, GALLERY_HIDDEN = 0.5, 0.1  # probability that a part is occluded
ID_SPREAD, IMAGE_NOISE, GLOBAL_NOISE, PART_NOISE = 0.8, 0.6, 0.3, 0.5  # relative to unit-variance centres
MIN_VISIBILITY = 0.2
GEN_BLOCK = 10_000  # images generated at a time (bounds the temporaries)


def make_side(pids, proto, perms, hidden: float, gen: torch.Generator) -> SimpleNamespace:
    """Synthetic features of images of identities ``pids`` (see the module docstring)."""
    n = len(pids)
    glob, parts, vis = torch.empty(n, DIM), torch.empty(n, NUM_PARTS, DIM), torch.empty(n, NUM_PARTS)
    for s in range(0, n, GEN_BLOCK):
        rows = slice(s, s + GEN_BLOCK)
        a = proto[pids[rows]] + IMAGE_NOISE * torch.randn(len(pids[rows]), DIM, generator=gen)  # appearance
        scale = a.norm(dim=1, keepdim=True) / DIM ** 0.5  # (B, 1) per-dimension magnitude
        visible = torch.rand(a.shape[0], NUM_PARTS, generator=gen) >= hidden
        occluded = 1 - visible.float().mean(1, keepdim=True)
        glob[rows] = a + GLOBAL_NOISE * torch.randn(a.shape, generator=gen) \
            + occluded.sqrt() * scale * torch.randn(a.shape, generator=gen)
        for k, perm in enumerate(perms):
            noise = torch.randn(a.shape, generator=gen)
            parts[rows, k] = torch.where(visible[:, k:k + 1], a[:, perm] + PART_NOISE * noise, scale * noise)
        uniform = torch.rand(visible.shape, generator=gen)
        vis[rows] = visible * (MIN_VISIBILITY + (1 - MIN_VISIBILITY) * uniform)
    return SimpleNamespace(global_feat=glob, part_feats=parts, visibility=vis)


def make_data(args):
    gen = torch.Generator().manual_seed(args.seed)
    centres = torch.randn(args.clusters, DIM, generator=gen)
    proto = centres[torch.randint(args.clusters, (args.ids,), generator=gen)] \
        + ID_SPREAD * torch.randn(args.ids, DIM, generator=gen)
    perms = [torch.randperm(DIM, generator=gen) for _ in range(NUM_PARTS)]
    g_pids = torch.randint(args.ids, (args.num_gallery,), generator=gen)
    q_pids = g_pids[torch.randint(args.num_gallery, (args.num_query,), generator=gen)]  # ids in the gallery
    query = make_side(q_pids, proto, perms, QUERY_HIDDEN, gen)
    return query, make_side(g_pids, proto, perms, GALLERY_HIDDEN, gen)


def recall(found: torch.Tensor, exact: torch.Tensor) -> float:
    """Fraction of the exact top-k rows that the candidate search returned (per query, order ignored)."""
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, exact))
    return hits / exact.numel()


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-gallery", type=int, default=100_000)
    p.add_argument("--num-query", type=int, default=1000)
    p.add_argument("--ids", type=int, default=25_000, help="identities (about 4 gallery images each)")
    p.add_argument("--clusters", type=int, default=1000, help="identity clusters (look-alike groups)")
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--candidates", default="20,30,50,100", help="C values to sweep (the default C is added)")
    p.add_argument("--efforts", default="0", help="search breadths to sweep (HNSW efSearch, at least C; "
                   "0 = C, the default)")
    p.add_argument("--kind", default="hnsw", choices=("hnsw", "ivf", "flat"))
    p.add_argument("--hnsw-m", type=int, default=HNSW_M, help="HNSW graph degree")
    p.add_argument("--ef-construction", type=int, default=HNSW_EF_CONSTRUCTION, help="HNSW build beam")
    p.add_argument("--repeats", type=int, default=3, help="candidate-search repeats (median)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="20k gallery x 200 queries")
    args = p.parse_args()
    if args.quick:
        args.num_gallery, args.num_query, args.ids, args.clusters = 20_000, 200, 5000, 200
    return args


def main() -> None:
    args = parse_args()
    print(f"gallery {args.num_gallery} x query {args.num_query}, K={NUM_PARTS}, D={DIM}, top-{args.topk}, "
          f"index {args.kind}, torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}")
    t0 = time.perf_counter()
    query, gallery = make_data(args)
    print(f"synthetic features: {time.perf_counter() - t0:.1f} s")
    exact_before, exact = timed(lambda: exact_topk(query, gallery, args.topk), 1)
    print(f"exact top-{args.topk}: {exact_before:.2f} s ({args.num_query / exact_before:.0f} queries/s)")
    t0 = time.perf_counter()
    index = CandidateIndex(gallery, kind=args.kind, hnsw_m=args.hnsw_m, ef_construction=args.ef_construction)
    print(f"index build ({args.kind}, once per gallery; includes embedding the gallery): "
          f"{time.perf_counter() - t0:.1f} s")
    default_c = CANDIDATES_PER_RESULT * args.topk
    sweep = sorted({int(c) for c in args.candidates.split(",")} | {default_c})
    efforts = sorted({int(e) for e in args.efforts.split(",")} | {0})
    rows = []
    for c in sweep:
        for effort in [e for e in efforts if e == 0 or e > c]:  # the breadth is at least C
            secs, found = timed(lambda: index.topk(query, args.topk, candidates=c, effort=effort or None),
                                args.repeats)
            rows.append({"candidates": c, "effort": max(effort, c), "seconds": secs,
                         "recall": recall(found.indices, exact.indices)})
            print(f"C={c}, breadth {max(effort, c)}: {secs:.3f} s", flush=True)
    # the machine is shared: time the exact search again and take the faster of the two (a conservative ratio)
    exact_after, _ = timed(lambda: exact_topk(query, gallery, args.topk), 1)
    exact_s = min(exact_before, exact_after)
    print(f"exact top-{args.topk} again: {exact_after:.2f} s; the speed-ups use the faster, {exact_s:.2f} s")
    print(f"| C | search breadth | time [s] | speed-up | recall@{args.topk} |\n|---:|---:|---:|---:|---:|")
    for row in rows:
        row["speedup"] = exact_s / row["seconds"]
        mark = " (default)" if row["candidates"] == default_c and row["effort"] == default_c else ""
        print(f"| {row['candidates']}{mark} | {row['effort']} | {row['seconds']:.3f} | "
              f"{row['speedup']:.1f}x | {row['recall']:.4f} |")
    best = next(r for r in rows if r["candidates"] == default_c and r["effort"] == default_c)
    ok = best["recall"] >= RECALL_TARGET and best["speedup"] >= SPEED_TARGET
    print(f"default C={default_c}: recall@{args.topk} {best['recall']:.4f} (target >= {RECALL_TARGET}), "
          f"speed-up {best['speedup']:.1f}x (target >= {SPEED_TARGET:.0f}x): {'PASS' if ok else 'MISS'}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print(json.dumps({"exact_seconds": [exact_before, exact_after], "rows": rows, "pass": ok}))


if __name__ == "__main__":
    main()
