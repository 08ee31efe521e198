"""The CLIP ViT visual backbone of ProFD: projected class token + patch tokens, any input size and stride.

Official ProFD uses OpenAI CLIP ViT-B/16 (Cuixxx/ProFD ``profd.py:443-485``, ``clip/model.py:280-302,
516-532``): the patch-embedding stride may be smaller than the patch (12 -> 21x10 grid, "ProFD*"), the
14x14 positional grid is resized bilinearly (align_corners=False) to the patch grid with the class-token
embedding kept, and ``ln_post`` plus the projection (768 -> 512) are applied to ALL tokens: the class
token is the global feature F_g and the patch tokens are E_pat (paper Sec. 4.1, 5.2).

Shape shorthand:
    N: batch size
    H, W: image size; P: patch size; s: patch-embedding stride
    h, w: patch grid, h = (H - P) // s + 1, w = (W - P) // s + 1; L = h * w
    Wv: visual transformer width (768); D: joint embedding width (512)
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor, nn

from .visual import VisualBackbone, grid_size_for

__all__ = ["ClipVisualBackbone"]


class ClipVisualBackbone(VisualBackbone):
    """CLIP ViT returning the projected class token and patch tokens, at any input size and stride.

    The positional parameter holds the grid of the *built* input size ``image_size`` (CLIP's square
    pretraining grid resized when the backbone is built, then trained). An input of another size (H, W
    >= the patch size) is encoded with that grid resampled to its own patch grid by the same bilinear rule
    (:func:`~profd_plugin.modeling.visual.resize_pos_embed`); at the built size the parameter is used as
    it is.

    Args:
        visual: an open_clip ``VisionTransformer`` (taken over, not copied) with a learnable positional
            grid of ``visual.grid_size`` and ``pool_type='tok'``.
        image_size: built (H, W) input size; the positional grid is resized to its patch grid.
        stride: patch-embedding stride s (``profd.clip.stride``; 16 = the patch size, 12 = ProFD*).

    Attributes:
        image_size: built (H, W) input size.
        grid_size: (h, w) patch grid of ``image_size``, the grid of the positional parameter.
        patch_size, stride: patch-embedding kernel P and stride s.
        embed_dim: D.
    """

    def __init__(self, visual: nn.Module, *, image_size: Tuple[int, int], stride: int) -> None:
        # the pretraining grid of the parameter (224 / 16 = 14x14 for ViT-B/16), re-gridded just below
        super().__init__(patch_size=int(visual.conv1.kernel_size[0]), stride=stride,
                         embed_dim=int(visual.proj.shape[1]), image_size=tuple(visual.image_size),
                         grid_size=tuple(visual.grid_size))
        visual.conv1.stride = (self.stride, self.stride)
        self.visual = visual
        self.set_image_size(image_size)

    def grid_for(self, image_size: Tuple[int, int]) -> Tuple[int, int]:
        """(h, w) patch grid of an (H, W) input; ValueError below the patch size."""
        return grid_size_for((int(image_size[0]), int(image_size[1])), self.patch_size, self.stride)

    def _positional_parameter(self) -> nn.Parameter:
        return self.visual.positional_embedding

    def _replace_positional_parameter(self, parameter: nn.Parameter) -> None:
        self.visual.positional_embedding = parameter

    def no_weight_decay_names(self) -> Tuple[str, ...]:
        """The positional and class embeddings."""
        return "visual.positional_embedding", "visual.class_embedding"

    def set_image_size(self, image_size: Tuple[int, int]) -> None:
        """Re-grid the positional parameter to ``image_size`` (see :class:`VisualBackbone`); the open_clip
        tower's own ``image_size`` / ``grid_size`` follow."""
        super().set_image_size(image_size)
        self.visual.image_size, self.visual.grid_size = self.image_size, self.grid_size

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        """Encode images.

        Args:
            images: (N, 3, H, W) normalised images, any H, W >= the patch size.

        Returns:
            cls: (N, D) projected class token (global feature F_g).
            patches: (N, L, D) projected patch tokens E_pat, row-major over the input's (h, w) grid
            (:meth:`grid_for`).
        """
        grid = self.grid_for(images.shape[-2:])
        visual = self.visual
        x = visual.conv1(images)  # (N, Wv, h, w)
        x = x.flatten(2).transpose(1, 2)  # (N, L, Wv)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (N, 1, Wv)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding_for(grid).to(x.dtype)  # (N, 1+L, Wv)
        x = visual.transformer(visual.ln_pre(x))  # (N, 1+L, Wv)
        x = visual.ln_post(x) @ visual.proj  # (N, 1+L, D), ln_post and projection on ALL tokens
        return x[:, 0], x[:, 1:]
