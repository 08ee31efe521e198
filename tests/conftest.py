"""Shared fixtures: tiny fake dataset trees (32x16 images, 4x2 masks) built in ``tmp_path``."""

from __future__ import annotations

import glob
import os
import os.path as osp
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pytest
from PIL import Image

IMG_H, IMG_W = 32, 16
MASK_SHAPE = (36, 4, 2)


def write_image(path: str, value: int = 128, size: Tuple[int, int] = (IMG_H, IMG_W)) -> str:
    """A flat-colour RGB image (format from the extension)."""
    os.makedirs(osp.dirname(path), exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, dtype=np.uint8)).save(path)
    return path


def write_mask(path: str, shape: Sequence[int] = MASK_SHAPE, value: float = 0.9) -> str:
    """A ``.npy`` mask filled with ``value``."""
    os.makedirs(osp.dirname(path), exist_ok=True)
    np.save(path, np.full(shape, value, dtype=np.float32))
    return path


def market_names(pids: Iterable[int], cams: Iterable[int], per_cam: int) -> List[str]:
    """Market-style file names ``<pid>_c<cam>s1_<n>_00.jpg``."""
    return [f"{pid:04d}_c{cam}s1_{n:06d}_00.jpg" for pid in pids for cam in cams for n in range(per_cam)]


def make_market_like(
    data_dir: str,
    *,
    train_pids: Sequence[int] = (1, 3, 7, 12, 20, 25),
    test_pids: Sequence[int] = (2, 4, 5),
    cams: Sequence[int] = (1, 2),
    per_cam: int = 2,
    resize: bool = False,
    mask_suffix: Optional[str] = ".npy",
    junk: bool = True,
) -> Dict[str, List[str]]:
    """Market-like tree ``bounding_box_train`` / ``query`` / ``bounding_box_test`` (+ masks).

    Query = first image of each test pid in camera ``cams[0]``; gallery = the test pids in the other
    cameras plus a distractor (pid 0); train and gallery each get a junk (-1) image when ``junk``.
    Returns the created image paths per split (junk included).
    """
    sfx = "_resize" if resize else ""
    split_names = {
        "bounding_box_train": market_names(train_pids, cams, per_cam),
        "query": market_names(test_pids, cams[:1], 1),
        "bounding_box_test": market_names(test_pids, cams[1:], per_cam) + market_names([0], cams[:1], 1),
    }
    if junk:
        split_names["bounding_box_train"].append("-1_c1s1_000000_00.jpg")
        split_names["bounding_box_test"].append("-1_c2s1_000000_00.jpg")
    out = {}
    for split, names in split_names.items():
        out[split] = [write_image(osp.join(data_dir, split + sfx, n)) for n in names]
        if mask_suffix:
            for n in names:
                write_mask(
                    osp.join(
                        data_dir,
                        "masks",
                        "pifpaf_maskrcnn_filtering",
                        split + sfx,
                        osp.splitext(n)[0] + mask_suffix,
                    )
                )
    return out


def make_pid_folders(
    split_dir: str, pids: Sequence[int], per_id: int, ext: str, mask_dir: Optional[str] = None
) -> List[str]:
    """``split_dir/<pid>/<pid>_<n><ext>`` images (+ ``mask_dir/<stem>.npy`` masks)."""
    paths = []
    for pid in pids:
        for n in range(per_id):
            name = f"{pid:04d}_{n:02d}{ext}"
            paths.append(write_image(osp.join(split_dir, f"{pid:04d}", name)))
            if mask_dir:
                write_mask(osp.join(mask_dir, osp.splitext(name)[0] + ".npy"))
    return paths


@pytest.fixture
def market_like() -> Callable[..., Dict[str, List[str]]]:
    """Factory: ``market_like(data_dir, **options)`` -> image paths per split (see ``make_market_like``)."""
    return make_market_like


@pytest.fixture
def pid_folders() -> Callable[..., List[str]]:
    """Factory: ``pid_folders(split_dir, pids, per_id, ext, mask_dir=None)`` -> image paths."""
    return make_pid_folders


@pytest.fixture
def image_file() -> Callable[..., str]:
    """Factory: ``image_file(path, value=128, size=(32, 16))`` -> path."""
    return write_image


@pytest.fixture
def mask_file() -> Callable[..., str]:
    """Factory: ``mask_file(path, shape=(36, 4, 2), value=0.9)`` -> path."""
    return write_mask


SYNTHETIC_PARAMS = dict(num_ids=6, num_test_ids=3, images_per_id=4, height=64, width=32, seed=0)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> str:
    """A data root holding a tiny generated ``synthetic_occluded`` dataset (``SYNTHETIC_PARAMS``)."""
    from profd_plugin.data.synthetic import ensure_synthetic_occluded

    root = str(tmp_path_factory.mktemp("synthetic"))
    ensure_synthetic_occluded(root, **SYNTHETIC_PARAMS)
    return root


@pytest.fixture
def synthetic_params() -> dict:
    """Generator parameters of the ``synthetic_root`` dataset."""
    return dict(SYNTHETIC_PARAMS)


def tiny_run_opts(root: str, save_dir: str, **overrides) -> List[str]:
    """``key value`` options running ``configs/profd_synthetic.yaml`` on the ``synthetic_root`` dataset:
    64x32 images (4x2 patches), batches of 2 ids x 4 images, 1 epoch, no workers."""
    opts = {
        "data.root": root, "data.save_dir": save_dir, "data.height": 64, "data.width": 32,
        "data.workers": 0, "train.batch_size": 8, "train.max_epoch": 1, "train.print_freq": 1,
        "test.ranks": "[1, 5]", "test.batch_size": 16, "profd.augment.pad": 2,
        **{f"profd.synthetic.{k}": v for k, v in SYNTHETIC_PARAMS.items()},
    }
    opts.update(overrides)
    return [str(x) for kv in opts.items() for x in kv]


def run_dir(save_dir: str, kind: str = "train", model: str = "profd") -> str:
    """The one ``<model>-<kind>-<time>`` run folder under ``save_dir`` (asserts there is exactly one)."""
    found = sorted(glob.glob(osp.join(save_dir, f"{model}-{kind}-*")))
    assert len(found) == 1, f"expected one {model} {kind} run in {save_dir}, found {found}"
    return found[0]


ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, "configs", "profd_synthetic.yaml")


def load_script(relative_path: str):
    """A script of the repository (``tools/main.py``, ``benchmarks/throughput.py``, ...) as a fresh module, so
    that its ``main(argv)`` and helpers run in-process."""
    import importlib.util

    name = "profd_script_" + osp.splitext(relative_path)[0].replace("/", "_")
    spec = importlib.util.spec_from_file_location(name, osp.join(ROOT, relative_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_main():
    """``tools/main.py`` as a module (its ``main(argv)`` runs in-process)."""
    return load_script("tools/main.py")


@pytest.fixture(scope="session")
def trained_run(synthetic_root, tmp_path_factory) -> Dict[str, str]:
    """One finished 1-epoch run of the main job's config on ``synthetic_root`` (``tiny_run_opts``), shared
    by every test that needs a trained ProFD run: ``save_dir``, ``run_dir``, ``checkpoint`` (epoch 1),
    ``stdout``. Tests that modify a run work on a copy (:func:`copy_run`)."""
    import contextlib
    import io

    save = str(tmp_path_factory.mktemp("trained") / "log")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert load_main().main(["--config-file", CONFIG, *tiny_run_opts(synthetic_root, save)]) == 0
    run = run_dir(save)
    return {"save_dir": save, "run_dir": run, "checkpoint": osp.join(run, "model", "model.pth.tar-1"),
            "stdout": out.getvalue()}


def copy_run(trained: Dict[str, str], save_dir: str) -> str:
    """Copy the trained run folder into ``save_dir`` (a fresh data.save_dir); returns the copy's folder."""
    import shutil

    target = osp.join(save_dir, osp.basename(trained["run_dir"]))
    shutil.copytree(trained["run_dir"], target)
    return target


#: set by .ci/run: an optional extra that is missing fails its tests instead of skipping them (in CI a
#: skipped test counts as a feature not done); ``CI`` (set by most CI services) has the same effect
REQUIRE_EXTRAS = bool(os.environ.get("PROFD_REQUIRE_EXTRAS") or os.environ.get("CI"))


def require_extra(module: str, extra: str):
    """Import ``module`` of the optional ``[extra]``: skip without it, fail in CI (``REQUIRE_EXTRAS``)."""
    import importlib

    if REQUIRE_EXTRAS:
        return importlib.import_module(module)  # an ImportError here fails the test loudly
    return pytest.importorskip(module, reason=f"needs the optional extra: pip install -e '.[{extra}]'")


def make_profd_checkpoint(path: str, root: str, *, seed: int = 0, num_classes: int = 6, **overrides) -> str:
    """Write a checkpoint of a fresh tiny ProFD with the ``tiny_run_opts`` config (+ ``overrides``), as
    ``tools/main.py`` would: its BN running statistics are set to seeded random values, so that the
    evaluation features are not those of an identity normalisation."""
    import torch

    from profd_plugin.checkpoint import make_checkpoint
    from profd_plugin.config import setup_cfg
    from profd_plugin.fileio import atomic_torch_save
    from profd_plugin.modeling import build_profd_model

    config = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), "configs", "profd_synthetic.yaml")
    cfg = setup_cfg(config, tiny_run_opts(root, osp.dirname(path), **overrides))
    torch.manual_seed(seed)
    model = build_profd_model(cfg, num_classes)
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    atomic_torch_save(make_checkpoint(model, cfg, num_classes=num_classes, epoch=1), path)
    return path


@pytest.fixture(scope="session")
def profd_checkpoint(trained_run) -> str:
    """The checkpoint ``tools/main.py`` wrote for the shared ``trained_run`` (tiny ProFD, 64x32, epoch 1)."""
    return trained_run["checkpoint"]


# ------------------------------------------------------------------------------------------ scheduling
# The suite runs on pytest-xdist workers (setup.cfg: ``-n auto --dist loadfile``): one per CPU up to
# MAX_WORKERS, each test module on one worker, so that a module fixture (an ONNX export, a torchrun job)
# is built once. Each worker computes with one torch thread, and so do the processes its tests start. On 2
# cores: one process 191 s; two workers at torch's default two threads each 175 s, at one thread 139-144 s;
# with LONG_MODULES first 132 s.
MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: the CPUs this process may use (not psutil's physical cores), at most MAX_WORKERS."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cpus))


def pytest_configure(config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"  # for the subprocesses too
        torch.set_num_threads(1)


# the modules with the longest tests (torchrun jobs, ONNX exports, full-size ViT-B/16, the GPU script's dry
# run), longest first: started first, so that no long module is left alone on one worker at the end
LONG_MODULES = ("test_engine", "test_export", "test_golden", "test_throughput", "test_checkpoints",
                "test_clip_backbone", "test_torchreid_variants", "test_clip_resnet", "test_benchmark")


def pytest_collection_modifyitems(config, items) -> None:
    """Long modules first (setup.cfg turns off xdist's reordering by test count); each module's tests stay
    together and in order."""
    rank = {name: i for i, name in enumerate(LONG_MODULES)}
    items.sort(key=lambda item: rank.get(item.module.__name__, len(LONG_MODULES)))  # stable
