"""The CLIP ResNet visual backbone of ProFD (RN50 as in CLIP-ReID): attention-pooled global feature +
projected feature-map tokens, output stride 32 or 16, any input size.

open_clip's ``ModifiedResNet`` (OpenAI's CLIP ResNet: 3-conv stem, anti-aliased (avg-pool) strided
bottlenecks, QKV attention pooling ``attnpool``) is used as it is, except for two things CLIP-ReID
(Syliz517/CLIP-ReID ``model/clip/model.py``, ``ModifiedResNet`` / ``AttentionPool2d`` /
``build_model``) also changes:

- **last stride 1** (``profd.clip.stride 16``): the first block of ``layer4`` does not downsample (its
  average pools become identities; no parameter changes, so every checkpoint loads), giving a 16x8 feature
  map at 256x128 instead of 8x4 (``profd.clip.stride 32``, open_clip's network as built).
- **all tokens through the attention pool**: the pool's input is [mean token; the h*w feature-map
  tokens] plus a positional grid, and every token is a query of the (multi-head) attention whose output
  projection ``c_proj`` maps it to the joint image-text space. Token 0 (the mean token's output, exactly
  what ``attnpool`` returns) is the global feature F_g; tokens 1.. are the patch features E_pat, in the
  joint space like the prompts (CLIP-ReID's ``AttentionPool2d.forward`` returns all tokens, ``xproj``).

The convolutional trunk runs in the channels-last memory layout (weights converted once here, the input at
every call): the values are the same convolutions (up to float summation order), and on CPU the trunk's
forward + backward is 1.35x faster for the main job's ``tiny_rn`` (``benchmarks/bench_channels_last.py``).

The same backbone reads the plugin's :class:`~profd_plugin.modeling.basic_resnet.BasicBlockResNet` tower
(timm's BasicBlock trunk under the same attention pool; the ``tiny_rn10`` config): only its stem, last-stride
switch and grid arithmetic differ (its own ``remove_last_downsampling`` and ``grid_for``).

The attention pool's positional grid (7x7 at CLIP's 224x224) is re-gridded to the built input's feature
map and resampled for any other input size by the ViT's rule (bilinear, align_corners False; CLIP-ReID
resizes it the same way, to the stride-16 grid of its input).

Shape shorthand:
    N: batch size; H, W: image size; S: output stride (16 or 32)
    h, w: feature-map grid (:meth:`ClipResNetBackbone.grid_for`); L = h * w
    C: feature-map channels (width * 32; 2048 for RN50); D: joint embedding width (1024 for RN50)
"""
from __future__ import annotations

import math
from typing import Tuple, Union

import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from timm.layers import to_2tuple
from torch import Tensor, nn

from ..errors import ConfigError
from .basic_resnet import BasicBlockResNet
from .visual import VisualBackbone

__all__ = ["ClipResNetBackbone", "RESNET_STRIDES"]

#: Output strides of a CLIP ResNet: 32 (as built) or 16 (last stride 1, CLIP-ReID's choice)
RESNET_STRIDES = (16, 32)
_LAST_STRIDE_1 = 16
#: The stem's first convolution halves the input (3x3, stride 2, padding 1: ceil); every later
#: downsampling is a 2x2 average pool (floor): the stem's and one in layer2, layer3 (and layer4 at 32).
_STEM_CONV_STRIDE = 2
_POOL = 2


def _remove_last_downsampling(visual: Union[ModifiedResNet, BasicBlockResNet]) -> None:
    """Last stride 1: the first ``layer4`` block keeps the resolution (its two average pools removed)."""
    if isinstance(visual, BasicBlockResNet):
        visual.remove_last_downsampling()
        return
    block = visual.layer4[0]
    block.avgpool = nn.Identity()  # after conv2 in the main branch
    block.downsample[0] = nn.Identity()  # the shortcut's pool; its 1x1 conv and BN stay (C/2 -> C)
    block.stride = 1


class ClipResNetBackbone(VisualBackbone):
    """CLIP ResNet returning the attention-pooled global feature and the projected feature-map tokens.

    The cell of a feature-map position is the S x S block of pixels it was average-pooled from, so the
    grid geometry the model reads is ``patch_size = stride = S``: the mask labels of position (i, j) are
    the mask average over rows ``[i*S, (i+1)*S)`` and columns ``[j*S, (j+1)*S)`` (its receptive field is
    larger; the cells tile the image as the ViT's non-overlapping patches do).

    Args:
        visual: an open_clip ``ModifiedResNet`` or a ``BasicBlockResNet`` (taken over, not copied; at stride
            16 its last block is
            changed in place).
        image_size: built (H, W) input size; the attention pool's positional grid is resized to its
            feature-map grid.
        stride: output stride S (``profd.clip.stride``): 32, or 16 for last stride 1 (CLIP-ReID).

    Attributes:
        image_size: built (H, W) input size.
        grid_size: (h, w) feature-map grid of ``image_size``, the grid of the positional parameter.
        patch_size, stride: both S.
        embed_dim: D.
    """

    def __init__(self, visual: Union[ModifiedResNet, BasicBlockResNet], *, image_size: Tuple[int, int],
                 stride: int) -> None:
        if int(stride) not in RESNET_STRIDES:
            raise ConfigError(f"profd.clip.stride {stride} is not an output stride of a CLIP ResNet: use 32 "
                              f"(as pretrained) or 16 (last stride 1, as CLIP-ReID)")
        spatial = visual.attnpool.positional_embedding.shape[0] - 1
        side = math.isqrt(spatial)  # CLIP's square pretraining grid: image_size // 32 (7 at 224)
        super().__init__(patch_size=stride, stride=stride, embed_dim=int(visual.attnpool.c_proj.out_features),
                         image_size=to_2tuple(visual.image_size), grid_size=(side, side))
        if self.stride == _LAST_STRIDE_1:
            _remove_last_downsampling(visual)
        self.visual = visual.to(memory_format=torch.channels_last)  # 4-D conv weights only
        self.set_image_size(image_size)

    def grid_for(self, image_size: Tuple[int, int]) -> Tuple[int, int]:
        """(h, w) feature-map grid of an (H, W) input.

        CLIP ResNet: ceil(H / 2) (stem convolution), then floor-halved log2(S) - 1 times (2x2 average pools).
        BasicBlock tower: ceil(H / S) (``BasicBlockResNet.grid_for``).

        Raises:
            ValueError: the input is too small for one feature-map position.
        """
        if isinstance(self.visual, BasicBlockResNet):
            grid = self.visual.grid_for(image_size, self.stride)
        else:
            halvings = int(math.log2(self.stride // _STEM_CONV_STRIDE))
            grid = tuple(-(-int(side) // _STEM_CONV_STRIDE) // _POOL ** halvings for side in image_size)
        if min(grid) < 1:
            raise ValueError(f"image size {tuple(image_size)} is too small for the CLIP ResNet at stride "
                             f"{self.stride} (every side needs at least {self.stride} pixels)")
        return grid  # type: ignore[return-value]

    def _positional_parameter(self) -> nn.Parameter:
        return self.visual.attnpool.positional_embedding

    def _replace_positional_parameter(self, parameter: nn.Parameter) -> None:
        self.visual.attnpool.positional_embedding = parameter

    def no_weight_decay_names(self) -> Tuple[str, ...]:
        """The attention pool's positional embedding."""
        return ("visual.attnpool.positional_embedding",)

    def feature_map(self, images: Tensor) -> Tensor:
        """(N, C, h, w) output of ``layer4``."""
        visual = self.visual
        x = visual.stem(images.contiguous(memory_format=torch.channels_last))  # (N, width, H/4, W/4)
        return visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))  # (N, C, h, w)

    def attention_pool(self, features: Tensor) -> Tuple[Tensor, Tensor]:
        """open_clip's ``attnpool`` with every token as a query, at the features' own grid.

        Args:
            features: (N, C, h, w) feature map.

        Returns:
            (N, D) output of the mean token (``attnpool``'s result) and (N, L, D) outputs of the
            feature-map tokens.
        """
        pool = self.visual.attnpool
        pos = self.positional_embedding_for(features.shape[-2:])  # (1+L, C)
        x = features.flatten(2).permute(2, 0, 1)  # (L, N, C)
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0) + pos[:, None, :].to(x.dtype)  # (1+L, N, C)
        x, _ = F.multi_head_attention_forward(
            query=x, key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=pool.num_heads,
            q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight,
            v_proj_weight=pool.v_proj.weight, in_proj_weight=None,
            in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0, out_proj_weight=pool.c_proj.weight,
            out_proj_bias=pool.c_proj.bias, use_separate_proj_weight=True, training=self.training,
            need_weights=False)  # (1+L, N, D)
        x = x.transpose(0, 1)  # (N, 1+L, D)
        return x[:, 0], x[:, 1:]

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        """Encode images.

        Args:
            images: (N, 3, H, W) normalised images, H, W >= S.

        Returns:
            cls: (N, D) attention-pooled global feature F_g.
            patches: (N, L, D) projected feature-map tokens E_pat, row-major over the input's (h, w) grid
            (:meth:`grid_for`).
        """
        self.grid_for(images.shape[-2:])  # a clear error for too small inputs
        return self.attention_pool(self.feature_map(images))
