"""Benchmark: the CLIP ResNet trunk (stem + layer1-4) in the channels-last layout against the default one.

``ClipResNetBackbone`` runs its convolutional trunk channels-last. This measures forward + backward of the
trunk of ``tiny_rn`` (random init, stride 16, 128x64, batch 32) and of the main job's ``tiny_rn10``
(BasicBlock trunk, stride 32) in both layouts on the same
weights and input, alternating the two in every round; the ratio is the median of the per-round ratios, so
load changes on a shared machine hit both. It also checks that both layouts give the same feature map
(up to float summation order).

    python benchmarks/bench_channels_last.py            # ~15 s on 2 CPU cores
    python benchmarks/bench_channels_last.py --rn50     # also RN50 at 256x128, batch 8 (minutes on a CPU)

Target: channels-last is not slower (time ratio default / channels-last >= 1.0).
"""
import argparse
import copy
import json
import os
import statistics
import sys
import time
from typing import List, Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout without installing

from profd_plugin.benchmark.measure import synchronize  # noqa: E402
from profd_plugin.config import setup_cfg  # noqa: E402
from profd_plugin.modeling import build_profd_model  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "profd_synthetic.yaml")


def _trunk(visual, images: torch.Tensor) -> torch.Tensor:
    x = visual.stem(images)
    return visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))


def _step_s(visual, images: torch.Tensor, device: torch.device, iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        _trunk(visual, images).float().square().mean().backward()
    synchronize(device)
    return (time.perf_counter() - start) / iters


def measure(name: str, stride: int, size, batch: int, *, device: torch.device, rounds: int,
            iters: int) -> dict:
    cfg = setup_cfg(CONFIG, ["profd.clip.name", name, "profd.clip.stride", str(stride),
                             "profd.clip.pretrained", "none", "data.height", str(size[0]), "data.width",
                             str(size[1])])
    torch.manual_seed(0)
    last = build_profd_model(cfg, 10).backbone.visual.to(device).train()
    default = copy.deepcopy(last).to(memory_format=torch.contiguous_format)
    images = torch.randn(batch, 3, *size, device=device)
    layouts = {"default": (default, images.contiguous()),
               "channels_last": (last, images.contiguous(memory_format=torch.channels_last))}
    with torch.no_grad():
        a, b = (_trunk(m, x) for m, x in layouts.values())
    max_rel = float((a - b).abs().max() / a.abs().max())
    ratios, times = [], {k: [] for k in layouts}
    for _ in range(rounds):
        for key, (visual, x) in layouts.items():
            _step_s(visual, x, device, 1)  # warm-up of this layout
            times[key].append(_step_s(visual, x, device, iters))
        ratios.append(times["default"][-1] / times["channels_last"][-1])
    return {"model": name, "stride": stride, "size": list(size), "batch": batch, "max_rel_diff": max_rel,
            "default_ms": 1e3 * statistics.median(times["default"]),
            "channels_last_ms": 1e3 * statistics.median(times["channels_last"]),
            "ratio": statistics.median(ratios)}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rn50", action="store_true", help="also RN50 at 256x128, batch 8")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--json", default="", help="also write every figure to this JSON file")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cases = [("tiny_rn", 16, (128, 64), 32, 3), ("tiny_rn10", 32, (128, 64), 32, 3)]
    cases += [("RN50", 16, (256, 128), 8, 1)] if args.rn50 else []
    ok, rows = True, []
    print(f"CLIP ResNet trunk forward + backward on {device} ({torch.get_num_threads()} threads), "
          f"median of {args.rounds} alternating rounds")
    for name, stride, size, batch, iters in cases:
        r = measure(name, stride, size, batch, device=device, rounds=args.rounds, iters=iters)
        rows.append(r)
        ok &= r["ratio"] >= 1.0 and r["max_rel_diff"] < 1e-4
        print(f"  {name} stride {stride}, {size[0]}x{size[1]} batch {batch}: default "
              f"{r['default_ms']:.1f} ms, channels-last {r['channels_last_ms']:.1f} ms, ratio "
              f"{r['ratio']:.2f}x (target >= 1.0), same features (max rel. diff {r['max_rel_diff']:.1e})")
    print("PASS" if ok else "FAIL")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "threads": torch.get_num_threads(), "rows": rows, "pass": ok},
                      f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
