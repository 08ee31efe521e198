"""Benchmark: profd_plugin.metrics.evaluate_rank vs torchreid's Python evaluate_rank.

Occluded-Duke scale by default (2210 query x 17661 gallery, 700 ids, 8 cameras) on a structured random
float32 distance matrix: N(0, 1), with every (query, gallery) pair of the same identity shifted by -3
(R1 ~ 0.94, mAP ~ 0.42). Both evaluators run in this process on the same matrix; the table reports their
times, the speed ratio, the peak extra resident memory of each call and the largest CMC / mAP difference.

    python benchmarks/bench_evaluator.py            # full size (torchreid takes ~100 s on 2 cores)
    python benchmarks/bench_evaluator.py --quick    # smoke run, a few seconds
"""
import argparse
import json
import os
import statistics
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore", message="Cython evaluation")


# evaluate_py is what torchreid's evaluate_rank(..., use_cython=False) runs (the Cython path is not built
# in the PyPI wheel); `import profd_plugin` leaves it alone.
from torchreid.reid.metrics.rank import evaluate_py as torchreid_evaluate_py  # noqa: E402

from profd_plugin.benchmark.measure import status_kib  # noqa: E402
from profd_plugin.metrics import evaluate_rank  # noqa: E402

SPEED_TARGET = 20.0  # ours must be at least this many times faster


def measure(fn, *args):
    """Runs fn(*args); returns (result, seconds, peak extra RSS in MiB above the RSS at the start)."""
    try:  # "5" resets the peak-RSS counter VmHWM (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    rss0 = status_kib("VmRSS")
    start = time.perf_counter()
    result = fn(*args)
    seconds = time.perf_counter() - start
    return result, seconds, (status_kib("VmHWM") - rss0) / 1024


def make_problem(num_q: int, num_g: int, num_ids: int, num_cams: int, seed: int):
    rng = np.random.default_rng(seed)
    q_pids, g_pids = rng.integers(1, num_ids + 1, num_q), rng.integers(1, num_ids + 1, num_g)
    q_cams, g_cams = rng.integers(0, num_cams, num_q), rng.integers(0, num_cams, num_g)
    dist = rng.standard_normal((num_q, num_g), dtype=np.float32)
    dist[q_pids[:, None] == g_pids[None, :]] -= 3.0
    return dist, q_pids, g_pids, q_cams, g_cams


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="500 x 4000, 200 ids: a smoke run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of our evaluator (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="", help="also write the figures to this JSON file")
    args = parser.parse_args()
    num_q, num_g, num_ids, num_cams = (500, 4000, 200, 8) if args.quick else (2210, 17661, 700, 8)
    problem = make_problem(num_q, num_g, num_ids, num_cams, args.seed)
    print(f"distmat {num_q} x {num_g} float32, {num_ids} ids, {num_cams} cameras, seed {args.seed}, "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")

    ours_runs = [measure(evaluate_rank, *problem) for _ in range(args.repeats)]
    (cmc, mAP), _, _ = ours_runs[0]
    t_ours = statistics.median(r[1] for r in ours_runs)
    mem_ours = max(r[2] for r in ours_runs)
    (ref_cmc, ref_map), t_ref, mem_ref = measure(
        lambda *a: torchreid_evaluate_py(*a, max_rank=50, use_metric_cuhk03=False), *problem
    )

    cmc_diff = float(np.abs(cmc - ref_cmc).max())
    map_diff = abs(mAP - float(ref_map))
    speedup = t_ref / t_ours
    print(f"\n{'evaluator':<34}{'time [s]':>10}{'peak extra RSS [MiB]':>22}{'R1':>9}{'mAP':>10}")
    for name, t, mem, r1, m in (("torchreid evaluate_rank (python)", t_ref, mem_ref, ref_cmc[0], ref_map),
                                ("profd_plugin evaluate_rank", t_ours, mem_ours, cmc[0], mAP)):
        print(f"{name:<34}{t:>10.2f}{mem:>22.0f}{r1:>9.4f}{m:>10.5f}")
    print(f"  (ours: median of {args.repeats}; runs {', '.join(f'{r[1]:.2f}' for r in ours_runs)} s)")
    print("  (torchreid runs second in the same process: its peak RSS is a lower bound, as it reuses pages"
          " freed by ours)")
    print(f"\nspeed ratio torchreid / ours: {speedup:.1f}x  (target >= {SPEED_TARGET:.0f}x): "
          f"{'PASS' if speedup >= SPEED_TARGET else 'MISS'}")
    identical = cmc_diff == 0.0 and map_diff == 0.0
    print(f"max |CMC diff| = {cmc_diff:.3g}, |mAP diff| = {map_diff:.3g}  (target identical): "
          f"{'PASS' if identical else 'MISS'}")
    if args.json:
        figures = dict(num_q=num_q, num_g=num_g, torchreid_s=t_ref, ours_s=t_ours, speedup=speedup,
                       speed_target=SPEED_TARGET, max_cmc_diff=cmc_diff, map_diff=map_diff,
                       identical=identical,
                       ours_peak_extra_mib=mem_ours, torchreid_peak_extra_mib=mem_ref)
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
