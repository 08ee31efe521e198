"""Reproduction guard: warn at the start of a run when the data or the recipe differs from the paper's.

Two pure checks, each returning one-line warnings (the caller logs them; nothing is ever changed):

* :func:`count_warnings`: a dataset's ``(ids, images)`` per split against the published counts
  (:data:`PUBLISHED_COUNTS`), naming the likely cause of a difference: an incomplete ``*_resize`` copy
  (preferred over the originals when both exist), missing files, another dataset in the folder, or
  another version of the dataset.
* :func:`recipe_warnings`: a ProFD run on a paper dataset against the official recipe (Cuixxx/ProFD @
  14e47d3b, see ``docs/REPRODUCE.md``): effective batch size and identities per batch, number of
  processes, precision, epochs, and the per-dataset stride, learning rate and weight decay.

:func:`reproduction_warnings` combines both for a built data manager; ``training.setup_engine`` logs them.
The synthetic set and torchreid built-in models get no recipe warnings (there is no paper recipe for them);
dataset counts are checked for every model.
"""
from __future__ import annotations

import logging
import os
import os.path as osp
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from yacs.config import CfgNode

from .data.layout import RESIZE_SUFFIX, SPLITS

__all__ = ["PUBLISHED_COUNTS", "COMMON_RECIPE", "DATASET_RECIPES", "count_warnings", "recipe_warnings",
           "effective_precision", "reads_resize_copy", "reproduction_warnings", "log_reproduction_warnings"]

logger = logging.getLogger(__name__)

Counts = Mapping[str, Tuple[int, int]]  # split -> (ids, images)
#: split -> (ids or None when not published, images); None for a split the check skips
PUBLISHED_COUNTS: Dict[str, Dict[str, Tuple[Optional[int], int]]] = {
    # torchreid 0.2.5 Market1501 docstring (gallery without the -1 junk images); Zheng et al., ICCV 2015
    "market1501": {"train": (751, 12936), "query": (750, 3368), "gallery": (None, 15913)},
    # torchreid 0.2.5 DukeMTMCreID docstring; Zheng et al., ICCV 2017 (408 distractor ids in the gallery)
    "dukemtmcreid": {"train": (702, 16522), "query": (702, 2228), "gallery": (1110, 17661)},
    # Miao et al., ICCV 2019 (PGFA); ProFD paper Sec. 5.1
    "occluded_duke": {"train": (702, 15618), "query": (519, 2210), "gallery": (1110, 17661)},
    # Zhuo et al., ICME 2018; ProFD paper Sec. 5.1: 200 ids x 5 occluded + 5 whole-body images (test only)
    "occluded_reid": {"query": (200, 1000), "gallery": (200, 1000)},
    # ProFD paper Sec. 5.1
    "p_dukemtmc_reid": {"train": (665, 12927), "query": (634, 2163), "gallery": (None, 9053)},
}

#: official recipe shared by every paper row: (config key, value, why a difference matters)
COMMON_RECIPE: Tuple[Tuple[str, Any, str], ...] = (
    ("train.batch_size", 64, "batch-hard triplet and BatchNorm statistics depend on the batch"),
    ("sampler.num_instances", 4, "the official batch is 16 identities x 4 images"),
    ("train.max_epoch", 60, "the official schedule is 60 epochs (warm-up 10, steps at 30 and 50)"),
    ("train.optim", "adamw", "the official optimizer is AdamW"),
    ("train.lr_scheduler", "warmup_multi_step", "the official schedule is the epoch-wise warm-up multi-step"),
)
#: per training dataset: stride, learning rate, weight decay (official clipreid_*_train*.yaml)
DATASET_RECIPES: Dict[str, Dict[str, Any]] = {
    "occluded_duke": {"profd.clip.stride": 12, "train.lr": 4e-5, "train.weight_decay": 5e-4},
    "market1501": {"profd.clip.stride": 16, "train.lr": 5e-5, "train.weight_decay": 1e-4},
    "dukemtmcreid": {"profd.clip.stride": 16, "train.lr": 5e-5, "train.weight_decay": 1e-4},
    "p_dukemtmc_reid": {"profd.clip.stride": 16, "train.lr": 5e-5, "train.weight_decay": 1e-4},
}
OFFICIAL_PROCESSES = 1  # one GPU (the official nn.DataParallel on the paper's single V100)
OFFICIAL_PRECISION = "fp32"  # loss.backward(); optimizer.step(), no autocast
_REL_TOL = 1e-9  # float recipe values (lr, weight decay) compare equal within this relative tolerance


def _cause(name: str, found: Counts, published: Mapping[str, Tuple[Optional[int], int]],
           resize_used: bool) -> str:
    """The most likely reason why ``found`` differs from ``published`` (one phrase)."""
    images = {s: found[s][1] for s in published if s in found}
    for other, counts in PUBLISHED_COUNTS.items():
        if other != name and all(s in counts and counts[s][1] == n for s, n in images.items()):
            return f"these are the counts of '{other}': the folder holds another dataset"
    fewer = all(n <= published[s][1] for s, n in images.items())
    if fewer and resize_used:
        return ("the *_resize copy (used because it exists) is missing files: re-run the resize or remove "
                "the *_resize folders to use the originals")
    if fewer:
        return "missing files (incomplete download or extraction)"
    if resize_used:
        return "another version of the dataset, or extra files in the *_resize folders"
    return "another version of the dataset, or extra files copied into its folders"


def count_warnings(name: str, found: Counts, *, resize_used: bool = False) -> List[str]:
    """Warnings when a dataset's counts differ from the published ones (empty list if they agree).

    Args:
        name: registered dataset name (datasets without published counts give no warnings).
        found: ``{split: (ids, images)}`` as from :func:`profd_plugin.data.datasets.split_counts`.
        resize_used: whether any split was read from a ``*_resize`` folder.

    Returns:
        At most one line naming every differing split and the likely cause.
    """
    published = PUBLISHED_COUNTS.get(name)
    if published is None:
        return []
    diffs = []
    for split, (ids, images) in published.items():
        got_ids, got_images = found.get(split, (0, 0))
        if got_images != images:
            diffs.append(f"{split} {got_images} images (published {images})")
        elif ids is not None and got_ids != ids:
            diffs.append(f"{split} {got_ids} ids (published {ids})")
    if not diffs:
        return []
    cause = _cause(name, found, published, resize_used)
    return [f"dataset '{name}': {', '.join(diffs)}; likely cause: {cause}; results will not be comparable "
            "with the paper"]


def reads_resize_copy(dataset: Any) -> bool:
    """Whether any split of one of the plugin's dataset adapters is read from a ``*_resize`` folder
    (False for datasets without ``split_folders``)."""
    folders = getattr(dataset, "split_folders", None)
    if folders is None:
        return False
    rel = [osp.relpath(path, dataset.dataset_dir) for split in SPLITS for path in folders(split)]
    return any(part.endswith(RESIZE_SUFFIX) for path in rel for part in path.split(os.sep))


def effective_precision(amp: str, use_gpu: bool, float32_matmul_precision: str = "highest") -> str:
    """``fp32`` | ``tf32`` | ``bf16`` | ``fp16``: what the training step computes in.

    ``profd.train.amp`` is ignored on CPU; on CUDA, a float32 matmul precision other than ``highest``
    (``torch.set_float32_matmul_precision``) means TF32 matmuls.
    """
    if not use_gpu:
        return "fp32"
    if amp != "none":
        return amp
    return "fp32" if float32_matmul_precision == "highest" else "tf32"


def _get(cfg: CfgNode, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _differs(value: Any, official: Any) -> bool:
    if isinstance(official, float):
        return abs(float(value) - official) > _REL_TOL * abs(official)
    return value != official


def recipe_warnings(cfg: CfgNode, *, world_size: int, precision: str) -> List[str]:
    """Warnings for each way a ProFD run on a paper dataset differs from the official recipe.

    Args:
        cfg: the run's config (``model.name`` other than ``profd``, or a training source without a paper
            recipe, e.g. ``synthetic_occluded``, gives no warnings).
        world_size: number of training processes.
        precision: :func:`effective_precision` of the run.

    Returns:
        One line per difference, naming the key, its value, the official value and why it matters.
    """
    sources = list(cfg.data.sources)
    if cfg.model.name != "profd" or not sources or not all(s in DATASET_RECIPES for s in sources):
        return []
    recipe = [(k, v, why) for k, v, why in COMMON_RECIPE]
    recipe += [(k, v, "official value for this dataset") for k, v in DATASET_RECIPES[sources[0]].items()]
    where = f"official ProFD recipe for {sources[0]}"
    out = [f"{key} {_get(cfg, key)!r} differs from the {where} ({official!r}): {why}"
           for key, official, why in recipe if _differs(_get(cfg, key), official)]
    if world_size != OFFICIAL_PROCESSES:
        out.append(f"{world_size} training processes, the {where} trained on one GPU: BatchNorm statistics "
                   f"and the memory-bank updates see {cfg.train.batch_size // max(world_size, 1)} images per "
                   "process instead of the whole batch")
    if precision != OFFICIAL_PRECISION:
        out.append(f"training precision {precision}, the {where} trains in plain fp32 "
                   "(set profd.train.amp none and keep torch's float32 matmul precision 'highest')")
    return out


def reproduction_warnings(cfg: CfgNode, datamanager: Any, *, world_size: int, use_gpu: bool,
                          training: bool = True, float32_matmul_precision: str = "highest") -> List[str]:
    """Every count and recipe warning of a run (see the module docstring).

    Args:
        cfg: the run's config.
        datamanager: a built data manager with ``dataset_counts`` (``{name: {split: (ids, images)}}``) and
            ``resize_used`` (``{name: bool}``); one without them gets recipe warnings only.
        world_size, use_gpu, float32_matmul_precision: how the run trains.
        training: False for an evaluation-only run (dataset counts only).
    """
    out: List[str] = []
    resize = getattr(datamanager, "resize_used", {})
    for name, counts in getattr(datamanager, "dataset_counts", {}).items():
        out += count_warnings(name, counts, resize_used=resize.get(name, False))
    if not training:
        return out
    precision = effective_precision(cfg.profd.train.amp, use_gpu, float32_matmul_precision)
    return out + recipe_warnings(cfg, world_size=world_size, precision=precision)


def log_reproduction_warnings(lines: Sequence[str]) -> None:
    """Log each warning once, with a pointer to docs/REPRODUCE.md after the last."""
    for line in lines:
        logger.warning("%s", line)
    if lines:
        logger.warning("the paper's recipe and dataset counts: docs/REPRODUCE.md")
