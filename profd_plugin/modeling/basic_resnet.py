"""A CLIP ResNet visual tower with BasicBlocks: timm's ResNet-18-type trunk under open_clip's attention pool.

open_clip's ``ModifiedResNet`` (OpenAI's CLIP ResNet) has a 3-conv stem and bottleneck blocks whose last
BatchNorm is zero-initialised. Trained from scratch on small data, that trunk learns far less than the
BasicBlock trunk of torchreid's ``resnet18`` (docs/RESULTS.md, "The trunk is the gap"). This tower is the same
CLIP ResNet with that trunk instead:

- **trunk**: torchvision's / timm's ResNet stem (kxk stride-2 convolution, BN, ReLU, 3x3 stride-2 max pool)
  and four stages of timm's ``BasicBlock`` (two 3x3 convolutions per block, the block of torchvision's
  ``resnet18``; built by timm's ``make_blocks``: strided 3x3 convolutions, 1x1 strided shortcuts), whose
  output widths are those of the ``ModifiedResNet`` of the same config (4w, 8w, 16w, 32w for config width
  w). The stem is 4w wide, so every width scales with w (both libraries fix it at 64, the stem of their
  ResNet-18 / 34; at w = 12 the 48-wide stem, with no 1x1 projection into layer1, makes the main job's
  step cheaper: ``benchmarks/trunk_step_time.py``). timm's initialisation (Kaiming normal, fan-out),
  **without** zero-initialising each block's last BatchNorm (torchvision's default): from scratch, zero-init
  cost 10-15 mAP points on the second synthetic set.
- **stem kernel**: 7x7 as ResNet's (``tiny_rn10``, the main job's backbone) or 3x3 (``tiny_rn10_k3``): at
  128x64 the 7x7 convolution is 17 % of the trunk's multiply-adds (``benchmarks/backbone_flops.py``), yet the
  3x3 one left the main job's whole training step as long (1.01x, ``benchmarks/trunk_step_time.py``); it
  learned more on the first synthetic set and less on the second (docs/RESULTS.md, "Choosing the embedded
  default").
- **attention pool**: open_clip's ``AttentionPool2d`` on the 32w-channel map, with ``ModifiedResNet``'s heads
  (32w // 64) and initialisation, so ``ClipResNetBackbone`` reads it exactly as for the CLIP ResNet.

``forward`` is ``ModifiedResNet``'s (stem, stages, attention pool), so the tower is a drop-in ``clip.visual``
and its weights are ordinary open_clip ``CLIP`` state-dict entries (``visual.*``). No released weights exist:
random init, or a checkpoint of this architecture.

Shape shorthand:
    N: batch size; H, W: image size; w: config width; D: joint embedding width
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
from open_clip.modified_resnet import AttentionPool2d
from timm.models.resnet import BasicBlock, make_blocks
from torch import Tensor, nn

__all__ = ["BasicBlockResNet", "BASIC_STAGE_EXPANSION"]

#: Stage-1 output width over the config width w, as ``ModifiedResNet``'s bottleneck expansion (4w .. 32w).
BASIC_STAGE_EXPANSION = 4
_STAGES = 4
_POOL_GRID_STRIDE = 32  # the attention pool's square grid is image_size // 32, as ModifiedResNet's
_HEAD_WIDTH = 64  # open_clip's vision_cfg.head_width default: heads = 32w // 64
_STEM_KERNEL, _STEM_POOL = 7, 3  # torchvision's / timm's stem: 7x7 stride-2 conv, 3x3 stride-2 max pool


class BasicBlockResNet(nn.Module):
    """BasicBlock ResNet trunk + CLIP attention pool (module doc).

    Args:
        layers: blocks per stage (``[1, 1, 1, 1]`` is ResNet-10's depth, ``[2, 2, 2, 2]`` ResNet-18's).
        output_dim: D, the attention pool's output (the CLIP ``embed_dim``).
        width: config width w; stage output widths 4w, 8w, 16w, 32w (w = 16 is ResNet-18's 64 .. 512).
        image_size: square pretraining size; the attention pool's grid is image_size // 32.
        stem_kernel: odd kernel size of the stride-2 stem convolution (padding k // 2): 7 as ResNet's, or 3
            (``tiny_rn10_k3``).

    Attributes:
        conv1, bn1, act1, maxpool: the stem; layer1 .. layer4: the stages (timm modules); attnpool: the pool;
        image_size: as given.
    """

    def __init__(self, layers: Sequence[int], output_dim: int, width: int = 16,
                 image_size: int = 224, stem_kernel: int = _STEM_KERNEL) -> None:
        super().__init__()
        if len(layers) != _STAGES:
            raise ValueError(f"a BasicBlock ResNet has {_STAGES} stages, got layers {list(layers)}")
        if stem_kernel < 1 or stem_kernel % 2 == 0:
            raise ValueError(f"stem_kernel must be odd and positive (padding k // 2 halves the grid), "
                             f"got {stem_kernel}")
        channels: Tuple[int, ...] = tuple(BASIC_STAGE_EXPANSION * width * 2 ** i for i in range(_STAGES))
        self.image_size = image_size
        self.output_dim = output_dim
        self.attnpool = AttentionPool2d(image_size // _POOL_GRID_STRIDE, channels[-1],
                                        channels[-1] // _HEAD_WIDTH, output_dim)
        self.conv1 = nn.Conv2d(3, channels[0], stem_kernel, stride=2, padding=stem_kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(_STEM_POOL, stride=2, padding=_STEM_POOL // 2)
        stages, _ = make_blocks((BasicBlock,) * _STAGES, channels, tuple(layers), inplanes=channels[0])
        for name, stage in stages:  # layer1 .. layer4
            self.add_module(name, stage)
        self.init_parameters()

    def init_parameters(self) -> None:
        """Convolutions as timm's ``ResNet.init_weights`` (Kaiming normal, fan-out; BatchNorm at weight 1,
        bias 0, no zero-init); the attention pool as ``ModifiedResNet.init_parameters`` (std C^-0.5)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        pool = self.attnpool
        std = pool.c_proj.in_features ** -0.5
        for proj in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
            nn.init.normal_(proj.weight, std=std)

    def stem(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) -> (N, 4w, H/4, W/4): kxk stride-2 convolution, BN, ReLU, 3x3 stride-2 max pool."""
        return self.maxpool(self.act1(self.bn1(self.conv1(x))))

    @staticmethod
    def grid_for(image_size: Sequence[int], stride: int) -> Tuple[int, ...]:
        """Feature-map grid at output stride S: ceil(side / S) (every downsampling is a stride-2 convolution
        or pool padded by k // 2, which rounds up)."""
        return tuple(-(-int(side) // stride) for side in image_size)

    def remove_last_downsampling(self) -> None:
        """Last stride 1: the first ``layer4`` block's 3x3 convolution and 1x1 shortcut keep the grid."""
        block = self.layer4[0]
        block.conv1.stride = (1, 1)
        block.downsample[0].stride = (1, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) -> (N, D) attention-pooled image feature, as ``ModifiedResNet.forward``."""
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.attnpool(x)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Not supported (as for open_clip's ``ModifiedResNet``)."""
