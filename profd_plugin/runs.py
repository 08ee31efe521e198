"""Run folders: every run writes into its own folder under ``data.save_dir``, so runs never overwrite
each other.

Layout::

    <data.save_dir>/<model.name>-train-<YYYYmmdd-HHMMSS>/   a training run
        config.yaml                  the full config (written first)
        train.log-<time>             console log (one per start; a resumed run adds one)
        events.out.tfevents.*        tensorboard
        model/model.pth.tar-<epoch>  checkpoints (self-describing, see checkpoint.py)
        results.json                 final R1/R5/R10/mAP per target (fractions)
    <data.save_dir>/<model.name>-eval-<YYYYmmdd-HHMMSS>/    an evaluation-only run (config, log, results)

``model.resume auto`` continues the newest training run of the same model and *training identity*
(the config without the keys in :data:`BOOKKEEPING`, which do not change the training trajectory), in its
own folder. ``train.max_epoch`` is one of them, so a finished run can be resumed to train longer (with
the official ``warmup_multi_step`` schedule the continuation equals a longer run from the start).
"""
from __future__ import annotations

import glob
import os
import os.path as osp
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

from yacs.config import CfgNode

from .errors import ConfigError

__all__ = ["RUN_KINDS", "BOOKKEEPING", "CONFIG_FILE", "RESULTS_FILE", "CHECKPOINT_DIR", "CHECKPOINT_PREFIX",
           "training_identity", "new_run_dir", "write_run_config", "read_run_config", "runs_of",
           "checkpoints_in", "find_resume_checkpoint", "find_finished_run", "run_dir_of_checkpoint",
           "latest_checkpoint"]

RUN_KINDS = ("train", "eval")
CONFIG_FILE = "config.yaml"
RESULTS_FILE = "results.json"
CHECKPOINT_DIR = "model"
CHECKPOINT_PREFIX = "model.pth.tar-"
#: keys (or ``node.*`` prefixes) that never change what a training run computes: where things are
#: written, how often it prints or saves, how it is evaluated, and how it was started
BOOKKEEPING = ("model.resume", "data.root", "data.save_dir", "data.targets", "train.max_epoch",
               "train.print_freq", "profd.train.checkpoint_freq", "test.*", "profd.test.*",
               "profd.visibility.*")
_TIME_FORMAT = "%Y%m%d-%H%M%S"


def _flatten(node: CfgNode, prefix: str = "") -> Iterator[Tuple[str, Any]]:
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, CfgNode):
            yield from _flatten(value, name + ".")
        else:
            yield name, list(value) if isinstance(value, (list, tuple)) else value


def _bookkeeping(key: str) -> bool:
    return any(key == b or (b.endswith(".*") and key.startswith(b[:-1])) for b in BOOKKEEPING)


def training_identity(cfg: CfgNode) -> Dict[str, Any]:
    """Every config value that can change a training run's numbers (the config minus :data:`BOOKKEEPING`)."""
    return {key: value for key, value in _flatten(cfg) if not _bookkeeping(key)}


def new_run_dir(save_dir: str, model_name: str, kind: str) -> str:
    """Create and return ``<save_dir>/<model_name>-<kind>-<time>`` (a ``-2``, ``-3``, ... suffix if taken).

    Raises:
        ConfigError: ``save_dir`` cannot be created or written (names it and why).
    """
    if kind not in RUN_KINDS:
        raise ValueError(f"run kind {kind!r} not in {RUN_KINDS}")
    base = osp.join(save_dir, f"{model_name}-{kind}-{time.strftime(_TIME_FORMAT)}")
    try:
        os.makedirs(save_dir, exist_ok=True)
        for n in range(1, 1000):
            path = base if n == 1 else f"{base}-{n}"
            try:
                os.mkdir(path)
                return path
            except FileExistsError:
                continue
    except OSError as err:
        raise ConfigError(f"data.save_dir {save_dir!r} cannot be used: {err.strerror or err}") from None
    raise ConfigError(f"data.save_dir {save_dir!r}: too many runs started in the same second")


def write_run_config(run_dir: str, cfg: CfgNode) -> str:
    """Write ``<run_dir>/config.yaml`` (atomically); returns its path."""
    from .fileio import atomic_write

    path = osp.join(run_dir, CONFIG_FILE)
    atomic_write(path, lambda f: f.write(cfg.dump()), binary=False)
    return path


def read_run_config(run_dir: str) -> Optional[CfgNode]:
    """The config of a run folder (merged onto today's defaults), or None if missing or unreadable."""
    from .config import get_default_config

    path = osp.join(run_dir, CONFIG_FILE)
    if not osp.isfile(path):
        return None
    cfg = get_default_config()
    try:
        with open(path) as f:
            cfg.merge_from_other_cfg(CfgNode.load_cfg(f))
    except Exception:  # noqa: BLE001 - a foreign or damaged config.yaml: not one of our runs
        return None
    return cfg


def runs_of(save_dir: str, cfg: CfgNode, kind: str = "train") -> List[str]:
    """Run folders of ``kind`` under ``save_dir`` with the same model and training identity, newest last."""
    pattern = osp.join(save_dir, f"{glob.escape(cfg.model.name)}-{kind}-*")
    identity = training_identity(cfg)
    matches = []
    for run_dir in sorted(glob.glob(pattern), key=osp.getmtime):
        run_cfg = read_run_config(run_dir)
        if run_cfg is not None and training_identity(run_cfg) == identity:
            matches.append(run_dir)
    return matches


def checkpoints_in(run_dir: str) -> List[str]:
    """The checkpoints of a run, oldest first (by modification time)."""
    files = glob.glob(osp.join(run_dir, CHECKPOINT_DIR, CHECKPOINT_PREFIX + "*"))
    return sorted(files, key=osp.getmtime)


def find_resume_checkpoint(save_dir: str, cfg: CfgNode) -> Optional[str]:
    """``model.resume auto``: the newest checkpoint of the newest matching training run with one."""
    for run_dir in reversed(runs_of(save_dir, cfg, "train")):
        ckpts = checkpoints_in(run_dir)
        if ckpts:
            return ckpts[-1]
    return None


def find_finished_run(save_dir: str, cfg: CfgNode) -> Optional[str]:
    """The newest matching training run of the same length that wrote its results (``results.json``)."""
    finished = [r for r in runs_of(save_dir, cfg, "train") if osp.isfile(osp.join(r, RESULTS_FILE))
                and read_run_config(r).train.max_epoch == cfg.train.max_epoch]
    return finished[-1] if finished else None


def run_dir_of_checkpoint(path: str) -> Optional[str]:
    """The run folder ``<run>/model/<checkpoint>`` belongs to, if it is one (has a config.yaml)."""
    folder = osp.dirname(osp.abspath(path))
    run_dir = osp.dirname(folder)
    if osp.basename(folder) == CHECKPOINT_DIR and osp.isfile(osp.join(run_dir, CONFIG_FILE)):
        return run_dir
    return None


def latest_checkpoint(path: str) -> Optional[str]:
    """The checkpoint a user means by ``path``: the file itself, the newest checkpoint of a run folder, or
    the newest checkpoint of the newest training run under a ``data.save_dir``; None if there is none.

    Runs are ordered by modification time, checkpoints within a run too (:func:`checkpoints_in`).
    """
    path = osp.abspath(osp.expanduser(path))
    if not osp.isdir(path):
        return path if osp.isfile(path) else None
    own = checkpoints_in(path)
    if own:
        return own[-1]
    runs = sorted(glob.glob(osp.join(glob.escape(path), "*-train-*")), key=osp.getmtime)
    for run_dir in reversed(runs):
        ckpts = checkpoints_in(run_dir)
        if ckpts:
            return ckpts[-1]
    return None
