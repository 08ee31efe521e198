"""The visual-backbone interface ProFD uses, and the positional-grid geometry the CLIP towers share.

Both CLIP visual towers (the ViT, :class:`~profd_plugin.modeling.clip_backbone.ClipVisualBackbone`, and the
ResNet, :class:`~profd_plugin.modeling.clip_resnet.ClipResNetBackbone`) turn an image into a global feature
and a grid of patch features in the joint image-text space, and both hold a learnable positional grid
(the ViT's token positions, the ResNet attention pool's) that is re-gridded to the built input size and
resampled on the fly for any other size. :class:`VisualBackbone` is that shared part: what the model reads
(``grid_for``, ``patch_size``, ``stride``, ``image_size``, ``grid_size``, ``embed_dim``) and the
positional-grid bookkeeping. Grids are resampled by timm's ``resample_abs_pos_embed`` with the official
ProFD / CLIP-ReID rule (:func:`resize_pos_embed`).

Shape shorthand:
    N: batch size; H, W: image size; P: patch size; s: stride
    h, w: patch grid; L = h * w; Wv: width of the positional grid's tokens; D: joint embedding width
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
from timm.layers import resample_abs_pos_embed
from torch import Tensor, nn

__all__ = ["VisualBackbone", "resize_pos_embed", "grid_size_for"]

#: Official positional-grid resize (ProFD ``clip/model.py:516-532``, CLIP-ReID ``resize_pos_embed``):
#: ``F.interpolate`` bilinear, no antialiasing, align_corners False (timm's default None); one prefix token
#: (the ViT class token, the attention pool's mean token).
_POS_EMBED_INTERPOLATION = "bilinear"
_NUM_PREFIX_TOKENS = 1


def grid_size_for(image_size: Tuple[int, int], patch_size: int, stride: int) -> Tuple[int, int]:
    """Patch grid of a conv patch embedding: ((H - P) // s + 1, (W - P) // s + 1)."""
    height, width = image_size
    if height < patch_size or width < patch_size:
        raise ValueError(f"image size {tuple(image_size)} is smaller than the patch size {patch_size}")
    return (height - patch_size) // stride + 1, (width - patch_size) // stride + 1


def resize_pos_embed(pos_embed: Tensor, grid_size: Tuple[int, int],
                     num_prefix_tokens: int = _NUM_PREFIX_TOKENS, *,
                     old_size: Optional[Tuple[int, int]] = None) -> Tensor:
    """Resample a positional embedding to a new grid, keeping the prefix (class / mean) tokens.

    timm's ``resample_abs_pos_embed`` with the official rule: bilinear, align_corners=False, no
    antialiasing (official ``clip/model.py:516-532``). Differentiable.

    Args:
        pos_embed: (num_prefix + g_h*g_w, Wv) positional embedding.
        grid_size: target (h, w).
        num_prefix_tokens: leading non-spatial tokens kept as they are.
        old_size: source (g_h, g_w); default: a square grid (CLIP's pretraining grid).

    Returns:
        (num_prefix + h*w, Wv) positional embedding, a new tensor (a copy at the same grid).
    """
    spatial = pos_embed.shape[0] - num_prefix_tokens
    if old_size is None:
        side = math.isqrt(spatial)
        if side * side != spatial:
            raise ValueError(f"positional embedding with {spatial} spatial tokens is not a square grid; "
                             f"pass old_size")
        old_size = (side, side)
    old, new = (int(old_size[0]), int(old_size[1])), (int(grid_size[0]), int(grid_size[1]))
    if old[0] * old[1] != spatial:
        raise ValueError(f"positional embedding with {spatial} spatial tokens is not a {old} grid")
    if old == new:
        return pos_embed.clone()  # timm returns its input here; the caller owns the result
    out = resample_abs_pos_embed(pos_embed.unsqueeze(0), new_size=list(new), old_size=list(old),
                                 num_prefix_tokens=num_prefix_tokens, interpolation=_POS_EMBED_INTERPOLATION,
                                 antialias=False)[0]  # (num_prefix + h*w, Wv)
    if out.data_ptr() == pos_embed.data_ptr():  # older timm skips equal token counts, assuming square grids
        raise RuntimeError(f"timm did not resample the positional grid {old} -> {new} (same number of "
                           f"tokens); upgrade timm")
    return out


class VisualBackbone(nn.Module):
    """Image encoder of ProFD: ``forward(images) -> (global (N, D), patches (N, L, D))`` on a patch grid.

    What the model reads: :meth:`grid_for` (the (h, w) grid of any input size), ``patch_size`` and
    ``stride`` (the pixels each grid cell pools its mask labels from: a cell at (i, j) covers rows
    ``[i*stride, i*stride + patch_size)``, see ``modeling.targets.patch_labels``), ``image_size`` (built
    input size), ``grid_size`` (its grid) and ``embed_dim`` (D). Subclasses hold a learnable positional
    grid with one prefix token at ``grid_size`` (:meth:`_positional_parameter`), re-gridded by
    :meth:`set_image_size` and resampled for other inputs by :meth:`positional_embedding_for`.

    Args:
        patch_size: P, the side of the image cell a grid position stands for.
        stride: s, the step between cells in pixels.
        embed_dim: D.
        image_size: (H, W) that the current positional grid ``grid_size`` belongs to.
        grid_size: (g_h, g_w) of the current positional parameter.
    """

    def __init__(self, *, patch_size: int, stride: int, embed_dim: int, image_size: Tuple[int, int],
                 grid_size: Tuple[int, int]) -> None:
        super().__init__()
        self.patch_size, self.stride, self.embed_dim = int(patch_size), int(stride), int(embed_dim)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        # resampled grids by input grid: (parameter version key, (1 + h*w, Wv) embedding)
        self._pos_cache: Dict[Tuple[int, int], Tuple[tuple, Tensor]] = {}

    # ------------------------------------------------------------------ subclass hooks
    def grid_for(self, image_size: Tuple[int, int]) -> Tuple[int, int]:
        """(h, w) grid of an (H, W) input; ValueError when the input is too small."""
        raise NotImplementedError

    def _positional_parameter(self) -> nn.Parameter:
        """The learnable (1 + g_h*g_w, Wv) positional grid at ``grid_size``."""
        raise NotImplementedError

    def _replace_positional_parameter(self, parameter: nn.Parameter) -> None:
        """Install ``parameter`` (the re-gridded grid) where :meth:`_positional_parameter` reads it."""
        raise NotImplementedError

    def no_weight_decay_names(self) -> Tuple[str, ...]:
        """Names (relative to the backbone) of the embedding parameters exempt from weight decay."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared
    def set_image_size(self, image_size: Tuple[int, int]) -> None:
        """Make ``image_size`` the built size: re-grid the positional parameter itself to its grid.

        Resampled from the current grid with :func:`resize_pos_embed`. Lets a loader give a model built at
        one size the positional-parameter shape of a checkpoint trained at another size, then load it
        exactly. The parameter is replaced by a new one (``requires_grad`` kept): call this before an
        optimizer is built.
        """
        size = (int(image_size[0]), int(image_size[1]))
        grid = self.grid_for(size)
        old = self._positional_parameter()
        with torch.no_grad():
            resized = resize_pos_embed(old.detach(), grid, old_size=self.grid_size)  # (1 + h*w, Wv)
        self._replace_positional_parameter(nn.Parameter(resized, requires_grad=old.requires_grad))
        self.image_size, self.grid_size = size, grid
        self._pos_cache.clear()

    def positional_embedding_for(self, grid_size: Tuple[int, int]) -> Tensor:
        """(1 + h*w, Wv) positional embedding of an input with grid ``grid_size``.

        The parameter itself at the built grid; otherwise the built grid resampled to ``grid_size``
        (differentiable). In eval mode without gradients that result is cached per grid, keyed on the
        parameter's storage and in-place version, so optimizer steps and ``load_state_dict`` invalidate it
        (as ``PartPromptLearner`` does for the prompt features).
        """
        pos = self._positional_parameter()
        grid = (int(grid_size[0]), int(grid_size[1]))
        if grid == self.grid_size:
            return pos
        if self.training or torch.is_grad_enabled():
            return resize_pos_embed(pos, grid, old_size=self.grid_size)
        key = (pos.data_ptr(), pos._version, pos.device, pos.dtype)
        cached = self._pos_cache.get(grid)
        if cached is None or cached[0] != key:
            cached = self._pos_cache[grid] = (key, resize_pos_embed(pos, grid, old_size=self.grid_size))
        return cached[1]

    def train(self, mode: bool = True) -> "VisualBackbone":
        """Set the mode and drop the cached resampled grids."""
        self._pos_cache.clear()
        return super().train(mode)
