"""Benchmark: onnxruntime (CPU) vs PyTorch (CPU) latency of the exported ProFD inference graph.

For each model (``tiny``: the tiny-ViT CPU demo, ``configs/profd_synthetic_vit.yaml`` at 128x64;
``vit_b16``: the full ViT-B/16 ProFD at 256x128, random init, the default config) the inference module
(:class:`profd_plugin.export.ProFDInference`) is exported to ONNX with a dynamic batch, then PyTorch
(eval, ``torch.no_grad``) and an onnxruntime ``CPUExecutionProvider`` session with the same number of
threads run the same normalised random images. Prints, per batch size, the median wall time of each over
``--repeats`` runs (after one warm-up run), the ratio onnxruntime / PyTorch and the max abs difference of
every output, plus the export time.

    python benchmarks/bench_export.py                          # tiny and vit_b16, batches 1 and 64
    python benchmarks/bench_export.py --models tiny --repeats 3
"""
import argparse
import os
import statistics
import time

import torch

from profd_plugin.config import setup_cfg
from profd_plugin.export import OUTPUT_NAMES, ProFDInference, export_onnx, random_images
from profd_plugin.modeling import build_profd_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: model name -> (config file or None for the defaults, overrides)
MODELS = {
    "tiny": (os.path.join(ROOT, "configs", "profd_synthetic_vit.yaml"), []),
    "vit_b16": (None, ["profd.clip.pretrained", "none"]),
}
NUM_CLASSES = 10  # identities of the (unused at inference) classifiers


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up: allocator, onnxruntime's first-run graph preparation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_model(name: str, batches, repeats: int, threads: int) -> None:
    import onnxruntime as ort

    config, opts = MODELS[name]
    cfg = setup_cfg(config, opts)
    torch.manual_seed(0)
    module = ProFDInference(build_profd_model(cfg, NUM_CLASSES))
    start = time.perf_counter()
    data = export_onnx(module, batch=None)
    export_s = time.perf_counter() - start
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    size = (cfg.data.height, cfg.data.width)
    print(f"\n{name}: {cfg.profd.clip.name} at {size[0]}x{size[1]}, {len(data) / 2**20:.1f} MiB ONNX, "
          f"export {export_s:.1f} s, {threads} threads")
    print(f"{'batch':>6} {'pytorch ms':>11} {'onnxruntime ms':>15} {'ort/pytorch':>12}  max abs diff "
          f"({', '.join(OUTPUT_NAMES)})")
    for batch in batches:
        images = random_images(batch, size, cfg.data.norm_mean, cfg.data.norm_std)
        feed = {"images": images.numpy()}

        def run_torch():
            with torch.no_grad():
                return module(images)

        torch_s = _median_time(run_torch, repeats)
        ort_s = _median_time(lambda: session.run(None, feed), repeats)
        got = session.run(None, feed)
        diffs = [float((torch.from_numpy(a) - b).abs().max()) for a, b in zip(got, run_torch())]
        print(f"{batch:>6} {torch_s * 1e3:>11.1f} {ort_s * 1e3:>15.1f} {ort_s / torch_s:>12.2f}  "
              f"{', '.join(f'{d:.2g}' for d in diffs)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="tiny,vit_b16", help=f"comma-separated, from {sorted(MODELS)}")
    parser.add_argument("--batches", default="1,64", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="threads of both runtimes (default: torch's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs")
    for name in args.models.split(","):
        bench_model(name, [int(b) for b in args.batches.split(",")], args.repeats, args.threads)


if __name__ == "__main__":
    main()
