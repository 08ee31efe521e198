"""Check a whole config before any data or model is built (no torch import).

:func:`validate_config` checks every enumerated choice and every value range; :func:`validate_save_dir`
checks that ``data.save_dir`` can be created and written without creating anything. Each failure is one
:class:`~profd_plugin.errors.ConfigError` line naming the key, the value and what is allowed.
"""
from __future__ import annotations

import difflib
import math
import os
import os.path as osp
from typing import Any, Callable, Sequence, Tuple

from yacs.config import CfgNode

from . import choices as C
from .data.parts import PART_GROUPS
from .errors import ConfigError

__all__ = ["validate_config", "validate_save_dir"]

#: the patch size of every CLIP backbone the plugin builds: images must hold at least one patch
MIN_IMAGE_SIDE = 16
CUDA_PREFIX = "cuda"


def _get(cfg: CfgNode, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{key} = {value!r}: {allowed}")


def _choice(cfg: CfgNode, key: str, options: Sequence[str]) -> None:
    value = _get(cfg, key)
    if value not in options:
        close = difflib.get_close_matches(str(value), list(options), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        _fail(key, value, f"not one of {', '.join(options)}{hint}")


def _names(cfg: CfgNode, key: str, options: Sequence[str], *, allow_empty: bool) -> None:
    values = _get(cfg, key)
    values = [values] if isinstance(values, str) else list(values)
    if not values and not allow_empty:
        _fail(key, values, "needs at least one name")
    for value in values:
        if value not in options:
            close = difflib.get_close_matches(str(value), list(options), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            _fail(key, value, f"unknown; valid: {', '.join(options)}{hint}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _check(cfg: CfgNode, key: str, ok: Callable[[Any], bool], allowed: str) -> None:
    value = _get(cfg, key)
    if not ok(value):
        _fail(key, value, allowed)


def _pair(lo: float, hi: float) -> Callable[[Any], bool]:
    """A [a, b] list with lo <= a <= b <= hi."""
    return lambda v: (len(v) == 2 and all(_number(x) for x in v) and lo <= v[0] <= v[1] <= hi)


_POSITIVE = (lambda v: _number(v) and v > 0, "must be > 0")
_NON_NEGATIVE = (lambda v: _number(v) and v >= 0, "must be >= 0")
_PROBABILITY = (lambda v: _number(v) and 0 <= v <= 1, "must be in [0, 1]")
_FRACTION = (lambda v: _number(v) and 0 <= v < 1, "must be in [0, 1)")
_POSITIVE_INT = (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                 "must be an integer >= 1")
_NON_NEGATIVE_INT = (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                     "must be an integer >= 0")
_IMAGE_SIDE = (lambda v: isinstance(v, int) and v >= MIN_IMAGE_SIDE,
               f"must be an integer >= {MIN_IMAGE_SIDE} (one patch)")

#: (key, (check, what is allowed)) for every numeric key
_RANGES: Tuple[Tuple[str, Tuple[Callable[[Any], bool], str]], ...] = (
    ("train.lr", _POSITIVE), ("train.weight_decay", _NON_NEGATIVE), ("train.max_epoch", _NON_NEGATIVE_INT),
    ("train.start_epoch", _NON_NEGATIVE_INT), ("train.batch_size", _POSITIVE_INT),
    ("train.fixbase_epoch", _NON_NEGATIVE_INT), ("train.base_lr_mult", _NON_NEGATIVE),
    ("train.gamma", _POSITIVE),
    ("train.print_freq", _POSITIVE_INT), ("sgd.momentum", _PROBABILITY), ("sgd.dampening", _PROBABILITY),
    ("rmsprop.alpha", _FRACTION), ("adam.beta1", _FRACTION), ("adam.beta2", _FRACTION),
    ("loss.softmax.label_smooth", (lambda v: isinstance(v, bool), "must be True or False")),
    ("loss.triplet.margin", _NON_NEGATIVE), ("loss.triplet.weight_t", _NON_NEGATIVE),
    ("loss.triplet.weight_x", _NON_NEGATIVE), ("sampler.num_instances", _POSITIVE_INT),
    ("sampler.num_cams", _POSITIVE_INT), ("sampler.num_datasets", _POSITIVE_INT),
    ("data.workers", _NON_NEGATIVE_INT), ("data.height", _IMAGE_SIDE), ("data.width", _IMAGE_SIDE),
    ("data.k_tfm", (lambda v: v == 1, "must be 1 (one augmented view per image)")),
    ("data.norm_mean", (lambda v: len(v) == 3 and all(_number(x) for x in v), "must be 3 numbers")),
    ("data.norm_std", (lambda v: len(v) == 3 and all(_number(x) and x > 0 for x in v),
                       "must be 3 numbers > 0")),
    ("test.batch_size", _POSITIVE_INT), ("test.start_eval", _NON_NEGATIVE_INT),
    ("test.eval_freq", (lambda v: isinstance(v, int), "must be an integer (<= 0: only at the end)")),
    ("test.visrank_topk", _POSITIVE_INT),
    ("test.ranks", (lambda v: len(v) > 0 and all(isinstance(r, int) and r >= 1 for r in v),
                    "must be a non-empty list of integers >= 1")),
    ("train.stepsize", (lambda v: all(isinstance(s, int) and s >= 0 for s in _as_list(v)),
                        "must be an integer or a list of integers >= 0")),
    ("profd.clip.stride", _POSITIVE_INT), ("profd.prompt.n_ctx", _NON_NEGATIVE_INT),
    ("profd.decoder.num_layers", _POSITIVE_INT), ("profd.decoder.num_heads", _POSITIVE_INT),
    ("profd.decoder.dropout", _FRACTION), ("profd.decoder.ffn_ratio", _POSITIVE_INT),
    ("profd.visibility.temperature", _POSITIVE), ("profd.visibility.threshold", _FRACTION),
    ("profd.masks.bg_threshold", _PROBABILITY), ("profd.masks.sharpness", _POSITIVE),
    ("profd.masks.scale", _POSITIVE_INT), ("profd.masks.patch_label_scale", _POSITIVE),
    ("profd.augment.pad", _NON_NEGATIVE_INT), ("profd.augment.crop_prob", _PROBABILITY),
    ("profd.augment.erase_prob", _PROBABILITY), ("profd.augment.jitter_prob", _PROBABILITY),
    ("profd.augment.flip_prob", _PROBABILITY), ("profd.augment.brightness", _NON_NEGATIVE),
    ("profd.augment.contrast", _NON_NEGATIVE), ("profd.augment.saturation", _NON_NEGATIVE),
    ("profd.augment.hue", (lambda v: _number(v) and 0 <= v <= 0.5, "must be in [0, 0.5]")),
    ("profd.augment.erase_area", (_pair(1e-9, 1.0), "must be [min, max] with 0 < min <= max <= 1")),
    ("profd.augment.erase_ratio", (_pair(1e-9, math.inf), "must be [min, max] with 0 < min <= max")),
    ("profd.loss.id_global", _NON_NEGATIVE), ("profd.loss.triplet_global", _NON_NEGATIVE),
    ("profd.loss.id_parts", _NON_NEGATIVE), ("profd.loss.triplet_parts", _NON_NEGATIVE),
    ("profd.loss.label_smooth", _FRACTION), ("profd.loss.triplet_margin", _NON_NEGATIVE),
    ("profd.loss.attention", _NON_NEGATIVE), ("profd.loss.attention_temperature", _POSITIVE),
    ("profd.loss.alignment", _NON_NEGATIVE), ("profd.loss.alignment_logit_scale", _POSITIVE),
    ("profd.loss.alignment_label_smooth", _FRACTION), ("profd.loss.diversity", _NON_NEGATIVE),
    ("profd.loss.visibility", _NON_NEGATIVE), ("profd.loss.focal_alpha", _PROBABILITY),
    ("profd.loss.focal_gamma", _NON_NEGATIVE), ("profd.loss.pcl_global", _NON_NEGATIVE),
    ("profd.loss.pcl_parts", _NON_NEGATIVE), ("profd.loss.pcl_temperature", _POSITIVE),
    ("profd.loss.pcl_momentum", _PROBABILITY), ("profd.optim.backbone_lr_mult", _NON_NEGATIVE),
    ("profd.train.warmup_epochs", _NON_NEGATIVE_INT),
    ("profd.train.warmup_factor", (lambda v: _number(v) and 0 < v <= 1, "must be in (0, 1]")),
    ("profd.train.grad_clip", _NON_NEGATIVE), ("profd.train.checkpoint_freq", _POSITIVE_INT),
    ("profd.test.chunk_size", _POSITIVE_INT),
)


def _check_choices(cfg: CfgNode) -> None:
    profd = cfg.model.name == C.PROFD_MODEL
    _choice(cfg, "model.name", (C.PROFD_MODEL,) + C.TORCHREID_MODELS)
    datasets = tuple(dict.fromkeys(C.PLUGIN_DATASETS + C.TORCHREID_DATASETS))
    _names(cfg, "data.sources", datasets, allow_empty=False)
    _names(cfg, "data.targets", datasets, allow_empty=False)
    _names(cfg, "data.transforms", C.TRAIN_TRANSFORMS, allow_empty=True)
    optimizers = C.PROFD_OPTIMIZERS if profd else C.PROFD_OPTIMIZERS + C.HOST_OPTIMIZERS
    _choice(cfg, "train.optim", optimizers)
    _choice(cfg, "train.lr_scheduler", C.SCHEDULERS)
    _choice(cfg, "loss.name", C.HOST_LOSSES)
    _choice(cfg, "sampler.train_sampler", C.SAMPLERS)
    _choice(cfg, "test.dist_metric", C.HOST_DIST_METRICS)
    _choice(cfg, "profd.test.distance", C.DIST_MODES)
    _choice(cfg, "profd.test.metric", C.DIST_METRICS)
    _choice(cfg, "profd.decoder.attention", C.ATTENTION_MODES)
    _choice(cfg, "profd.visibility.test_mode", C.VISIBILITY_MODES)
    _choice(cfg, "profd.train.amp", C.AMP_MODES)
    _choice(cfg, "profd.loss.diversity_mode", C.DIVERSITY_MODES)
    _choice(cfg, "profd.loss.pcl_update", C.MEMORY_UPDATE_MODES)
    _choice(cfg, "profd.masks.grouping", tuple(PART_GROUPS))
    device = cfg.profd.test.device
    if device not in ("auto", "cpu") and not device.startswith(CUDA_PREFIX):
        _fail("profd.test.device", device, "not one of auto, cpu, cuda, cuda:<index>")


def _check_relations(cfg: CfgNode) -> None:
    if cfg.sampler.train_sampler == "RandomIdentitySampler":
        batch, k = cfg.train.batch_size, cfg.sampler.num_instances
        if batch % k:
            _fail("train.batch_size", batch,
                  f"must be a multiple of sampler.num_instances ({k}): batches are P identities x K images")
    if cfg.train.start_epoch > cfg.train.max_epoch:
        _fail("train.start_epoch", cfg.train.start_epoch,
              f"must be <= train.max_epoch ({cfg.train.max_epoch})")


def validate_config(cfg: CfgNode) -> None:
    """Check every enumerated choice, value range and relation of ``cfg``.

    Raises:
        ConfigError: naming the first bad key, its value and what is allowed.
    """
    _check_choices(cfg)
    for key, (ok, allowed) in _RANGES:
        _check(cfg, key, ok, allowed)
    _check_relations(cfg)


def validate_save_dir(save_dir: str) -> None:
    """Check that ``save_dir`` can be created and written (creates nothing).

    Raises:
        ConfigError: it is a file, lies under a file, or its first existing ancestor is not writable.
    """
    path = osp.abspath(osp.expanduser(save_dir or "."))
    probe = path
    while not osp.exists(probe):
        parent = osp.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if osp.exists(probe) and not osp.isdir(probe):
        where = "is a file" if probe == path else f"lies under the file {probe}"
        raise ConfigError(f"data.save_dir = {save_dir!r}: {where}; choose a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"data.save_dir = {save_dir!r}: {probe} is not writable")
