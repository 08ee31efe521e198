"""What a benchmark runs: one config per (model, seed), all sharing data, split, augmentation and epochs.

Command-line options are torchreid/plugin ``key value`` pairs applied to every model. A key written
``<selector>:<key>`` applies to some models only: ``<selector>`` is a model name from ``--models`` or
``baselines`` (every model other than ``profd``). Per-model keys may change the method (optimizer,
learning rate, loss, model options) but not what the comparison holds fixed (:data:`SHARED_KEYS`).

Every baseline (torchreid built-in) starts from :data:`BASELINE_DEFAULTS` (softmax + triplet loss, no
ImageNet download), before the command line.
"""
from __future__ import annotations

import difflib
import os.path as osp
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

from yacs.config import CfgNode

from ..config import setup_cfg
from ..errors import ConfigError

__all__ = ["PROFD", "BASELINES", "BASELINE_DEFAULTS", "SHARED_KEYS", "MANAGED_KEYS", "ABLATION_DISTANCES",
           "RunSpec", "known_models", "split_opts", "plan_runs", "choose_target"]

PROFD = "profd"
#: selector of every model other than ProFD in ``<selector>:<key>`` options
BASELINES = "baselines"
#: torchreid built-ins train with torchreid's softmax + triplet engine and without downloaded weights
BASELINE_DEFAULTS: Tuple[str, ...] = ("loss.name", "triplet", "model.pretrained", "False")
#: keys (or ``prefix.`` groups) every model must share: the data, split, augmentation, epoch budget,
#: seed and evaluation protocol of the comparison
SHARED_KEYS: Tuple[str, ...] = ("data.", "sampler.", "profd.augment.", "profd.synthetic.", "train.max_epoch",
                                "train.batch_size", "train.seed", "test.ranks", "test.batch_size",
                                "test.rerank")
#: keys the benchmark sets itself (run folders, model names, resume and evaluation-only runs)
MANAGED_KEYS: Dict[str, str] = {"model.name": "--models", "data.save_dir": "--output",
                                "model.resume": "resuming is automatic", "test.evaluate": "the ablation rows"}
#: ProFD ablation rows: ``profd.test.distance`` values evaluated on ProFD's own checkpoint
ABLATION_DISTANCES: Tuple[str, ...] = ("global", "parts")


@dataclass(frozen=True)
class RunSpec:
    """One training run of the benchmark.

    Attributes:
        model: ``model.name``.
        seed: ``train.seed``.
        cfg: the frozen config of the run (``data.save_dir`` = the benchmark's output folder).
    """

    model: str
    seed: int
    cfg: CfgNode


def known_models() -> List[str]:
    """Every model name torchreid can build (the built-ins and ``profd``, after ``import profd_plugin``)."""
    from torchreid.reid import models

    from ..registry import register_model

    register_model()
    return sorted(getattr(models, "__model_factory"))


def _check_models(models: Sequence[str]) -> None:
    if not models:
        raise ConfigError("--models needs at least one model name")
    seen = [m for i, m in enumerate(models) if m in models[:i]]
    if seen:
        raise ConfigError(f"--models lists '{seen[0]}' twice")
    valid = known_models()
    for name in models:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
            hint = f" (closest: {', '.join(close)})" if close else ""
            raise ConfigError(f"--models: unknown model '{name}'{hint}; profd or a torchreid built-in")


def _is_shared(key: str) -> bool:
    return any(key.startswith(k) if k.endswith(".") else key == k for k in SHARED_KEYS)


def split_opts(opts: Sequence[str], models: Sequence[str]) -> Tuple[List[str], Dict[str, List[str]]]:
    """Split ``key value`` options into the common ones and those of each model.

    Returns:
        ``(common, per_model)``; ``per_model[m]`` holds the ``baselines:`` options first (for baselines),
        then the ``m:`` ones.

    Raises:
        ConfigError: an odd number of items, an unknown selector, a per-model key in
            :data:`SHARED_KEYS`, or a key in :data:`MANAGED_KEYS`.
    """
    opts = list(opts)
    if len(opts) % 2:
        raise ConfigError(f"options must be 'key value' pairs; got {len(opts)} items: {opts}")
    common: List[str] = []
    by_selector: Dict[str, List[str]] = {}
    for key, value in zip(opts[0::2], opts[1::2]):
        selector, _, name = key.rpartition(":")
        if name in MANAGED_KEYS:
            raise ConfigError(f"option {key}: {name} is set by the benchmark ({MANAGED_KEYS[name]})")
        if not selector:
            common += [name, value]
            continue
        if selector != BASELINES and selector not in models:
            raise ConfigError(f"option {key}: '{selector}' is neither one of --models ({', '.join(models)}) "
                              f"nor '{BASELINES}'")
        if _is_shared(name):
            raise ConfigError(f"option {key}: {name} must be the same for every model (data, split, "
                              f"augmentation, epochs, seed, test protocol); give it without '{selector}:'")
        by_selector.setdefault(selector, []).extend([name, value])
    per_model = {m: (by_selector.get(BASELINES, []) if m != PROFD else []) + by_selector.get(m, [])
                 for m in models}
    return common, per_model


def plan_runs(config_file: str, models: Sequence[str], opts: Sequence[str], *, seeds: int,
              output: str) -> List[RunSpec]:
    """Every training run of a benchmark, models in order, seeds ``train.seed + i`` for ``i < seeds``.

    Each config is ``config_file`` -> (baselines: :data:`BASELINE_DEFAULTS`) -> common options ->
    per-model options -> ``model.name``, ``train.seed``, ``data.save_dir output``; all are built (and so
    validated) before anything runs.

    Raises:
        ConfigError: bad models, options, keys or values (one line naming them).
        FileNotFoundError: ``config_file`` does not exist.
    """
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    _check_models(list(models))
    common, per_model = split_opts(opts, models)
    output = osp.abspath(osp.expanduser(output))
    specs = []
    for model in models:
        defaults = list(BASELINE_DEFAULTS) if model != PROFD else []
        base = setup_cfg(config_file or None, defaults + common + per_model[model] + ["model.name", model])
        for i in range(seeds):
            seed = base.train.seed + i
            cfg = setup_cfg(config_file or None, defaults + common + per_model[model] + [
                "model.name", model, "train.seed", str(seed), "data.save_dir", output])
            specs.append(RunSpec(model=model, seed=seed, cfg=cfg))
    return specs


def choose_target(cfg: CfgNode, target: str = "") -> str:
    """The evaluation target of the table: ``target``, or the last of ``data.targets``.

    Raises:
        ConfigError: ``target`` is not one of ``data.targets``.
    """
    targets = list(cfg.data.targets)
    if not target:
        return targets[-1]
    if target not in targets:
        raise ConfigError(f"--target '{target}' is not one of data.targets {targets}")
    return target
