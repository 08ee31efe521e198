"""CLIP through open_clip: model creation, pretrained loading and the ReID visual backbone.

Official ProFD uses OpenAI CLIP ViT-B/16 (Cuixxx/ProFD ``profd.py:443-485``, ``clip/model.py:280-302,
516-532``): the patch-embedding stride may be smaller than the patch (12 -> 21x10 grid, "ProFD*"), the
14x14 positional grid is resized bilinearly (align_corners=False) to the patch grid with the class-token
embedding kept, and ``ln_post`` plus the projection (768 -> 512) are applied to ALL tokens: the class
token is the global feature F_g and the patch tokens are E_pat (paper Sec. 4.1, 5.2).

Models are built by open_clip's factory (``open_clip.create_model``; the ``tiny`` config is registered
from ``model_configs/tiny.json`` with ``open_clip.add_model_config``) and checkpoint files are read by
``open_clip.factory.load_state_dict``; positional grids are resampled by timm's
``resample_abs_pos_embed``. What those libraries lack is kept here, each piece saying why
(:func:`_read_checkpoint`, :func:`_fetch_pretrained`). :func:`create_clip` touches the network only for a
named tag (``openai``), failing fast offline.

Shape shorthand:
    N: batch size
    H, W: image size; P: patch size; s: patch-embedding stride
    h, w: patch grid, h = (H - P) // s + 1, w = (W - P) // s + 1; L = h * w
    Wv: visual transformer width (768); D: joint embedding width (512)
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple
from urllib.parse import urlparse

import open_clip
import open_clip.pretrained
import torch
from open_clip.factory import load_state_dict
from open_clip.model import CLIP
from timm.layers import resample_abs_pos_embed
from torch import Tensor, nn

from ..errors import ConfigError, WeightsError

__all__ = ["TINY_CLIP_CONFIG", "TINY_CLIP_NAME", "resize_pos_embed", "create_clip", "ClipVisualBackbone",
           "grid_size_for"]

logger = logging.getLogger(__name__)

TINY_CLIP_NAME = "tiny"
#: open_clip config of the tiny random CLIP for tests and the CPU demo (same structure as ViT-B-16: 14x14
#: grid at 224, patch 16, causal 77-token text transformer with the CLIP BPE vocabulary), registered with
#: ``open_clip.add_model_config`` on first use.
_TINY_CONFIG_FILE = Path(__file__).with_name("model_configs") / f"{TINY_CLIP_NAME}.json"
TINY_CLIP_CONFIG: Dict[str, Any] = json.loads(_TINY_CONFIG_FILE.read_text())
#: Keys of OpenAI checkpoints that are not parameters (open_clip drops them only inside TorchScript archives).
_OPENAI_META_KEYS = ("input_resolution", "context_length", "vocab_size")
#: Non-parameter tensors that open_clip-traced archives carry and the model rebuilds (causal text mask).
_DERIVED_KEY_SUFFIX = "attn_mask"
#: Key prefix of open_clip's ``CustomTextCLIP`` text tower; ``CLIP`` keeps these at the top level.
_CUSTOM_TEXT_PREFIX = "text."
#: Start of the warning ``open_clip.create_model`` logs when it loads no weights itself; false here, where
#: :func:`create_clip` loads them right after building the model (or was asked for a random init).
_OPEN_CLIP_RANDOM_INIT_NOTICE = "No pretrained weights loaded"
#: Seconds to wait when probing whether a download host is reachable before handing over to open_clip,
#: whose Hugging Face client otherwise retries for about 45 s when offline.
_PROBE_TIMEOUT_S = 3.0
_HTTPS_PORT = 443
_HF_HOST = "huggingface.co"
_HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
#: Official positional-grid resize (``clip/model.py:516-532``): ``F.interpolate`` bilinear, no antialiasing,
#: align_corners False (timm's default None); the class token is the one prefix token.
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
    """Resample a ViT positional embedding to a new patch grid, keeping the prefix (class) tokens.

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


# ---------------------------------------------------------------------------------------------- creation
def _register_tiny_config() -> None:
    """Register the ``tiny`` config with open_clip once (a no-op when it is registered already)."""
    registered = open_clip.get_model_config(TINY_CLIP_NAME)
    if registered is None:
        open_clip.add_model_config(_TINY_CONFIG_FILE)
    elif registered != TINY_CLIP_CONFIG:
        raise RuntimeError(f"another open_clip model config named '{TINY_CLIP_NAME}' is registered")


def _check_model_name(name: str) -> None:
    """Raise unless ``name`` is an open_clip config of a plain ViT + CLIP text transformer (ProFD's kind)."""
    _register_tiny_config()
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ConfigError(f"unknown CLIP model '{name}' (profd.clip.name); use 'tiny' or an open_clip ViT "
                          f"name such as ViT-B-16 (open_clip.list_models())")
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    if cfg.get("custom_text") or "timm_model_name" in vision or "hf_model_name" in text or \
            isinstance(vision.get("layers"), (list, tuple)):
        raise ConfigError(f"CLIP model '{name}' is not a plain ViT + CLIP text transformer, "
                          f"the only kind ProFD supports")


class _DropNotice(logging.Filter):
    """Drops log records whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


@contextlib.contextmanager
def _without_random_init_notice() -> Iterator[None]:
    """Silence open_clip's "initialized randomly" warning (logged on the root logger) for one call."""
    root, notice = logging.getLogger(), _DropNotice(_OPEN_CLIP_RANDOM_INIT_NOTICE)
    root.addFilter(notice)
    try:
        yield
    finally:
        root.removeFilter(notice)


def _build_clip(name: str, quick_gelu: bool) -> CLIP:
    """Random-init open_clip ``CLIP`` ``name`` in fp32 on the CPU (``quick_gelu`` overrides the config)."""
    with _without_random_init_notice():
        return open_clip.create_model(name, precision="fp32", device="cpu", quick_gelu=quick_gelu)


def _read_checkpoint(path: str) -> Dict[str, Tensor]:
    """State dict of a CLIP checkpoint file, with open_clip ``CLIP`` key names.

    open_clip's ``load_state_dict`` reads state dicts (``{'state_dict': ...}`` wrappers, DataParallel
    ``module.`` prefixes, safetensors). Kept here, because open_clip lacks it:

    - TorchScript archives (the OpenAI releases) are read with ``torch.jit.load``: ``torch.load`` refuses them
      with ``weights_only=True``. ``open_clip.load_openai_model`` reads them too, but is not used: it infers
      the architecture from the weights (heads = width // 64: 2 instead of 4 vision and 1 instead of 2 text
      heads for ``tiny``, so another forward), always uses QuickGELU, rounds fp32 weights through fp16
      (it converts the model to fp16 before loading), fails on the ``attn_mask`` entry of open_clip-traced
      archives, and builds whatever architecture the file holds instead of checking it against
      ``profd.clip.name``.
    - OpenAI metadata entries outside TorchScript archives (OpenAI-format state dicts) and the causal
      ``attn_mask`` of open_clip-traced archives are dropped: they are not parameters.
    - ``CustomTextCLIP`` keys (``text.*``) are mapped to the ``CLIP`` layout (open_clip maps only the
      other way).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated but reads them fine
            state_dict = torch.jit.load(path, map_location="cpu").state_dict()
    except RuntimeError:  # not a TorchScript archive
        state_dict = load_state_dict(path)
    return {(key[len(_CUSTOM_TEXT_PREFIX):] if key.startswith(_CUSTOM_TEXT_PREFIX) else key): value
            for key, value in state_dict.items()
            if key not in _OPENAI_META_KEYS and not key.endswith(_DERIVED_KEY_SUFFIX)}


def _first_mismatch(expected: Mapping[str, Tensor], state_dict: Mapping[str, Any]) -> Optional[str]:
    """The first difference between a model's state dict and a checkpoint's, in one phrase (None: fits)."""
    for key, value in expected.items():
        if key not in state_dict:
            missing = [k for k in expected if k not in state_dict]
            return f"{len(missing)} tensor(s) missing, first {key}"
        shape = tuple(getattr(state_dict[key], "shape", ()))
        if shape != tuple(value.shape):
            return f"{key} has shape {shape}, the model's is {tuple(value.shape)}"
    unexpected = [k for k in state_dict if k not in expected]
    return f"{len(unexpected)} unexpected tensor(s), first {unexpected[0]}" if unexpected else None


def _load_weights(model: CLIP, state_dict: Dict[str, Tensor], *, name: str, path: str) -> None:
    """Load a checkpoint's weights exactly (strict; fp16/bf16 values are cast to the model's fp32)."""
    if "logit_scale" in state_dict:  # scalar vs 1-element tensor (open_clip does this in load_checkpoint)
        state_dict["logit_scale"] = state_dict["logit_scale"].reshape(model.logit_scale.shape)
    problem = _first_mismatch(model.state_dict(), state_dict)
    if problem:
        raise WeightsError(f"profd.clip.pretrained: CLIP checkpoint {path} does not fit profd.clip.name "
                           f"{name}: {problem}")
    model.load_state_dict(state_dict)


def _host_reachable(host: str) -> bool:
    """Whether a TCP connection to ``host``:443 opens within a few seconds."""
    try:
        with socket.create_connection((host, _HTTPS_PORT), timeout=_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _cached_weights(pcfg: Mapping[str, Any], cache_dir: Optional[str]) -> Optional[str]:
    """Path of already-downloaded weights for an open_clip pretrained config, if any (no network)."""
    url = pcfg.get("url", "")
    if url:  # where open_clip.pretrained.download_pretrained_from_url puts it
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
    """Local path of open_clip's ``tag`` weights for ``name``: cache, else download, else a one-line error.

    Kept here rather than handing the tag to ``open_clip.create_model``: open_clip has no network-free cache
    lookup, offline its Hugging Face client retries for about 45 s and its URL download ends in a
    traceback, so the cache is looked up and the hosts are probed (a few seconds) first; the download itself
    is open_clip's ``download_pretrained``.
    """
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
        raise WeightsError(message) from None


def create_clip(name: str = "ViT-B-16", pretrained: str = "none", *, cache_dir: Optional[str] = None,
                quick_gelu: bool = True) -> CLIP:
    """Build an open_clip ``CLIP`` (fp32, CPU) with ``open_clip.create_model`` and load its weights.

    Args:
        name: open_clip model name (``ViT-B-16``) or ``tiny``.
        pretrained: ``none`` / ``''`` (random init), an open_clip tag for ``name`` (``openai``: downloaded
            or taken from the cache; an offline failure raises a one-line RuntimeError saying what to
            download), or a path to a local checkpoint: an OpenAI TorchScript archive or state dict
            (fp16, with the ``input_resolution`` / ``context_length`` / ``vocab_size`` entries), or an
            open_clip checkpoint (``.pt`` / ``.bin`` / ``.safetensors``, ``{'state_dict': ...}`` wrappers,
            ``module.`` prefixes, ``CustomTextCLIP`` ``text.*`` keys). Weights are cast to fp32 exactly.
        cache_dir: download cache ('' or None = open_clip default).
        quick_gelu: QuickGELU activations (OpenAI CLIP weights were trained with them).

    Returns:
        The CLIP model (visual tower at its native square resolution).

    Raises:
        KeyError / ValueError: ``name`` is not an open_clip ViT config.
        FileNotFoundError: ``pretrained`` is neither a known tag nor an existing file.
        RuntimeError: a named tag could not be downloaded, or the checkpoint does not fit the model.
    """
    _check_model_name(name)
    source = (pretrained or "none").strip()
    if source.lower() == "none":
        return _build_clip(name, quick_gelu)
    if open_clip.pretrained.get_pretrained_cfg(name, source):
        path = _fetch_pretrained(name, source, cache_dir)  # before building: fail fast
    elif os.path.isfile(source):
        path = source
    else:
        raise WeightsError(f"profd.clip.pretrained: CLIP checkpoint not found: '{source}' is neither "
                           f"a file nor a known open_clip tag for {name} (use openai, a path or none)")
    state_dict = _read_checkpoint(path)
    model = _build_clip(name, quick_gelu)
    _load_weights(model, state_dict, name=name, path=path)
    logger.info("loaded CLIP %s weights from %s", name, path)
    return model


# ---------------------------------------------------------------------------------------------- backbone
class ClipVisualBackbone(nn.Module):
    """CLIP ViT returning the projected class token and patch tokens, at any input size and stride.

    The positional parameter holds the grid of the *built* input size ``image_size`` (CLIP's square
    pretraining grid resized when the backbone is built, then trained). An input of another size (H, W
    >= the patch size) is encoded with that grid resampled to its own patch grid by the same bilinear rule
    (:func:`resize_pos_embed`); at the built size the parameter is used as it is.

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
        super().__init__()
        self.patch_size = int(visual.conv1.kernel_size[0])
        self.stride = int(stride)
        visual.conv1.stride = (self.stride, self.stride)
        self.visual = visual
        self.embed_dim = int(visual.proj.shape[1])
        # resampled grids by input grid: (parameter version key, (1 + h*w, Wv) embedding)
        self._pos_cache: Dict[Tuple[int, int], Tuple[tuple, Tensor]] = {}
        # the pretraining grid of the parameter (224 / 16 = 14x14 for ViT-B/16), re-gridded just below
        self.image_size, self.grid_size = tuple(visual.image_size), tuple(visual.grid_size)
        self.set_image_size(image_size)

    def grid_for(self, image_size: Tuple[int, int]) -> Tuple[int, int]:
        """(h, w) patch grid of an (H, W) input; ValueError below the patch size."""
        return grid_size_for((int(image_size[0]), int(image_size[1])), self.patch_size, self.stride)

    def set_image_size(self, image_size: Tuple[int, int]) -> None:
        """Make ``image_size`` the built size: re-grid the positional parameter itself to its patch grid.

        Resampled from the current grid with :func:`resize_pos_embed`. Lets a loader give a model built at
        one size the positional-parameter shape of a checkpoint trained at another size, then load it
        exactly. The parameter is replaced by a new one (``requires_grad`` kept): call this before an
        optimizer is built.
        """
        size = (int(image_size[0]), int(image_size[1]))
        grid = self.grid_for(size)
        old = self.visual.positional_embedding
        with torch.no_grad():
            resized = resize_pos_embed(old.detach(), grid, old_size=self.grid_size)  # (1 + h*w, Wv)
        self.visual.positional_embedding = nn.Parameter(resized, requires_grad=old.requires_grad)
        self.image_size, self.grid_size = size, grid
        self.visual.image_size, self.visual.grid_size = size, grid
        self._pos_cache.clear()

    def positional_embedding_for(self, grid_size: Tuple[int, int]) -> Tensor:
        """(1 + h*w, Wv) positional embedding of an input with patch grid ``grid_size``.

        The parameter itself at the built grid; otherwise the built grid resampled to ``grid_size``
        (differentiable). In eval mode without gradients that result is cached per grid, keyed on the
        parameter's storage and in-place version, so optimizer steps and ``load_state_dict`` invalidate it
        (as ``PartPromptLearner`` does for the prompt features).
        """
        pos = self.visual.positional_embedding
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

    def train(self, mode: bool = True) -> "ClipVisualBackbone":
        """Set the mode and drop the cached resampled grids."""
        self._pos_cache.clear()
        return super().train(mode)

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
