"""The few repairs torchreid 0.2.5 needs on current torch / numpy, applied once on ``import profd_plugin``.

The host stays the host: these repairs change no number a torchreid user computes, and each has a test
in ``tests/test_host.py`` (item 3: ``tests/test_torchreid_variants.py``) that fails without it.

1. ``Engine.save_model`` pickles ``rank1`` as a ``numpy.float32``, so every checkpoint it writes fails
   to load under torch's default ``weights_only=True`` (torch >= 2.6: ``UnpicklingError: Unsupported
   global: numpy._core.multiarray.scalar``). The repaired version stores a python float, writes
   atomically, and accepts ``scheduler=None`` (upstream crashes on ``None.state_dict()``,
   torchreid ``engine/engine.py:75-90``).
2. ``load_checkpoint`` (used by ``load_pretrained_weights``, ``resume_from_checkpoint`` and
   ``FeatureExtractor``) still reads checkpoints written by an unrepaired torchreid: it keeps
   ``weights_only=True`` and allow-lists only the numpy scalar/dtype globals those files contain.
3. ``load_pretrained_weights`` (what ``FeatureExtractor`` and torchreid's scripts load ``model_path`` with)
   silently drops every tensor that does not fit, so a ProFD checkpoint of another size or variant gave
   random features after "Successfully loaded". For ProFD models it is the plugin's strict loader
   (``checkpoint.load_into_built_model``: config checked against the variant, positional grid re-gridded
   to the trained size, only the identity-count tensors tolerated, one-line ``CheckpointError``); every
   other model gets torchreid's own function, unchanged.
4. torchreid warns "Cython evaluation ... is unavailable" on every import (the wheel ships no compiled
   evaluator); the warning is filtered (in ``__init__``, before torchreid is imported).

What the plugin adds for its own engines is not patched into torchreid: they call the plugin's vectorised
evaluator directly and override the epoch-start hook that would unfreeze frozen parameters
(``engine.LoopMixin``). :func:`install_fast_evaluator` makes torchreid's own ``evaluate_rank`` use the
plugin's evaluator (same numbers, ~65x faster) for users who ask for it.

The original functions are kept in :data:`ORIGINALS` (tests use them to show each failure).
"""
from __future__ import annotations

import logging
import os.path as osp
import sys
from typing import Callable, Dict

import numpy as np
import torch

from .fileio import atomic_torch_save

logger = logging.getLogger(__name__)

ORIGINALS: Dict[str, Callable] = {}


def _numpy_safe_globals() -> list:
    """The numpy globals an unpatched torchreid checkpoint contains (a pickled ``np.float32`` rank1)."""
    core = getattr(np, "_core", None) or np.core
    names = [core.multiarray.scalar, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        names += [getattr(dtypes, n) for n in ("Float32DType", "Float64DType") if hasattr(dtypes, n)]
    return names


def load_checkpoint(fpath: str) -> dict:
    """Load a checkpoint with ``weights_only=True``, accepting numpy scalars written by old torchreid.

    Raises:
        FileNotFoundError: naming the path.
    """
    if fpath is None:
        raise ValueError("checkpoint path is None")
    fpath = osp.abspath(osp.expanduser(fpath))
    if not osp.exists(fpath):
        raise FileNotFoundError(f'checkpoint not found: "{fpath}"')
    # CPU first: load_state_dict copies to each model's device (no pile-up on cuda:0 under DDP)
    safe = getattr(torch.serialization, "safe_globals", None)
    if safe is None:  # torch < 2.5: weights_only defaults to False there
        return torch.load(fpath, map_location="cpu")
    with safe(_numpy_safe_globals()):
        return torch.load(fpath, map_location="cpu", weights_only=True)


def load_pretrained_weights(model: torch.nn.Module, weight_path: str) -> None:
    """torchreid's ``load_pretrained_weights``, strict for ProFD models (see the module docstring, item 3).

    Raises:
        CheckpointError: a ProFD model and a checkpoint that does not fit it (one line naming the file).
    """
    profd = sys.modules.get("profd_plugin.modeling.profd")  # imported whenever a ProFD model exists
    core = getattr(model, "module", model)
    if profd is None or not isinstance(core, profd.ProFD):
        return ORIGINALS["load_pretrained_weights"](model, weight_path)
    from .checkpoint import load_into_built_model

    cfg = load_into_built_model(core, weight_path)
    if cfg is None:
        print(f'Loaded ProFD weights from "{weight_path}" (every tensor checked)')
        return None
    d = cfg.data
    print(f'Loaded ProFD weights from "{weight_path}" (every tensor checked); trained at '
          f"{d.height}x{d.width}: FeatureExtractor(image_size=({d.height}, {d.width}), "
          f"pixel_mean={list(d.norm_mean)}, pixel_std={list(d.norm_std)}) gives its evaluation features")
    return None


def save_model(self, epoch: int, rank1: float, save_dir: str, is_best: bool = False) -> None:
    """Patched ``Engine.save_model``: float ``rank1``, optional scheduler, atomic write."""
    for name in self.get_model_names():
        model = self._models[name]
        model = getattr(model, "module", model)  # no 'module.' prefix from (D)DP wrappers
        optim, sched = self._optims[name], self._scheds[name]
        state = {
            "state_dict": model.state_dict(),
            "epoch": epoch + 1,
            "rank1": float(rank1),
            "optimizer": optim.state_dict() if optim is not None else None,
            "scheduler": sched.state_dict() if sched is not None else None,
        }
        fpath = osp.join(save_dir, name, f"model.pth.tar-{epoch + 1}")
        atomic_torch_save(state, fpath)
        logger.info('checkpoint saved to "%s"', fpath)
        print(f'Checkpoint saved to "{fpath}"')


def apply_host_fixes() -> None:
    """Install the repairs into torchreid (idempotent)."""
    import torchreid  # noqa: F401  (a first import integrates the plugin, which calls this function)

    if ORIGINALS:
        return
    from torchreid.reid import utils
    from torchreid.reid.engine import engine as engine_mod
    from torchreid.reid.utils import feature_extractor, torchtools

    ORIGINALS.update(save_model=engine_mod.Engine.save_model, load_checkpoint=torchtools.load_checkpoint,
                     load_pretrained_weights=torchtools.load_pretrained_weights)
    engine_mod.Engine.save_model = save_model
    torchtools.load_checkpoint = load_checkpoint  # used by load_pretrained_weights, resume, FeatureExtractor
    utils.load_checkpoint = load_checkpoint  # the re-exported name
    # the defining module, the re-exported name, and the name FeatureExtractor bound at its import
    for module in (torchtools, utils, feature_extractor):
        module.load_pretrained_weights = load_pretrained_weights


def install_fast_evaluator() -> None:
    """Opt-in: make torchreid's ``evaluate_rank`` the plugin's vectorised evaluator (same CMC and mAP).

    Replaces ``torchreid.reid.metrics.rank.evaluate_rank`` and the name ``Engine._evaluate`` calls
    (``torchreid.reid.metrics.evaluate_rank``); :func:`uninstall_fast_evaluator` restores them.
    """
    from torchreid.reid import metrics
    from torchreid.reid.metrics import rank as rank_mod

    from .metrics import evaluate_rank_host_compatible

    ORIGINALS.setdefault("evaluate_rank", rank_mod.evaluate_rank)
    rank_mod.evaluate_rank = evaluate_rank_host_compatible
    metrics.evaluate_rank = evaluate_rank_host_compatible


def uninstall_fast_evaluator() -> None:
    """Undo :func:`install_fast_evaluator`."""
    from torchreid.reid import metrics
    from torchreid.reid.metrics import rank as rank_mod

    if "evaluate_rank" in ORIGINALS:
        rank_mod.evaluate_rank = metrics.evaluate_rank = ORIGINALS.pop("evaluate_rank")
