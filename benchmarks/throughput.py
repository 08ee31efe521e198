"""Benchmark: ProFD inference against the bare CLIP visual encoder, and where a training step's time goes.

1. **Inference** (target: ProFD <= 1.10x the backbone's time). ProFD's eval forward (visual encoder,
   hybrid-attention decoder, heads; the prompt features are cached in eval mode) against the bare CLIP
   visual encoder of the same model (``model.backbone``: patch embedding at the model's stride,
   transformer, ``ln_post`` and projection), both on the same random 256x128 batch, at batch 64 and
   batch 1. Rounds alternate the two, and the ratio is the median of the per-round ratios, so load changes
   on a shared machine hit both sides. Random init (no weights needed: the cost does not depend on them).
2. **Training-step breakdown** of ``ProFDEngine.forward_backward`` split into its stages: ``data`` (next
   batch of the real train loader on a generated synthetic set, with masks, plus the host-to-device
   copy), ``forward`` (model), ``losses`` (patch labels, criterion, PCL terms, the finite check),
   ``backward``, ``optimizer`` (zero_grad + step) and ``memory_update`` (memory banks). For the tiny ViT
   of ``configs/profd_synthetic_vit.yaml`` (128x64, batch 32) and for ViT-B/16 (256x128, batch 64 on CUDA,
   ``--vit-batch`` on CPU, where 64 needs ~10 GB and minutes per step). Median over the timed steps,
   after untimed warm-up steps; the memory banks keep their random init (same cost).

    python benchmarks/throughput.py                     # full (ViT-B/16; CPU: several minutes)
    python benchmarks/throughput.py --quick             # smoke run: tiny model only, seconds
    python benchmarks/throughput.py --device cuda --json out.json

Ratios are measured in one run; absolute figures depend on the machine and its load.
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout without installing

from profd_plugin.benchmark.measure import synchronize  # noqa: E402
from profd_plugin.config import setup_cfg  # noqa: E402
from profd_plugin.engine import TRAIN_STAGES  # noqa: E402
from profd_plugin.modeling import build_profd_model  # noqa: E402

INFERENCE_TARGET = 1.10  # ProFD / backbone time
INFERENCE_SIZE = (256, 128)
INFERENCE_BATCHES = (64, 1)
NUM_CLASSES = 702  # Occluded-Duke's identities: the classifier size of the paper row
STAGES = TRAIN_STAGES  # the stages ProFDEngine.forward_backward reports to its clock
CONFIG = os.path.join(ROOT, "configs", "profd_synthetic_vit.yaml")  # the tiny ViT: a ViT-B/16 in small
# the generated training set only needs enough identities for one batch (16 x 4 at batch 64)
SYNTHETIC = ["profd.synthetic.num_ids", "16", "profd.synthetic.num_test_ids", "4"]
VIT = ["profd.clip.name", "ViT-B-16", "profd.clip.pretrained", "none", "data.height", "256", "data.width",
       "128", "profd.synthetic.height", "256", "profd.synthetic.width", "128", "profd.augment.pad", "10"]


def _time(fn: Callable, iters: int, device: torch.device) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / iters


@torch.no_grad()
def inference(model, *, batch: int, device: torch.device, rounds: int, iters: int) -> Dict[str, float]:
    """ProFD eval forward vs its bare visual encoder on one random batch (see the module docstring)."""
    images = torch.randn(batch, 3, *INFERENCE_SIZE, generator=torch.Generator().manual_seed(0)).to(device)
    model.eval()
    sides = {"backbone": lambda: model.backbone(images), "profd": lambda: model(images)}
    for fn in sides.values():  # warm-up: prompt cache, allocator, cuDNN algorithms
        fn()
    times: Dict[str, List[float]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, fn in sides.items():
            times[name].append(_time(fn, iters, device))
    ratios = [p / b for p, b in zip(times["profd"], times["backbone"])]
    return {"batch": batch, "backbone_img_s": batch / statistics.median(times["backbone"]),
            "profd_img_s": batch / statistics.median(times["profd"]), "ratio": statistics.median(ratios),
            "ratios": ratios}


def build_engine(opts: List[str], device: torch.device, config: str = CONFIG):
    """A ProFD engine on the synthetic set of ``config`` (default ``configs/profd_synthetic_vit.yaml``) +
    ``opts`` (no run dir)."""
    from profd_plugin import training

    cfg = setup_cfg(config, opts)
    dm = training.build_datamanager(cfg)
    model = training.build_model(cfg, dm.num_train_pids, device.type == "cuda").to(device)
    optimizer = training.build_optimizer(cfg, model)
    engine = training.build_engine(cfg, dm, model, training.build_criterion(cfg), optimizer,
                                   training.build_scheduler(cfg, optimizer), device.type == "cuda")
    return engine, cfg


def breakdown(opts: List[str], *, device: torch.device, steps: int, warmup: int) -> Dict[str, object]:
    """Median seconds per stage of ``steps`` training steps (after ``warmup`` untimed ones)."""
    engine, cfg = build_engine(opts, device)
    engine.model.train()
    engine.begin_epoch(0)
    batches = iter(engine.train_loader)
    per_stage: Dict[str, List[float]] = {s: [] for s in STAGES}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(warmup + steps):
        last = [time.perf_counter()]

        def clock(stage: str) -> None:
            synchronize(device)
            now = time.perf_counter()
            if step >= warmup:
                per_stage[stage].append(now - last[0])
            last[0] = now

        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(engine.train_loader)
            batch = next(batches)
        engine.forward_backward(batch, clock)  # "data" is measured from before next() to after the copy
    stages = {s: statistics.median(v) for s, v in per_stage.items()}
    total = sum(stages.values())
    return {"model": cfg.profd.clip.name, "image_size": [cfg.data.height, cfg.data.width],
            "batch": cfg.train.batch_size, "steps": steps, "stage_s": stages, "step_s": total,
            "img_s": cfg.train.batch_size / total,
            "peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None}


def print_inference(rows: List[Dict[str, float]], model_name: str) -> None:
    print(f"\ninference at {INFERENCE_SIZE[0]}x{INFERENCE_SIZE[1]}, {model_name} (random init)")
    print(f"{'batch':>6}{'backbone img/s':>16}{'ProFD img/s':>14}{'ProFD / backbone time':>24}")
    for r in rows:
        print(f"{r['batch']:>6}{r['backbone_img_s']:>16.1f}{r['profd_img_s']:>14.1f}{r['ratio']:>24.3f}"
              f"   (rounds: {', '.join(f'{x:.3f}' for x in r['ratios'])})")
    verdicts = ["PASS" if r["ratio"] <= INFERENCE_TARGET else "MISS" for r in rows]
    note = "" if model_name == "ViT-B-16" else " (the target is for ViT-B/16; this is a smoke run)"
    print(f"  target ProFD <= {INFERENCE_TARGET:.2f}x the backbone's time: {', '.join(verdicts)}{note}")


def print_breakdown(r: Dict[str, object]) -> None:
    stages, total = r["stage_s"], r["step_s"]
    mem = f", peak {r['peak_mem_mb']:.0f} MiB" if r["peak_mem_mb"] is not None else ""
    print(f"\ntraining step, {r['model']} {r['image_size'][0]}x{r['image_size'][1]}, batch {r['batch']} "
          f"(median of {r['steps']} steps): {total * 1000:.0f} ms, {r['img_s']:.1f} img/s{mem}")
    for stage in STAGES:
        print(f"  {stage:<14}{stages[stage] * 1000:>10.1f} ms{100 * stages[stage] / total:>7.1f} %")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny model only, few repetitions")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--rounds", type=int, default=None, help="inference rounds (default 3, quick 1)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps (default 5, quick 2)")
    p.add_argument("--vit-batch", type=int, default=None,
                   help="ViT-B/16 train batch (default 64 on CUDA, 16 on CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--json", default="", help="also write every figure to this JSON file")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> Dict[str, object]:
    device = torch.device(args.device)
    rounds, steps = args.rounds or (1 if args.quick else 3), args.steps or (2 if args.quick else 5)
    vit_batch = args.vit_batch or (64 if device.type == "cuda" else 16)
    name = "tiny" if args.quick else "ViT-B-16"
    cfg = setup_cfg(CONFIG, ["profd.clip.name", name, "profd.clip.pretrained", "none", "data.height",
                             str(INFERENCE_SIZE[0]), "data.width", str(INFERENCE_SIZE[1])])
    model = build_profd_model(cfg, NUM_CLASSES).to(device)
    iters = {64: 1, 1: 2 if args.quick else 10} if device.type == "cpu" else {64: 10, 1: 50}
    out: Dict[str, object] = {"device": str(device), "torch": torch.__version__,
                              "threads": torch.get_num_threads(), "load_average": os.getloadavg()[0]}
    out["inference"] = [inference(model, batch=b, device=device, rounds=rounds, iters=iters[b])
                        for b in INFERENCE_BATCHES]
    out["inference_model"] = name
    del model
    print_inference(out["inference"], name)
    root = tempfile.mkdtemp(prefix="profd-throughput-")
    try:
        common = ["data.root", root, "data.workers", "0", *SYNTHETIC]
        runs = [("tiny", common)]
        if not args.quick:
            runs.append(("vit_b16", common + VIT + ["train.batch_size", str(vit_batch)]))
        out["train_step"] = {}
        for key, opts in runs:
            out["train_step"][key] = breakdown(opts, device=device, steps=steps, warmup=1)
            print_breakdown(out["train_step"][key])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out["load_average_end"] = os.getloadavg()[0]
    print(f"\n{device}, torch {torch.__version__}, {out['threads']} threads, load average "
          f"{out['load_average']:.2f} -> {out['load_average_end']:.2f} on {os.cpu_count()} CPUs")
    return out


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    out = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
