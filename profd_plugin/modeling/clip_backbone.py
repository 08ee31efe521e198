"""CLIP through open_clip: model creation, pretrained loading and the ReID visual backbone.

Official ProFD uses OpenAI CLIP ViT-B/16 (Cuixxx/ProFD ``profd.py:443-485``, ``clip/model.py:280-302,
516-532``): the patch-embedding stride may be smaller than the patch (12 -> 21x10 grid, "ProFD*"), the
14x14 positional grid is resized bilinearly (align_corners=False) to the patch grid with the class-token
embedding kept, and ``ln_post`` plus the projection (768 -> 512) are applied to ALL tokens: the class
token is the global feature F_g and the patch tokens are E_pat (paper Sec. 4.1, 5.2).

Loading is isolated here: :func:`convert_clip_state_dict` and :func:`resize_pos_embed` are pure, and
:func:`create_clip` touches the network only for a named tag (``openai``), failing fast offline.

Shape shorthand:
    N: batch size
    H, W: image size; P: patch size; s: patch-embedding stride
    h, w: patch grid, h = (H - P) // s + 1, w = (W - P) // s + 1; L = h * w
    Wv: visual transformer width (768); D: joint embedding width (512)
"""
from __future__ import annotations

import copy
import logging
import math
import os
import socket
import warnings
from typing import Any, Dict, Mapping, Optional, Tuple
from urllib.parse import urlparse

import open_clip
import open_clip.pretrained
import torch
import torch.nn.functional as F
from open_clip.factory import load_state_dict
from open_clip.model import CLIP
from torch import Tensor, nn

__all__ = [
    "TINY_CLIP_CONFIG", "clip_model_config", "convert_clip_state_dict", "resize_pos_embed",
    "read_clip_checkpoint", "create_clip", "ClipVisualBackbone", "grid_size_for",
]

logger = logging.getLogger(__name__)

#: Tiny random CLIP for tests and the CPU demo (same structure as ViT-B-16: 14x14 grid at 224, patch 16,
#: causal 77-token text transformer with the CLIP BPE vocabulary).
TINY_CLIP_CONFIG: Dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 128, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_CLIP_NAME = "tiny"
#: Keys of OpenAI JIT state dicts that are not parameters (open_clip ``build_model_from_openai_state_dict``).
_OPENAI_META_KEYS = ("input_resolution", "context_length", "vocab_size")
#: Non-parameter tensors that TorchScript archives carry and the model rebuilds itself (causal text mask).
_DERIVED_KEY_SUFFIX = "attn_mask"
#: Seconds to wait when probing whether a download host is reachable before handing over to open_clip,
#: whose Hugging Face client otherwise retries for about 45 s when offline.
_PROBE_TIMEOUT_S = 3.0
_HTTPS_PORT = 443
_HF_HOST = "huggingface.co"
_HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def grid_size_for(image_size: Tuple[int, int], patch_size: int, stride: int) -> Tuple[int, int]:
    """Patch grid of a conv patch embedding: ((H - P) // s + 1, (W - P) // s + 1)."""
    height, width = image_size
    if height < patch_size or width < patch_size:
        raise ValueError(f"image size {image_size} is smaller than the patch size {patch_size}")
    return (height - patch_size) // stride + 1, (width - patch_size) // stride + 1


def clip_model_config(name: str) -> Dict[str, Any]:
    """open_clip model config for ``name`` (a built-in open_clip name such as ``ViT-B-16``, or ``tiny``)."""
    if name == TINY_CLIP_NAME:
        return copy.deepcopy(TINY_CLIP_CONFIG)
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise KeyError(f"unknown CLIP model '{name}' (profd.clip.name); use 'tiny' or an open_clip ViT name "
                       f"such as ViT-B-16 (open_clip.list_models())")
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    if cfg.get("custom_text") or "timm_model_name" in vision or "hf_model_name" in text or \
            isinstance(vision.get("layers"), (list, tuple)):
        raise ValueError(f"CLIP model '{name}' is not a plain ViT + CLIP text transformer, "
                         f"the only kind ProFD supports")
    return copy.deepcopy(cfg)


def resize_pos_embed(pos_embed: Tensor, grid_size: Tuple[int, int], num_prefix_tokens: int = 1) -> Tensor:
    """Resize a ViT positional embedding to a new patch grid, keeping the prefix (class) tokens.

    The source grid is square (CLIP: 14x14 at 224); it is resized with bilinear interpolation,
    align_corners=False (official ``clip/model.py:516-532``).

    Args:
        pos_embed: (num_prefix + G*G, Wv) positional embedding.
        grid_size: target (h, w).
        num_prefix_tokens: leading non-spatial tokens kept as they are.

    Returns:
        (num_prefix + h*w, Wv) positional embedding.
    """
    prefix, grid = pos_embed[:num_prefix_tokens], pos_embed[num_prefix_tokens:]  # (1, Wv), (G*G, Wv)
    side = math.isqrt(grid.shape[0])
    if side * side != grid.shape[0]:
        raise ValueError(f"positional embedding with {grid.shape[0]} spatial tokens is not a square grid")
    if (side, side) == tuple(grid_size):
        return pos_embed.clone()
    grid = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, Wv, G, G)
    grid = F.interpolate(grid.float(), size=tuple(grid_size), mode="bilinear", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(grid_size[0] * grid_size[1], -1).to(pos_embed.dtype)  # (h*w, Wv)
    return torch.cat([prefix, grid], dim=0)


def convert_clip_state_dict(state_dict: Mapping[str, Any]) -> Dict[str, Tensor]:
    """Normalise an OpenAI or open_clip CLIP checkpoint to open_clip ``CLIP`` key names, in fp32.

    Handles: a ``{'state_dict': ...}`` wrapper, DataParallel ``module.`` prefixes, the OpenAI JIT
    metadata entries (``input_resolution``, ``context_length``, ``vocab_size``) and causal
    ``attn_mask`` tensors, open_clip
    ``CustomTextCLIP`` (``text.*``) keys, and fp16 OpenAI weights (cast to fp32, as the official code does).
    """
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
        state_dict = state_dict["state_dict"]
    out: Dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("module."):
            key = key[len("module."):]
        if key in _OPENAI_META_KEYS or key.endswith(_DERIVED_KEY_SUFFIX) or not isinstance(value, Tensor):
            continue
        if key.startswith("text."):  # open_clip CustomTextCLIP layout -> CLIP layout
            key = key[len("text."):]
        out[key] = value.float() if value.is_floating_point() else value
    return out


def read_clip_checkpoint(path: str) -> Dict[str, Tensor]:
    """Read a CLIP checkpoint file (OpenAI JIT archive, OpenAI/open_clip state dict, or safetensors)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"profd.clip.pretrained: CLIP checkpoint not found: {path}")
    try:  # OpenAI releases are TorchScript archives
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated but reads them fine
            state_dict = torch.jit.load(path, map_location="cpu").state_dict()
    except RuntimeError:
        state_dict = load_state_dict(path, device="cpu")
    return convert_clip_state_dict(state_dict)


def _host_reachable(host: str) -> bool:
    """Whether a TCP connection to ``host``:443 opens within a few seconds."""
    try:
        with socket.create_connection((host, _HTTPS_PORT), timeout=_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _cached_weights(pcfg: Mapping[str, Any], cache_dir: Optional[str]) -> Optional[str]:
    """Path of already-downloaded weights for an open_clip pretrained config, if any."""
    url = pcfg.get("url", "")
    if url:
        target = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        if os.path.isfile(target):
            return target
    hub = pcfg.get("hf_hub", "")
    if hub:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        repo, filename = os.path.split(hub)  # 'org/model/' -> ('org/model', ''): open_clip's default file
        for name in ((filename,) if filename else _HF_WEIGHT_FILES):
            found = try_to_load_from_cache(repo, name, cache_dir=cache_dir or None)
            if isinstance(found, str):
                return found
    return None


def _fetch_pretrained(name: str, tag: str, cache_dir: Optional[str]) -> str:
    """Local path of open_clip's ``tag`` weights for ``name``: cache, else download, else a one-line error."""
    pcfg = open_clip.pretrained.get_pretrained_cfg(name, tag)
    origin = "OpenAI " if tag == "openai" else ""
    where = f" from {pcfg['url']}" if pcfg.get("url") else ""
    hint = (f"download the {origin}CLIP {name} checkpoint{where} and set "
            f"`profd.clip.pretrained /path/to/{name}.pt`")
    try:
        cached = _cached_weights(pcfg, cache_dir)
        if cached:
            return cached
        url_host = urlparse(pcfg.get("url", "")).hostname
        use_hub = bool(pcfg.get("hf_hub")) and _host_reachable(_HF_HOST)
        if not use_hub and not (url_host and _host_reachable(url_host)):
            raise ConnectionError(f"cannot reach {_HF_HOST} or {url_host}")
        path = open_clip.pretrained.download_pretrained(pcfg, prefer_hf_hub=use_hub,
                                                        cache_dir=cache_dir or None)
        if not path:
            raise FileNotFoundError("open_clip returned no file")
        return path
    except Exception as err:  # any download failure -> one actionable line, fail fast
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        message = f"profd.clip.pretrained={tag}: could not get the weights ({reason}); {hint}"
        raise RuntimeError(message) from None


def create_clip(name: str = "ViT-B-16", pretrained: str = "none", *, cache_dir: Optional[str] = None,
                quick_gelu: bool = True) -> CLIP:
    """Build an open_clip ``CLIP`` (fp32, CPU) and load its weights.

    Args:
        name: open_clip model name (``ViT-B-16``) or ``tiny``.
        pretrained: ``none`` / ``''`` (random init), an open_clip tag for ``name`` (``openai``: downloaded
            or taken from the cache; an offline failure raises a one-line RuntimeError saying what to
            download), or a path to a local checkpoint (OpenAI JIT / state dict or open_clip format).
        cache_dir: download cache ('' or None = open_clip default).
        quick_gelu: QuickGELU activations (OpenAI CLIP weights were trained with them).

    Returns:
        The CLIP model (visual tower at its native square resolution).

    Raises:
        FileNotFoundError: ``pretrained`` is neither a known tag nor an existing file.
        RuntimeError: a named tag could not be downloaded, or the checkpoint does not fit the model.
    """
    config = clip_model_config(name)
    source = (pretrained or "none").strip()
    if source.lower() == "none":
        return CLIP(**config, quick_gelu=quick_gelu)
    if name != TINY_CLIP_NAME and open_clip.pretrained.get_pretrained_cfg(name, source):
        path = _fetch_pretrained(name, source, cache_dir)  # before building: fail fast
    elif os.path.isfile(source):
        path = source
    else:
        raise FileNotFoundError(f"profd.clip.pretrained: CLIP checkpoint not found: '{source}' is neither "
                                f"a file nor a known open_clip tag for {name} (use openai, a path or none)")
    state_dict = read_clip_checkpoint(path)
    model = CLIP(**config, quick_gelu=quick_gelu)
    if "logit_scale" in state_dict:
        state_dict["logit_scale"] = state_dict["logit_scale"].reshape(model.logit_scale.shape)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"CLIP checkpoint {path} does not match {name}: missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]}")
    logger.info("loaded CLIP %s weights from %s", name, path)
    return model


class ClipVisualBackbone(nn.Module):
    """CLIP ViT returning the projected class token and patch tokens at any input size and stride.

    Args:
        visual: an open_clip ``VisionTransformer`` (taken over, not copied) with a square learnable
            positional grid and ``pool_type='tok'``.
        image_size: (H, W) input size; the positional grid is resized to the patch grid.
        stride: patch-embedding stride s (``profd.clip.stride``; 16 = the patch size, 12 = ProFD*).
    """

    def __init__(self, visual: nn.Module, *, image_size: Tuple[int, int], stride: int) -> None:
        super().__init__()
        patch_size = visual.conv1.kernel_size[0]
        self.patch_size = int(patch_size)
        self.stride = int(stride)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.grid_size = grid_size_for(self.image_size, self.patch_size, self.stride)
        visual.conv1.stride = (self.stride, self.stride)
        with torch.no_grad():
            resized = resize_pos_embed(visual.positional_embedding.detach(), self.grid_size)
        visual.positional_embedding = nn.Parameter(resized)  # (1 + L, Wv)
        visual.image_size, visual.grid_size = self.image_size, self.grid_size
        self.visual = visual
        self.embed_dim = int(visual.proj.shape[1])

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        """Encode images.

        Args:
            images: (N, 3, H, W) normalised images of size ``image_size``.

        Returns:
            cls: (N, D) projected class token (global feature F_g).
            patches: (N, L, D) projected patch tokens E_pat, row-major over the (h, w) grid.
        """
        visual = self.visual
        x = visual.conv1(images)  # (N, Wv, h, w)
        if tuple(x.shape[-2:]) != self.grid_size:
            raise ValueError(f"input {tuple(images.shape[-2:])} gives a {tuple(x.shape[-2:])} grid; the "
                             f"backbone was built for {self.image_size} (grid {self.grid_size})")
        x = x.flatten(2).transpose(1, 2)  # (N, L, Wv)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (N, 1, Wv)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)  # (N, 1+L, Wv)
        x = visual.transformer(visual.ln_pre(x))  # (N, 1+L, Wv)
        x = visual.ln_post(x) @ visual.proj  # (N, 1+L, D), ln_post and projection on ALL tokens
        return x[:, 0], x[:, 1:]
