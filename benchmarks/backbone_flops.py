"""Multiply-adds of a ProFD CLIP ResNet backbone per image, split into the convolutional trunk's stages and
the attention pool (which runs every feature-map token as a query: ``ClipResNetBackbone.attention_pool``).

Counted with ``torch.utils.flop_counter`` (convolutions and matrix products; 2 FLOPs = 1 multiply-add) on
one random image at the config's size, random init (the count does not depend on the weights). The
attention's own query-key and weight-value products run in the CPU's fused attention kernel, which the
counter does not count: ~1 M more for ``tiny_rn`` at stride 16 (2 x 33 x 33 x 512). Used for the
cost argument of docs/RESULTS.md ("Where the set-2 gap comes from").

    python benchmarks/backbone_flops.py                                   # the main job's tiny_rn10
    python benchmarks/backbone_flops.py profd.clip.name tiny_rn profd.clip.stride 16
    python benchmarks/backbone_flops.py profd.clip.name RN50 data.height 256 data.width 128
"""
import os
import sys
from typing import Dict, List, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout without installing

from profd_plugin.config import setup_cfg  # noqa: E402
from profd_plugin.modeling import build_profd_model  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "profd_synthetic.yaml")
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")


def _macs(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() // 2


@torch.no_grad()
def count(opts: List[str]) -> Dict[str, int]:
    """Multiply-adds per image of each trunk stage, the attention pool, and the whole backbone."""
    cfg = setup_cfg(CONFIG, ["profd.clip.pretrained", "none", *opts])
    backbone = build_profd_model(cfg, 2).backbone.eval()
    visual = backbone.visual
    if not hasattr(visual, "attnpool"):
        raise SystemExit(f"error: profd.clip.name {cfg.profd.clip.name} is not a CLIP ResNet")
    x = torch.randn(1, 3, cfg.data.height, cfg.data.width).contiguous(memory_format=torch.channels_last)
    out: Dict[str, int] = {}
    for stage in STAGES:  # each stage on the previous one's output
        module = getattr(visual, stage)
        out[stage] = _macs(lambda: module(x))
        x = module(x)
    out["attention pool"] = _macs(lambda: backbone.attention_pool(x))
    out["backbone"] = _macs(lambda: backbone(torch.randn(1, 3, cfg.data.height, cfg.data.width)))
    return out


def main(argv: Optional[List[str]] = None) -> int:
    opts = sys.argv[1:] if argv is None else argv
    macs = count(opts)
    total = macs["backbone"]
    print(f"multiply-adds per image ({' '.join(opts) or 'configs/profd_synthetic.yaml'}):")
    for name, value in macs.items():
        print(f"  {name:<16}{value / 1e6:>9.1f} M{100 * value / total:>7.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
