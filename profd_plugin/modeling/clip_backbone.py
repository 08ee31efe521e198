"""CLIP through open_clip: model creation, pretrained loading, and the visual backbone of a CLIP model.

ProFD reads the visual tower through :class:`~profd_plugin.modeling.visual.VisualBackbone`: the ViT
(:class:`~profd_plugin.modeling.clip_vit.ClipVisualBackbone`, official ProFD's ViT-B/16) or the ResNet
(:class:`~profd_plugin.modeling.clip_resnet.ClipResNetBackbone`, RN50 as in CLIP-ReID), chosen by the type
of the tower (:func:`build_visual_backbone`).

Models are built by open_clip's factory (``open_clip.create_model``; the plugin's own configs
``model_configs/*.json`` -- ``tiny`` (ViT), ``tiny_rn``, ``tiny_rn10`` and ``tiny_rn10_k3`` (ResNets) -- are
registered with ``open_clip.add_model_config``; the ``BASIC_BLOCK_CLIP_CONFIGS`` among them get the plugin's
BasicBlock tower, :class:`~profd_plugin.modeling.basic_resnet.BasicBlockResNet`, in place of open_clip's
``ModifiedResNet``)
and checkpoint files are read by ``open_clip.factory.load_state_dict``.
What open_clip lacks is kept here, each piece saying why (:func:`_read_checkpoint`,
:func:`_fetch_pretrained`). :func:`create_clip` touches the network only for a named tag (``openai``),
failing fast offline.
"""
from __future__ import annotations

import contextlib
import json
import logging
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
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer
from torch import Tensor, nn

from ..errors import ConfigError, WeightsError
from .basic_resnet import BasicBlockResNet
from .clip_resnet import ClipResNetBackbone
from .clip_vit import ClipVisualBackbone
from .visual import VisualBackbone, grid_size_for, resize_pos_embed

__all__ = ["TINY_CLIP_CONFIG", "TINY_CLIP_NAME", "TINY_RN_CLIP_CONFIG", "TINY_RN_CLIP_NAME",
           "PLUGIN_CLIP_CONFIGS", "BASIC_BLOCK_CLIP_CONFIGS",
           "resize_pos_embed", "create_clip", "build_visual_backbone",
           "ClipVisualBackbone", "ClipResNetBackbone", "grid_size_for"]

logger = logging.getLogger(__name__)

_CONFIG_DIR = Path(__file__).with_name("model_configs")
#: The plugin's own open_clip configs by name (``model_configs/<name>.json``), registered with
#: ``open_clip.add_model_config`` on first use.
PLUGIN_CLIP_CONFIGS: Dict[str, Dict[str, Any]] = {
    path.stem: json.loads(path.read_text()) for path in sorted(_CONFIG_DIR.glob("*.json"))}
TINY_CLIP_NAME = "tiny"
#: Tiny random CLIP ViT for tests and the CPU demo (same structure as ViT-B-16: 14x14 grid at 224, patch
#: 16, causal 77-token text transformer with the CLIP BPE vocabulary).
TINY_CLIP_CONFIG: Dict[str, Any] = PLUGIN_CLIP_CONFIGS[TINY_CLIP_NAME]
TINY_RN_CLIP_NAME = "tiny_rn"
#: Small random CLIP ResNet for tests and CPU runs (RN50's structure -- 3-conv stem, anti-aliased
#: bottlenecks, attention pool -- with one bottleneck per stage and width 16: 512 feature channels, 8
#: attention-pool heads; the tiny text transformer).
TINY_RN_CLIP_CONFIG: Dict[str, Any] = PLUGIN_CLIP_CONFIGS[TINY_RN_CLIP_NAME]
#: Plugin ResNet configs whose visual tower is :class:`BasicBlockResNet` built from the config's ``layers``,
#: ``width``, ``image_size`` and ``embed_dim``, with the stem convolution's kernel size given here
#: (open_clip's config format knows no such tower, so the name says it): ``tiny_rn10``, ResNet-10's depth at
#: stage widths 48 .. 384 with ResNet's 7x7 stem (the main job's backbone), and ``tiny_rn10_k3``, the same
#: with a 3x3 stem.
BASIC_BLOCK_CLIP_CONFIGS: Mapping[str, int] = {"tiny_rn10": 7, "tiny_rn10_k3": 3}
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


# ---------------------------------------------------------------------------------------------- creation
def _register_plugin_configs() -> None:
    """Register the plugin's configs with open_clip once (a no-op for those registered already)."""
    for name, config in PLUGIN_CLIP_CONFIGS.items():
        registered = open_clip.get_model_config(name)
        if registered is None:
            open_clip.add_model_config(_CONFIG_DIR / f"{name}.json")
        elif registered != config:
            raise RuntimeError(f"another open_clip model config named '{name}' is registered")


def _check_model_name(name: str) -> None:
    """Raise unless ``name`` is an open_clip config of a CLIP ViT or ResNet with the CLIP text transformer."""
    _register_plugin_configs()
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ConfigError(f"unknown CLIP model '{name}' (profd.clip.name); use an open_clip ViT or ResNet "
                          f"name such as ViT-B-16 or RN50 (open_clip.list_models()), or "
                          f"{', '.join(PLUGIN_CLIP_CONFIGS)}")
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    if cfg.get("custom_text") or "timm_model_name" in vision or "hf_model_name" in text:
        raise ConfigError(f"CLIP model '{name}' is not a CLIP ViT or ResNet with the CLIP text transformer, "
                          f"the kinds ProFD supports")


def build_visual_backbone(visual: nn.Module, *, image_size: Tuple[int, int], stride: int) -> VisualBackbone:
    """The ProFD backbone of an open_clip visual tower (taken over): ViT or ResNet, by its type.

    Args:
        visual: ``clip.visual`` of a model from :func:`create_clip`.
        image_size: built (H, W) input size.
        stride: ``profd.clip.stride``: the ViT's patch-embedding stride (16, 12 = ProFD*) or the ResNet's
            output stride (16 = last stride 1 as CLIP-ReID, 32).
    """
    if isinstance(visual, (ModifiedResNet, BasicBlockResNet)):
        return ClipResNetBackbone(visual, image_size=image_size, stride=stride)
    if isinstance(visual, VisionTransformer):
        return ClipVisualBackbone(visual, image_size=image_size, stride=stride)
    raise TypeError(f"no ProFD backbone for a {type(visual).__name__} visual tower")


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
    """Random-init open_clip ``CLIP`` ``name`` in fp32 on the CPU (``quick_gelu`` overrides the config).

    For a ``BASIC_BLOCK_CLIP_CONFIGS`` name, the ``ModifiedResNet`` open_clip builds is replaced by the
    ``BasicBlockResNet`` of the same config (a new random init, drawn after the text tower's)."""
    with _without_random_init_notice():
        model = open_clip.create_model(name, precision="fp32", device="cpu", quick_gelu=quick_gelu)
    if name in BASIC_BLOCK_CLIP_CONFIGS:
        cfg = PLUGIN_CLIP_CONFIGS[name]
        vision = cfg["vision_cfg"]
        model.visual = BasicBlockResNet(vision["layers"], cfg["embed_dim"], width=vision["width"],
                                        image_size=vision["image_size"],
                                        stem_kernel=BASIC_BLOCK_CLIP_CONFIGS[name])
    return model


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
        name: open_clip model name of a CLIP ViT or ResNet (``ViT-B-16``, ``RN50``), or ``tiny`` /
            ``tiny_rn`` / ``tiny_rn10`` / ``tiny_rn10_k3``.
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
        KeyError / ValueError: ``name`` is not an open_clip CLIP ViT / ResNet config.
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
        tags = open_clip.list_pretrained_tags_by_model(name)
        choices = f"one of its tags ({', '.join(tags)}), a path or none" if tags else \
            "a path or none: it has no released weights"
        raise WeightsError(f"profd.clip.pretrained: CLIP checkpoint not found: '{source}' is neither "
                           f"a file nor a known open_clip tag for {name} (use {choices})")
    state_dict = _read_checkpoint(path)
    model = _build_clip(name, quick_gelu)
    _load_weights(model, state_dict, name=name, path=path)
    logger.info("loaded CLIP %s weights from %s", name, path)
    return model
