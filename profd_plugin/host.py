"""The few fixes torchreid 0.2.5 needs on current torch / numpy, applied once on ``import profd_plugin``.

Each fix is measured in ``../shared/notes/TORCHREID_HOST.md`` and has a test in ``tests/test_host.py``
that fails without it:

1. ``Engine.save_model`` pickles ``rank1`` as a ``numpy.float32``, so every checkpoint it writes fails
   to load under torch's default ``weights_only=True`` (torch >= 2.6). The patched version stores a
   python float, writes atomically, and accepts ``scheduler=None`` (upstream crashes on
   ``None.state_dict()``).
2. ``load_checkpoint`` (used by ``load_pretrained_weights``, ``resume_from_checkpoint`` and
   ``FeatureExtractor``) is wrapped to still read checkpoints written by an unpatched torchreid: it keeps
   ``weights_only=True`` and allow-lists only the numpy scalar/dtype globals those files contain.
3. ``Engine.two_stepped_transfer_learning`` calls ``open_all_layers`` every epoch, re-enabling gradients
   of deliberately frozen parameters (e.g. a frozen CLIP text encoder). The patched version restores
   the trainable set the model had when training started instead of opening everything.
4. ``metrics.evaluate_rank`` is replaced by the plugin's vectorised evaluator (identical numbers,
   ~40x faster, no crash on galleries smaller than ``max_rank``); ``use_metric_cuhk03`` still goes to
   the original.
5. The "Cython evaluation is unavailable" warning on every import is filtered (in ``__init__``, before
   torchreid is imported).

The original functions are kept in :data:`ORIGINALS` (tests use them to show each failure).
"""
from __future__ import annotations

import logging
import os
import os.path as osp
import tempfile
from typing import IO, Any, Callable, Dict

import numpy as np
import torch

logger = logging.getLogger(__name__)

ORIGINALS: Dict[str, Callable] = {}
_TRAINABLE_ATTR = "_profd_trainable_snapshot"


TMP_PREFIX = ".tmp-"


def atomic_write(path: str, write: Callable[[IO], None], binary: bool = True) -> None:
    """Call ``write(file)`` on a temporary file in ``path``'s folder, then ``os.replace`` it to ``path``.

    ``path`` is never half-written; a process killed mid-write leaves only a ``.tmp-*`` file, which
    :func:`remove_stale_temp_files` clears, and an exception removes it.
    """
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=folder)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` through :func:`atomic_write`."""
    atomic_write(path, lambda f: torch.save(obj, f))


def remove_stale_temp_files(folder: str) -> int:
    """Delete ``.tmp-*`` files left in ``folder`` by a killed :func:`atomic_torch_save`; returns the count."""
    if not osp.isdir(folder):
        return 0
    stale = [n for n in os.listdir(folder) if n.startswith(TMP_PREFIX)]
    for name in stale:
        os.remove(osp.join(folder, name))
    return len(stale)


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


def _trainable_snapshot(model: torch.nn.Module) -> Dict[str, bool]:
    snap = model.__dict__.get(_TRAINABLE_ATTR)
    if snap is None:
        snap = {n: p.requires_grad for n, p in model.named_parameters()}
        model.__dict__[_TRAINABLE_ATTR] = snap
    return snap


def two_stepped_transfer_learning(self, epoch, fixbase_epoch, open_layers, model=None) -> None:
    """Patched: open layers as upstream does, but never unfreeze what the model froze itself."""
    from torchreid.reid.utils import open_specified_layers

    model = self.model if model is None else model
    if model is None:
        return
    snap = _trainable_snapshot(model)
    if (epoch + 1) <= fixbase_epoch and open_layers is not None:
        print(f"* Only train {open_layers} (epoch: {epoch + 1}/{fixbase_epoch})")
        open_specified_layers(model, open_layers)
        for n, p in model.named_parameters():
            p.requires_grad = p.requires_grad and snap.get(n, True)
    else:
        model.train()
        for n, p in model.named_parameters():
            p.requires_grad = snap.get(n, True)


def apply_host_fixes() -> None:
    """Install the fixes into torchreid (idempotent)."""
    if ORIGINALS:
        return
    from torchreid.reid import metrics, utils
    from torchreid.reid.engine import engine as engine_mod
    from torchreid.reid.metrics import rank as rank_mod
    from torchreid.reid.utils import torchtools

    from .metrics import evaluate_rank_host_compatible

    ORIGINALS.update(
        save_model=engine_mod.Engine.save_model,
        two_stepped_transfer_learning=engine_mod.Engine.two_stepped_transfer_learning,
        load_checkpoint=torchtools.load_checkpoint,
        evaluate_rank=rank_mod.evaluate_rank,
    )
    engine_mod.Engine.save_model = save_model
    engine_mod.Engine.two_stepped_transfer_learning = two_stepped_transfer_learning
    torchtools.load_checkpoint = load_checkpoint  # used by load_pretrained_weights, resume, FeatureExtractor
    utils.load_checkpoint = load_checkpoint  # the re-exported name
    rank_mod.evaluate_rank = evaluate_rank_host_compatible
    metrics.evaluate_rank = evaluate_rank_host_compatible  # the name Engine._evaluate calls
