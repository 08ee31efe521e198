"""Self-describing checkpoints: what a checkpoint holds, how it is read, verified and loaded.

Every checkpoint the plugin writes (any model: ProFD or a torchreid built-in) is one ``torch.save`` dict
that loads with ``weights_only=True``::

    format          "profd_plugin"            (FORMAT)
    format_version  1                         (FORMAT_VERSION)
    model_name      cfg.model.name
    num_classes     C training identities
    config          the full config as YAML text (cfg.dump())
    state_dict      the model's tensors (ProFD: memory banks included)
    epoch, rank1, optimizer, scheduler, scaler, seed      training state (resume)

Loading is strict: a checkpoint of another model or architecture stops with one line naming the file
and the first differing config key or tensor (:class:`~profd_plugin.errors.CheckpointError`); nothing is
ever silently dropped. The one tolerated difference is the number of identities when starting from
weights (``model.load_weights``): the identity classifiers and memory banks keep their fresh
initialisation and the banks are re-initialised by the next training run.

Checkpoints written before this format (a bare ``state_dict`` from an earlier profd_plugin or from
torchreid) are accepted where no config is needed; their architecture is checked tensor by tensor.
"""
from __future__ import annotations

import logging
import os.path as osp
import pickle
import zipfile
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from yacs.config import CfgNode

from .errors import CheckpointError

__all__ = [
    "FORMAT", "FORMAT_VERSION", "ARCHITECTURE_KEYS", "IDENTITY_PREFIXES", "make_checkpoint",
    "read_checkpoint", "checkpoint_config", "verify_config", "load_model_state", "build_from_checkpoint",
    "config_value", "load_into_built_model", "VARIANT_FREE_KEYS",
]

logger = logging.getLogger(__name__)

FORMAT = "profd_plugin"
FORMAT_VERSION = 1
#: config keys that decide the architecture or what the features mean: a checkpoint must agree on them
ARCHITECTURE_KEYS = (
    "model.name", "profd.clip.name", "profd.clip.stride", "data.height", "data.width", "data.norm_mean",
    "data.norm_std", "profd.clip.quick_gelu", "profd.prompt.n_ctx", "profd.prompt.class_specific",
    "profd.prompt.foreground_word", "profd.prompt.learnable_background", "profd.decoder.num_layers",
    "profd.decoder.num_heads", "profd.decoder.ffn_ratio", "profd.decoder.attention", "profd.masks.grouping",
)
#: state entries whose shape depends on the number of training identities (classifiers, memory banks)
IDENTITY_PREFIXES = ("classifier.", "memory.")
#: architecture keys in which a model built elsewhere (a torchreid variant) may differ from its checkpoint:
#: the input size (the positional grid is re-gridded to the checkpoint's before loading) and the
#: normalisation (the caller's preprocessing, e.g. FeatureExtractor's pixel_mean / pixel_std)
VARIANT_FREE_KEYS = ("data.height", "data.width", "data.norm_mean", "data.norm_std")
#: test-time model attributes taken from the checkpoint's config: they change features, not tensors
_TEST_TIME_ATTRIBUTES = {
    "visibility_mode": "profd.visibility.test_mode", "visibility_temperature": "profd.visibility.temperature",
    "visibility_threshold": "profd.visibility.threshold",
    "alignment_logit_scale": "profd.loss.alignment_logit_scale",
}
_DDP_PREFIX = "module."


def make_checkpoint(model: torch.nn.Module, cfg: Optional[CfgNode], *, num_classes: int, epoch: int,
                    rank1: float = 0.0, optimizer: Any = None, scheduler: Any = None, scaler: Any = None,
                    seed: int = 0) -> Dict[str, Any]:
    """The checkpoint dict of ``model`` (unwrapped from DDP) with its config and training state."""
    model = getattr(model, "module", model)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_name": cfg.model.name if cfg is not None else type(model).__name__,
        "num_classes": int(num_classes),
        "config": cfg.dump() if cfg is not None else None,
        "state_dict": model.state_dict(),
        "epoch": int(epoch),
        "rank1": float(rank1),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "seed": int(seed),
    }


def _load_file(path: str) -> Any:
    from .host import load_checkpoint  # weights_only=True, numpy scalars of old torchreid files allowed

    try:
        return load_checkpoint(path)
    except pickle.UnpicklingError:
        if zipfile.is_zipfile(path):  # a complete checkpoint archive whose pickle needs arbitrary code
            raise CheckpointError(f"checkpoint {path} holds Python objects that are not plain tensors and "
                                  "numbers: not a checkpoint written by profd_plugin or torchreid") from None
        raise CheckpointError(f"checkpoint {path} is truncated or not a PyTorch checkpoint file") from None
    except Exception as err:  # noqa: BLE001 - torch raises OSError/KeyError/RuntimeError for bad files
        if "TorchScript" in str(err):
            raise CheckpointError(f"{path} is a TorchScript archive, not a checkpoint (CLIP weights go to "
                                  "profd.clip.pretrained)") from None
        if not zipfile.is_zipfile(path):
            raise CheckpointError(f"checkpoint {path} is truncated or not a PyTorch checkpoint file "
                                  "(not a complete zip archive)") from None
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read ({first})") from None


def read_checkpoint(path: str) -> Dict[str, Any]:
    """Read a checkpoint file into the dict described in the module docstring.

    A bare state dict (tensors only) or a torchreid checkpoint (``{'state_dict': ...}``) is returned as
    ``{'state_dict': ..., 'format_version': 0}`` plus whatever else it holds.

    Raises:
        CheckpointError: missing file, a folder, a truncated/corrupt file, unsafe pickled objects, a
            TorchScript archive, or no model tensors; the message names the file.
    """
    if not path:
        raise CheckpointError("no checkpoint path given")
    path = osp.abspath(osp.expanduser(path))
    if osp.isdir(path):
        raise CheckpointError(f"checkpoint {path} is a folder, not a checkpoint file")
    if not osp.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    obj = _load_file(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        ckpt = dict(obj)
    elif isinstance(obj, Mapping) and obj and all(torch.is_tensor(v) for v in obj.values()):
        ckpt = {"state_dict": dict(obj)}
    else:
        raise CheckpointError(f"{path} is not a model checkpoint (no state_dict of tensors)")
    ckpt.setdefault("format_version", 0)
    ckpt["state_dict"] = {k[len(_DDP_PREFIX):] if k.startswith(_DDP_PREFIX) else k: v
                          for k, v in ckpt["state_dict"].items()}
    if ckpt["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {ckpt['format_version']}; this "
                              f"profd_plugin reads up to {FORMAT_VERSION}: upgrade profd_plugin")
    return ckpt


def checkpoint_config(ckpt: Mapping[str, Any], path: str) -> Optional[CfgNode]:
    """The config stored in ``ckpt`` (merged onto today's defaults), or None for older checkpoints.

    Raises:
        CheckpointError: the stored config has a key this version does not know.
    """
    text = ckpt.get("config")
    if not text:
        return None
    from .config import get_default_config

    cfg = get_default_config()
    try:
        cfg.merge_from_other_cfg(CfgNode.load_cfg(text))
    except Exception as err:  # noqa: BLE001 - yacs raises KeyError/AssertionError/ValueError
        raise CheckpointError(f"checkpoint {path}: its stored config does not fit this profd_plugin "
                              f"({' '.join(str(err).split())})") from None
    return cfg


def config_value(cfg: CfgNode, key: str) -> Any:
    """The value of a dotted key (lists for sequences, so values compare across YAML round trips)."""
    node = cfg
    for part in key.split("."):
        node = node[part]
    return list(node) if isinstance(node, (list, tuple)) else node


def verify_config(ckpt_cfg: Optional[CfgNode], cfg: CfgNode, path: str) -> None:
    """Check that the checkpoint was trained with this model and architecture.

    Raises:
        CheckpointError: naming the file and the first :data:`ARCHITECTURE_KEYS` key that differs (for a
            torchreid built-in only ``model.name``; its tensors are checked by :func:`load_model_state`).
    """
    if ckpt_cfg is None:
        return
    keys = ARCHITECTURE_KEYS if cfg.model.name == "profd" else ARCHITECTURE_KEYS[:1]
    for key in keys:
        theirs, ours = config_value(ckpt_cfg, key), config_value(cfg, key)
        if theirs != ours:
            raise CheckpointError(f"checkpoint {path} was trained with {key} {theirs!r}, this run has "
                                  f"{ours!r} (use the config the checkpoint was trained with: it is stored "
                                  "in the checkpoint and in its run folder's config.yaml)")


def _mismatches(model_state: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]
                ) -> List[Tuple[str, str]]:
    """(key, what differs) for every tensor that does not fit, in the model's order."""
    out = [(k, "missing from the checkpoint") for k in model_state if k not in state]
    out += [(k, f"shape {tuple(state[k].shape)} in the checkpoint, {tuple(v.shape)} in the model")
            for k, v in model_state.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    out += [(k, "not in the model") for k in state if k not in model_state]
    return out


def load_model_state(model: torch.nn.Module, ckpt: Mapping[str, Any], path: str, *,
                     allow_other_identities: bool = False) -> bool:
    """Load ``ckpt['state_dict']`` into ``model`` exactly.

    Args:
        model: the (unwrapped) model.
        ckpt: from :func:`read_checkpoint`.
        path: the file, for messages.
        allow_other_identities: tolerate a different number of identities: the tensors under
            :data:`IDENTITY_PREFIXES` keep the model's fresh values (everything else must fit).

    Returns:
        True if the identity tensors were left at their fresh values (another number of identities).

    Raises:
        CheckpointError: naming the file and the first tensor that does not fit.
    """
    model = getattr(model, "module", model)
    state, model_state = ckpt["state_dict"], model.state_dict()
    problems = _mismatches(model_state, state)
    skipped = [k for k, _ in problems if k.startswith(IDENTITY_PREFIXES)]
    identities = allow_other_identities and bool(skipped)
    if identities:
        problems = [(k, why) for k, why in problems if not k.startswith(IDENTITY_PREFIXES)]
    if problems:
        key, why = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(f"checkpoint {path} does not fit this model: tensor '{key}' {why}{more}")
    if identities:
        state = {k: v for k, v in state.items() if not k.startswith(IDENTITY_PREFIXES)}
    missing, unexpected = model.load_state_dict(state, strict=not identities)
    assert all(k.startswith(IDENTITY_PREFIXES) for k in missing) and not unexpected, (missing, unexpected)
    return identities


def build_from_checkpoint(path: str, *, device: str = "cpu", overrides: Tuple[str, ...] = ()
                          ) -> Tuple[torch.nn.Module, CfgNode, Dict[str, Any]]:
    """Rebuild the exact ProFD model a checkpoint was trained as, with its weights, in eval mode.

    Args:
        path: a checkpoint written by the plugin (format version >= 1: it carries its config).
        device: where to put the model.
        overrides: ``key value`` pairs applied to the stored config before building (e.g. test-time
            ``profd.visibility.*``); architecture keys cannot change the shapes of the stored tensors.

    Returns:
        ``(model, cfg, ckpt)``; ``cfg`` is frozen.

    Raises:
        CheckpointError: unreadable file, no stored config, or not a ProFD checkpoint.
    """
    ckpt = read_checkpoint(path)
    cfg = checkpoint_config(ckpt, path)
    if cfg is None:
        raise CheckpointError(f"checkpoint {path} stores no config (written by an older profd_plugin or by "
                              "torchreid): rebuild the model from its config and use model.load_weights")
    if cfg.model.name != "profd":
        raise CheckpointError(f"checkpoint {path} holds a '{cfg.model.name}' model, not ProFD")
    cfg.merge_from_list(list(overrides))
    cfg.profd.clip.pretrained = "none"  # the checkpoint holds every weight
    cfg.freeze()
    from .modeling import build_profd_model

    model = build_profd_model(cfg, int(ckpt["num_classes"]))
    load_model_state(model, ckpt, path)
    return model.to(device).eval(), cfg, ckpt


def load_into_built_model(model: torch.nn.Module, path: str) -> Optional[CfgNode]:
    """Load a plugin checkpoint into a ProFD built elsewhere (torchreid's ``build_model(<variant>)``).

    The checkpoint's stored config must agree with the config the model was built with (its
    ``build_config``, set by ``profd_torchreid_factory``) on every :data:`ARCHITECTURE_KEYS` key except
    :data:`VARIANT_FREE_KEYS`; the positional grid is re-gridded to the checkpoint's trained size
    (``backbone.set_image_size``), the test-time visibility settings are taken from the checkpoint, and
    every tensor must fit except the identity-count ones (:data:`IDENTITY_PREFIXES`). A checkpoint without
    a config (torchreid's own ``save_checkpoint``) is checked tensor by tensor.

    Returns:
        The checkpoint's config (None for a checkpoint without one).

    Raises:
        CheckpointError: one line naming the file and the first difference (and the variant that fits).
    """
    model = getattr(model, "module", model)
    ckpt = read_checkpoint(path)
    ckpt_cfg = checkpoint_config(ckpt, path)
    built = getattr(model, "build_config", None)
    if ckpt_cfg is not None:
        if ckpt_cfg.model.name != "profd":
            raise CheckpointError(f"checkpoint {path} holds a '{ckpt_cfg.model.name}' model, not ProFD: load "
                                  f"it with model_name='{ckpt_cfg.model.name}'")
        keys = tuple(k for k in ARCHITECTURE_KEYS if k not in VARIANT_FREE_KEYS and k != "model.name")
        for key in keys if built is not None else ():
            theirs, ours = config_value(ckpt_cfg, key), config_value(built, key)
            if theirs != ours:
                from .registry import variant_of

                fits = variant_of(ckpt_cfg, keys)
                hint = (f": use model_name='{fits}'" if fits
                        else ": rebuild it with ProFDExtractor.from_checkpoint")
                raise CheckpointError(f"checkpoint {path} was trained with {key} {theirs!r}, this model was "
                                      f"built with {ours!r}{hint}")
        model.backbone.set_image_size((ckpt_cfg.data.height, ckpt_cfg.data.width))
    load_model_state(model, ckpt, path, allow_other_identities=True)
    for attr, key in _TEST_TIME_ATTRIBUTES.items() if ckpt_cfg is not None else ():
        setattr(model, attr, config_value(ckpt_cfg, key))
    return ckpt_cfg
