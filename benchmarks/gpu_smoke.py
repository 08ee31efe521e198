"""GPU smoke test: everything a CUDA machine should confirm, in one call, into one JSON file.

Steps (each recorded with ``ok``, ``seconds`` and its figures; a failing step does not stop the others):

1. ``train_precisions``: full-size ViT-B/16 ProFD* (``configs/profd_occ_duke.yaml``: stride 12, 21x10
   patches, 702 identities, random init) training steps through ``ProFDEngine.forward_backward`` on
   synthetic 256x128 batches of 64 (16 ids x 4, masks from random part maps) in fp32, bf16 and fp16:
   images/s, peak memory, whether every loss stayed finite, and the last loss values.
2. ``train_eval``: a short train + eval on CUDA: ``tools/benchmark.py`` with ProFD and ResNet-18 on the
   synthetic set (``configs/profd_synthetic.yaml``, 2 epochs), its ``benchmark.json``.
3. ``distance``: ``benchmarks/bench_distance.py --device cuda`` (Occluded-Duke scale).
4. ``evaluator``: ``benchmarks/bench_evaluator.py`` (the ranking runs on the CPU side, as in training).
5. ``throughput``: ``benchmarks/throughput.py --device cuda`` (inference ratio, step breakdown).
6. ``channels_last``: ``benchmarks/bench_channels_last.py --device cuda --rn50`` (the CLIP ResNet trunk's
   layout, measured on CPU only before).

    bash benchmarks/gpu_smoke.sh [out_dir | file.json]            # what a GPU machine runs (< 8 minutes)
    python benchmarks/gpu_smoke.py --device cpu --quick --json x.json  # dry run of the same code on CPU

The only file written is the report (``--json``, default ``log/gpu_smoke/gpu_smoke.json``); the synthetic
data, benchmark runs and per-step JSON files go to ``--work`` (default: a temporary folder, removed at the
end), so a runner that collects a whole output folder gets the report alone.

``--quick`` shrinks every step (tiny model at 64x32, batch 8, one epoch, small distance problem) so the
wiring can be checked on a CPU; on CPU ``profd.train.amp`` is ignored, so the three precisions all run
fp32 there (recorded as ``amp_active: false``).
"""
import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PRECISIONS = ("none", "bf16", "fp16")  # profd.train.amp values; "none" = plain fp32 (official)
NUM_IDS, PER_ID = 16, 4  # a batch of 64, as the official RandomIdentitySampler draws it
NUM_CLASSES = 702  # Occluded-Duke
MIB = 2 ** 20
BUDGET_S = 450  # the whole script stays under 8 minutes; each step gets at most what is left
STEP_LIMITS = {"train_precisions": 150, "train_eval": 200, "distance": 120, "evaluator": 150,
               "throughput": 150, "channels_last": 60}
SYNTHETIC_TINY = ["data.height", "64", "data.width", "32", "train.batch_size", "8", "profd.augment.pad", "2",
                  "profd.synthetic.num_ids", "6", "profd.synthetic.num_test_ids", "3",
                  "profd.synthetic.images_per_id", "4", "profd.synthetic.height", "64",
                  "profd.synthetic.width", "32",
                  "test.ranks", "[1,5]", "test.batch_size", "16"]


def _random_batch(cfg, num_parts: int, device: torch.device, gen: torch.Generator) -> dict:
    """A train batch dict as the data manager yields it: images, pids, masks and visibility targets."""
    from profd_plugin.data.masks import part_targets

    ids = cfg.train.batch_size // PER_ID
    n, h, w = ids * PER_ID, cfg.data.height, cfg.data.width
    parts = torch.rand(n, num_parts, h, w, generator=gen)  # (N, K, H, W) part maps
    masks, visibility = part_targets(parts, bg_threshold=cfg.profd.masks.bg_threshold,
                                     sharpness=cfg.profd.masks.sharpness,
                                     size=(h // cfg.profd.masks.scale, w // cfg.profd.masks.scale))
    return {"img": torch.randn(n, 3, h, w, generator=gen).to(device),  # (N, 3, H, W)
            "pid": torch.arange(ids).repeat_interleave(PER_ID).to(device),  # (N,)
            "masks": masks.to(device), "visibility": visibility.to(device)}  # (N, K+1, h, w), (N, K+1)


def train_precisions(quick: bool, device: torch.device) -> Dict[str, object]:
    """Step 1: ProFD* training steps in each precision (see the module docstring)."""
    from profd_plugin.config import setup_cfg
    from profd_plugin.engine import ProFDEngine
    from profd_plugin.errors import NonFiniteLossError
    from profd_plugin.losses import build_profd_criterion
    from profd_plugin.modeling import build_profd_model
    from profd_plugin.training import build_optimizer

    tiny = ["profd.clip.name", "tiny", "data.height", "64", "data.width", "32", "train.batch_size", "8"]
    opts = ["profd.clip.pretrained", "none"] + (tiny if quick else [])
    cfg = setup_cfg(os.path.join(ROOT, "configs", "profd_occ_duke.yaml"), opts)
    model = build_profd_model(cfg, NUM_CLASSES).to(device).train()
    criterion = build_profd_criterion(cfg)
    # batches come from _random_batch, not from a loader; with_masks: the engine's check for mask batches
    stub = SimpleNamespace(train_loader=None, test_loader={}, num_train_pids=NUM_CLASSES, with_masks=True)
    warmup, steps = (1, 2) if quick else (3, 10)
    out: Dict[str, object] = {"model": cfg.profd.clip.name, "stride": cfg.profd.clip.stride,
                              "batch": cfg.train.batch_size, "image_size": [cfg.data.height, cfg.data.width]}
    for amp in PRECISIONS:
        engine = ProFDEngine(stub, model, criterion, build_optimizer(cfg, model), None,
                             use_gpu=device.type == "cuda", amp=amp, seed=cfg.train.seed)
        engine.epoch = 0
        gen = torch.Generator().manual_seed(cfg.train.seed)
        batches = [_random_batch(cfg, model.num_parts, device, gen) for _ in range(2)]
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        finite, values, start = True, {}, 0.0
        for step in range(warmup + steps):
            if step == warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            engine.batch_idx = step
            try:
                values = engine.forward_backward(batches[step % len(batches)])
            except NonFiniteLossError as e:
                finite, values = False, {"error": str(e)}
                break
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        out[amp] = {"img_s": steps * cfg.train.batch_size / seconds if finite else None, "finite": finite,
                    "amp_active": engine.amp_dtype is not None, "losses": values,
                    "peak_mem_mb": torch.cuda.max_memory_allocated() / MIB if device.type == "cuda" else None}
        r = out[amp]
        print(f"  {cfg.profd.clip.name} s={cfg.profd.clip.stride} amp={amp}: {r['img_s'] or 0:.1f} img/s, "
              f"finite {finite}, peak {r['peak_mem_mb'] or 0:.0f} MiB", flush=True)
    return out


def _subprocess(cmd: List[str], timeout: float, json_path: Optional[str]) -> Dict[str, object]:
    """Run one of the project's scripts; its JSON output (if any) and the tail of its console."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-25:]
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:3])} exited {proc.returncode}: " + " | ".join(tail[-5:]))
    result: Dict[str, object] = {"command": " ".join(cmd[1:]), "tail": tail}
    if json_path:
        with open(json_path) as f:
            result["json"] = json.load(f)
    return result


def subprocess_steps(args: argparse.Namespace) -> Dict[str, Callable[[float], Dict[str, object]]]:
    """Steps 2-6 as ``timeout -> result`` callables."""
    py, out, dev = sys.executable, args.work, args.device
    bench_dir = os.path.join(out, "benchmark")
    train_eval = [py, "tools/benchmark.py", "--config-file", "configs/profd_synthetic.yaml", "--models",
                  "profd", "resnet18", "--output", bench_dir, "baselines:train.optim", "adam", "data.root",
                  os.path.join(out, "reid-data")]
    train_eval += ["train.max_epoch", "1", *SYNTHETIC_TINY] if args.quick else ["train.max_epoch", "2"]
    distance = [py, "benchmarks/bench_distance.py", "--device", dev, "--json",
                os.path.join(out, "distance.json")]
    distance += ["--num-q", "100", "--num-g", "500", "--rounds", "1"] if args.quick else []
    evaluator = [py, "benchmarks/bench_evaluator.py", "--json", os.path.join(out, "evaluator.json")]
    evaluator += ["--quick", "--repeats", "1"] if args.quick else []
    throughput = [py, "benchmarks/throughput.py", "--device", dev, "--json",
                  os.path.join(out, "throughput.json")]
    throughput += ["--quick"] if args.quick else []
    layout = [py, "benchmarks/bench_channels_last.py", "--device", dev, "--json",
              os.path.join(out, "channels_last.json")]
    layout += ["--rounds", "1"] if args.quick else ["--rn50"]
    return {
        "train_eval": lambda t: _subprocess(train_eval, t, os.path.join(bench_dir, "benchmark.json")),
        "distance": lambda t: _subprocess(distance, t, os.path.join(out, "distance.json")),
        "evaluator": lambda t: _subprocess(evaluator, t, os.path.join(out, "evaluator.json")),
        "throughput": lambda t: _subprocess(throughput, t, os.path.join(out, "throughput.json")),
        "channels_last": lambda t: _subprocess(layout, t, os.path.join(out, "channels_last.json")),
    }


def environment(device: torch.device) -> Dict[str, object]:
    from importlib import metadata

    env: Dict[str, object] = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": str(device),
                              "cpus": os.cpu_count(), "python": sys.version.split()[0]}
    for package in ("torchvision", "torchreid", "open_clip_torch", "timm"):  # the versions that ran
        try:
            env[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            env[package] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gb=props.total_memory / 2**30,
                   capability=f"{props.major}.{props.minor}", bf16_supported=torch.cuda.is_bf16_supported())
    return env


def run(args: argparse.Namespace) -> Dict[str, object]:
    device = torch.device(args.device)
    deadline = time.monotonic() + BUDGET_S
    report: Dict[str, object] = {"environment": environment(device), "quick": args.quick, "steps": {}}
    steps = {"train_precisions": lambda t: train_precisions(args.quick, device), **subprocess_steps(args)}
    for name, step in ((n, s) for n, s in steps.items() if n in args.steps):
        left = deadline - time.monotonic()
        if left <= 0:
            report["steps"][name] = {"ok": False, "error": "skipped: the time budget is spent"}
            continue
        print(f"[gpu_smoke] {name} (at most {min(left, STEP_LIMITS[name]):.0f} s)", flush=True)
        start = time.perf_counter()
        try:
            result = {"ok": True, **step(min(left, STEP_LIMITS[name]))}
        except Exception as e:  # noqa: BLE001 - record the failure, run the other steps
            result = {"ok": False, "error": " ".join(str(e).split()) or type(e).__name__,
                      "traceback": traceback.format_exc().splitlines()[-8:]}
        result["seconds"] = time.perf_counter() - start
        report["steps"][name] = result
        print(f"[gpu_smoke] {name}: {'ok' if result['ok'] else 'FAILED: ' + result['error']} "
              f"({result['seconds']:.0f} s)", flush=True)
    precisions = report["steps"].get("train_precisions")
    report["all_ok"] = all(s["ok"] for s in report["steps"].values()) and (precisions is None or all(
        precisions.get(p, {}).get("finite", False) for p in PRECISIONS))
    return report


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (the smoke test) or cpu (a dry run, with --quick)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: check the wiring, not the GPU")
    p.add_argument("--json", default=os.path.join(ROOT, "log", "gpu_smoke", "gpu_smoke.json"),
                   help="the report file (the only file written outside --work)")
    p.add_argument("--work", default="", help="scratch folder (default: a temporary one, removed at the end)")
    p.add_argument("--steps", default=",".join(STEP_LIMITS), help="comma-separated steps (default: all)")
    args = p.parse_args(argv)
    args.steps = args.steps.split(",")
    unknown = [s for s in args.steps if s not in STEP_LIMITS]
    if unknown:
        print(f"error: --steps: unknown step '{unknown[0]}' (steps: {', '.join(STEP_LIMITS)})",
              file=sys.stderr)
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: no CUDA device visible to torch {torch.__version__} (CUDA build "
              f"{torch.version.cuda}); this script needs a GPU machine (--device cpu --quick is a dry run)",
              file=sys.stderr)
        return 1
    path = os.path.abspath(args.json)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with contextlib.ExitStack() as stack:
        args.work = os.path.abspath(args.work) if args.work else stack.enter_context(
            tempfile.TemporaryDirectory(prefix="gpu_smoke_"))
        os.makedirs(args.work, exist_ok=True)
        report = run(args)
    from profd_plugin.fileio import atomic_write

    atomic_write(path, lambda f: json.dump(report, f, indent=2), binary=False)  # whole or absent
    print(f"[gpu_smoke] {'all steps ok' if report['all_ok'] else 'SOME STEPS FAILED'}; written {path}")
    return 0 if report["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
