"""``tools/main.py`` (or ``tools/benchmark.py``) with the backbone-search CLIP configs of
``benchmarks/clip_configs/`` registered, and optionally another convolutional trunk under the CLIP ResNet's
attention pool.

The configs (open_clip format, random init only) are the candidate CLIP ResNets that were compared with
``tiny_rn`` when the embedded default was chosen (``benchmarks/embedded_default.sh``, docs/RESULTS.md);
they are not part of the plugin. Usage::

    python benchmarks/main_with_clip_configs.py <tools/main.py args>
    python benchmarks/main_with_clip_configs.py --benchmark <tools/benchmark.py args>   # e.g. --seeds 3
    python benchmarks/main_with_clip_configs.py --trunk 2222-64 --benchmark <args> profd.clip.stride 32
    python benchmarks/trunk_step_time.py   # the training-step time of such trunks against tiny_rn

``--trunk BLOCKS-WIDTH[-z0]`` replaces the ``ModifiedResNet`` trunk (3-conv stem, bottlenecks) of the CLIP
ResNet named by ``profd.clip.name`` with timm's BasicBlock ResNet: ``BLOCKS`` blocks per stage (``2222`` is
ResNet-18's depth, ``1111`` ResNet-10's), stage widths ``WIDTH`` x (1, 2, 4, 8) (64 is ResNet-18's), 7x7 stem
+ max pool; ``-z0`` keeps timm from zero-initialising each block's last BatchNorm (torchvision's default).
Its last stage's width (8 x ``WIDTH``) must be the attention pool's (32 x the config's ``width``: ``tiny_rn``
for 64, ``rn_w8_1111`` for 32). ``profd.clip.stride 16`` runs its last stage at stride 1, as for the CLIP
ResNet. The attention pool, prompts, decoder, heads and losses are ProFD's, unchanged: this isolates what the
trunk contributes (docs/RESULTS.md, "Where the set-2 gap comes from").
"""
import importlib.util
import os
import sys
from typing import Callable, List, Tuple

import open_clip
import torch
from timm.models.resnet import BasicBlock, ResNet
from torch import Tensor, nn

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = os.path.join(os.path.dirname(HERE), "tools")
sys.path.insert(0, os.path.dirname(HERE))  # run from a checkout without installing

from profd_plugin.modeling.clip_resnet import ClipResNetBackbone  # noqa: E402

#: the ModifiedResNet modules a swapped-in trunk replaces (its attention pool stays)
_TRUNK_MODULES = ("conv1", "bn1", "act1", "conv2", "bn2", "act2", "conv3", "bn3", "act3", "avgpool",
                  "layer1", "layer2", "layer3", "layer4")


def parse_trunk(spec: str) -> Tuple[Tuple[int, ...], int, bool]:
    """``BLOCKS-WIDTH[-z0]`` -> (blocks per stage, base width, zero-init the last BN of each block)."""
    parts = spec.split("-")
    if len(parts) not in (2, 3) or not parts[0].isdigit() or len(parts[0]) != 4 or not parts[1].isdigit() \
            or parts[2:] not in ([], ["z0"]):
        raise SystemExit(f"error: --trunk {spec!r}: expected BLOCKS-WIDTH[-z0] with four digits of blocks, "
                         f"e.g. 2222-64")
    return tuple(int(c) for c in parts[0]), int(parts[1]), parts[2:] != ["z0"]


def build_trunk(blocks: Tuple[int, ...], width: int, zero_init_last: bool, stride: int) -> nn.Sequential:
    """timm's BasicBlock ResNet up to its last stage: (N, 3, H, W) -> (N, 8 * width, H / S, W / S)."""
    net = ResNet(BasicBlock, list(blocks), channels=tuple(width * 2 ** i for i in range(4)), stem_width=width,
                 num_classes=0, global_pool="", zero_init_last=zero_init_last)
    if stride == 16:  # last stride 1 without dilation, as _remove_last_downsampling does for the CLIP ResNet
        first = net.layer4[0]
        first.conv1.stride = first.downsample[0].stride = (1, 1)
    return nn.Sequential(net.conv1, net.bn1, net.act1, net.maxpool, net.layer1, net.layer2, net.layer3,
                         net.layer4)


def _plain_methods() -> Tuple[Callable, Callable]:
    """``ClipResNetBackbone``'s own ``__init__`` and ``feature_map``, kept at the first swap."""
    if "_plain_methods" not in ClipResNetBackbone.__dict__:
        ClipResNetBackbone._plain_methods = (ClipResNetBackbone.__init__, ClipResNetBackbone.feature_map)
    return ClipResNetBackbone._plain_methods


def restore_trunk() -> None:
    """Undo :func:`use_trunk`: backbones built from now on have the CLIP ResNet's own trunk again."""
    ClipResNetBackbone.__init__, ClipResNetBackbone.feature_map = _plain_methods()


def use_trunk(spec: str) -> None:
    """Make every ``ClipResNetBackbone`` built from now on run the trunk of ``spec`` (see the module doc).

    A later call replaces the swap rather than stacking on it."""
    blocks, width, zero_init_last = parse_trunk(spec)
    init = _plain_methods()[0]

    def __init__(self, visual, *, image_size, stride):
        init(self, visual, image_size=image_size, stride=stride)
        pool_width = self.visual.attnpool.k_proj.in_features
        if pool_width != 8 * width:
            raise SystemExit(f"error: --trunk {spec}: its last stage has {8 * width} channels but the "
                             f"attention pool of profd.clip.name takes {pool_width}")
        for name in _TRUNK_MODULES:
            setattr(self.visual, name, nn.Identity())
        trunk = build_trunk(blocks, width, zero_init_last, self.stride)
        self.trunk = trunk.to(memory_format=torch.channels_last)

    def feature_map(self, images: Tensor) -> Tensor:
        return self.trunk(images.contiguous(memory_format=torch.channels_last))

    ClipResNetBackbone.__init__, ClipResNetBackbone.feature_map = __init__, feature_map


def main(argv: List[str]) -> int:
    if argv[:1] == ["--trunk"]:
        if len(argv) < 2:
            raise SystemExit("error: --trunk needs a value, e.g. 2222-64")
        use_trunk(argv[1])
        argv = argv[2:]
    tool = "main.py"
    if argv[:1] == ["--benchmark"]:  # runs train in this process, so the registered configs are seen
        tool, argv = "benchmark.py", argv[1:]
    open_clip.add_model_config(os.path.join(HERE, "clip_configs"))
    spec = importlib.util.spec_from_file_location("profd_tool", os.path.join(TOOLS, tool))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
