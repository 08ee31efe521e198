"""Benchmark: the time of one ProFD training step of the main job with other trunks under the CLIP ResNet's
attention pool, as a ratio to the first candidate (by default ``tiny_rn`` at stride 16), measured in one run.

Each candidate is ``TRUNK:CLIP_CONFIG:STRIDE``: ``TRUNK`` as ``--trunk`` of ``main_with_clip_configs.py``
(``none`` keeps the config's own trunk: ``ModifiedResNet``'s, or the plugin's BasicBlock tower for
``tiny_rn10`` and ``tiny_rn10_k3``), the open_clip config whose attention pool it feeds, and
``profd.clip.stride``. Batch 32 at 128x64 on the real train loader of a small generated synthetic set, the
engine's whole ``forward_backward`` (data already loaded); the best of three rounds of four steps, after three
warm-up steps. Random init (the cost does not depend on the weights)::

    python benchmarks/trunk_step_time.py                       # the candidates of docs/RESULTS.md
    python benchmarks/trunk_step_time.py none:tiny_rn:16 2222-64:tiny_rn:32
"""
import os
import sys
import tempfile
from typing import Dict, List, Optional

import open_clip
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import main_with_clip_configs  # noqa: E402
import throughput  # noqa: E402

CONFIG = os.path.join(os.path.dirname(HERE), "configs", "profd_synthetic.yaml")
CANDIDATES = ("none:tiny_rn:16", "none:tiny_rn10:32", "none:tiny_rn10_k3:32", "none:tiny_rn10:16",
              "2222-64:tiny_rn:32", "1111-64:tiny_rn:32", "1111-48:rn_w12_1111:32", "2222-32:rn_w8_1111:32")
SYNTHETIC = ["profd.synthetic.num_ids", "16", "profd.synthetic.num_test_ids", "4", "data.workers", "0"]


def step_time(candidate: str, root: str, rounds: int = 3, steps: int = 4) -> float:
    """Seconds per training step of one candidate (best round)."""
    trunk, name, stride = candidate.split(":")
    if trunk == "none":
        main_with_clip_configs.restore_trunk()
    else:
        main_with_clip_configs.use_trunk(trunk)
    cpu = torch.device("cpu")
    engine, _ = throughput.build_engine(["data.root", root, *SYNTHETIC, "profd.clip.name", name,
                                         "profd.clip.stride", stride], cpu, config=CONFIG)
    engine.model.train()
    engine.begin_epoch(0)
    batch = next(iter(engine.train_loader))

    def step() -> None:
        engine.forward_backward(batch, lambda stage: None)

    throughput._time(step, 3, cpu)  # warm-up
    return min(throughput._time(step, steps, cpu) for _ in range(rounds))


def main(argv: Optional[List[str]] = None) -> int:
    candidates = (argv if argv is not None else sys.argv[1:]) or list(CANDIDATES)
    open_clip.add_model_config(os.path.join(HERE, "clip_configs"))
    times: Dict[str, float] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="profd-trunks-") as root:
            for candidate in candidates:
                times[candidate] = step_time(candidate, root)
                ratio = times[candidate] / times[candidates[0]]
                print(f"{candidate:<26}{times[candidate] * 1000:>8.0f} ms per step{ratio:>8.2f}x the first",
                      flush=True)
    finally:
        main_with_clip_configs.restore_trunk()
    print(f"cpu, torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
