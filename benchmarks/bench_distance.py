"""Benchmark: visibility_aware_distance vs ONE torch.cdist over the concatenated features.

Occluded-Duke scale by default: 2210 query x 17661 gallery images, K = 5 parts, D = 512. The reference
is a plain ``torch.cdist`` between the (N, 6*512) concatenations of global + part features: the same
number of multiply-adds as the K+1 per-feature matmuls of the visibility-aware distance. Inputs are
random normal features and random binary visibility (70 % visible). The time of ours includes the L2
normalisation of the features.

Each method runs in a fresh subprocess, so that its peak memory is its own: on CPU the increase of the
resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs) over the RSS after the inputs
were built; on CUDA ``torch.cuda.max_memory_allocated`` minus the allocation before the call.

    python benchmarks/bench_distance.py                 # full size, CPU
    python benchmarks/bench_distance.py --quick         # smoke run
    python benchmarks/bench_distance.py --device cuda   # GPU box
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from profd_plugin.benchmark.measure import status_kib
from profd_plugin.metrics import visibility_aware_distance

TIME_TARGET = 1.5  # ours / cdist
MEMORY_TARGET_MIB = 2048  # peak extra memory of ours
NUM_PARTS, DIM, VISIBLE_FRACTION = 5, 512, 0.7


def _make_inputs(num_q: int, num_g: int, device: torch.device, seed: int):
    gen = torch.Generator().manual_seed(seed)
    sides = []
    for n in (num_q, num_g):
        glob, parts = torch.randn(n, DIM, generator=gen), torch.randn(n, NUM_PARTS, DIM, generator=gen)
        vis = (torch.rand(n, NUM_PARTS, generator=gen) < VISIBLE_FRACTION).float()
        sides.append(tuple(t.to(device) for t in (glob, parts, vis)))
    return sides


def worker(args) -> None:
    """Runs one method `repeats` times in this (fresh) process; prints a JSON line with times and memory."""
    device = torch.device(args.device)
    (qg, qp, qv), (gg, gp, gv) = _make_inputs(args.num_q, args.num_g, device, args.seed)
    if args.worker == "cdist":
        xq, xg = torch.cat([qg, qp.flatten(1)], 1), torch.cat([gg, gp.flatten(1)], 1)  # (N, 6*512)
        del qg, qp, gg, gp

        def run():
            return torch.cdist(xq, xg)
    else:
        def run():
            return visibility_aware_distance(qg, qp, qv, gg, gp, gv, chunk_size=args.chunk_size)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        run()  # CUDA context / cuBLAS warm-up, not timed
        sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM
        base = status_kib("VmRSS") * 1024
    times, cpu_times = [], []
    for _ in range(args.repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        out = run()
        sync()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        del out
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else status_kib("VmHWM") * 1024
    print(json.dumps({"times": times, "cpu_times": cpu_times, "peak_extra_mib": (peak - base) / 2**20}))


def spawn(method: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--device", args.device,
           "--repeats", str(args.repeats), "--seed", str(args.seed), "--chunk-size", str(args.chunk_size),
           "--num-q", str(args.num_q), "--num-g", str(args.num_g)] + (
               ["--threads", str(args.threads)] if args.threads else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (500 x 4000) for a smoke run")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per method and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of one subprocess per method")
    parser.add_argument("--chunk-size", type=int, default=512, help="gallery chunk of ours (its default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-q", type=int, default=None)
    parser.add_argument("--num-g", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", default="", help="also write the summary to this JSON file")
    parser.add_argument("--worker", choices=["cdist", "profd"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.num_q is None or args.num_g is None:
        args.num_q, args.num_g = (500, 4000) if args.quick else (2210, 17661)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        return worker(args)

    print(f"{args.num_q} x {args.num_g}, K={NUM_PARTS}, D={DIM}, device {args.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, chunk {args.chunk_size}, "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    results = {"cdist": [], "profd": []}
    for _ in range(args.rounds):  # alternate the methods so that load changes on a shared box hit both
        for method in results:
            results[method].append(spawn(method, args))
    summary = report(results)
    if args.json:
        summary.update(num_q=args.num_q, num_g=args.num_g, device=args.device, chunk_size=args.chunk_size)
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


def report(results: dict) -> dict:
    """Prints the table, the paired per-round ratios and the PASS/MISS verdicts; returns the figures."""
    summary = {}
    for method, runs in results.items():
        times = [t for r in runs for t in r["times"]]
        cpu = [t for r in runs for t in r["cpu_times"]]
        summary[method] = dict(median=statistics.median(times), min=min(times), cpu=statistics.median(cpu),
                               mem=max(r["peak_extra_mib"] for r in runs), times=times)
    names = {"cdist": "torch.cdist on (N, 6*512)", "profd": "visibility_aware_distance"}
    print(f"\n{'method':<30}{'median [s]':>12}{'min [s]':>10}{'CPU time [s]':>14}{'peak extra [MiB]':>18}")
    for method, r in summary.items():
        print(f"{names[method]:<30}{r['median']:>12.2f}{r['min']:>10.2f}{r['cpu']:>14.2f}{r['mem']:>18.0f}")
    for method, r in summary.items():
        print(f"  {method} wall times: {', '.join(f'{t:.2f}' for t in r['times'])} s")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    # Each round runs cdist then ours back to back, so a round's ratio sees (nearly) the same machine load.
    paired = [statistics.median(o["times"]) / statistics.median(c["times"])
              for c, o in zip(results["cdist"], results["profd"])]
    ratio = statistics.median(paired)
    ours, ref = summary["profd"], summary["cdist"]
    print(f"\ntime ratio ours / cdist: {ratio:.2f} (median of per-round ratios "
          f"{', '.join(f'{r:.2f}' for r in paired)}); {ours['median'] / ref['median']:.2f} (overall median "
          f"wall), {ours['cpu'] / ref['cpu']:.2f} (median CPU time)")
    print(f"  target <= {TIME_TARGET}: {'PASS' if ratio <= TIME_TARGET else 'MISS'}")
    print(f"peak extra memory of ours: {ours['mem']:.0f} MiB  (target < {MEMORY_TARGET_MIB} MiB): "
          f"{'PASS' if ours['mem'] < MEMORY_TARGET_MIB else 'MISS'}")
    return {"time_ratio": ratio, "paired_ratios": paired, "time_target": TIME_TARGET,
            "memory_target_mib": MEMORY_TARGET_MIB,
            **{f"{m}_{k}": v for m, r in summary.items() for k, v in r.items() if k != "times"}}


if __name__ == "__main__":
    main()
