"""Host repairs applied by ``import profd_plugin``: each test shows the failure of the original and the fix;
and everything else a torchreid user computes stays torchreid's."""
import importlib
import inspect
import os
import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import profd_plugin
from profd_plugin import fileio, host
from profd_plugin.engine import LoopMixin


class _DM:  # the least a torchreid Engine needs from a data manager
    train_loader, test_loader, sources = None, {}, []


def _engine(scheduler=True):
    from torchreid.reid.engine import Engine

    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1) if scheduler else None
    engine = Engine(_DM(), use_gpu=False)
    engine.model = model
    engine.register_model("model", model, opt, sched)
    return engine


def test_checkpoints_reload_under_weights_only(tmp_path):
    engine = _engine()
    rank1 = np.float32(0.5)  # what Engine.test returns (cmc[0])
    host.ORIGINALS["save_model"](engine, 0, rank1, str(tmp_path / "orig"))
    orig_file = tmp_path / "orig" / "model" / "model.pth.tar-1"
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        torch.load(orig_file, weights_only=True)

    engine.save_model(0, rank1, str(tmp_path / "fixed"))  # patched
    ckpt = torch.load(tmp_path / "fixed" / "model" / "model.pth.tar-1", weights_only=True)
    assert ckpt["rank1"] == 0.5 and type(ckpt["rank1"]) is float and ckpt["epoch"] == 1


def test_load_checkpoint_reads_files_written_by_unpatched_torchreid(tmp_path):
    from torchreid.reid.utils import load_checkpoint, load_pretrained_weights

    engine = _engine()
    host.ORIGINALS["save_model"](engine, 0, np.float32(0.25), str(tmp_path))
    path = str(tmp_path / "model" / "model.pth.tar-1")
    with pytest.raises(Exception):
        host.ORIGINALS["load_checkpoint"](path)
    assert float(load_checkpoint(path)["rank1"]) == 0.25
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    load_pretrained_weights(model, path)  # reaches the patched loader through torchtools' globals
    assert torch.equal(model[0].weight, engine.model[0].weight)


def test_save_model_accepts_scheduler_none(tmp_path):
    engine = _engine(scheduler=False)
    with pytest.raises(AttributeError):
        host.ORIGINALS["save_model"](engine, 0, 0.1, str(tmp_path / "a"))
    engine.save_model(0, 0.1, str(tmp_path / "b"))
    assert torch.load(tmp_path / "b" / "model" / "model.pth.tar-1", weights_only=True)["scheduler"] is None


def _model_with_frozen_part():
    model = nn.Module()
    model.backbone = nn.Linear(4, 4)
    model.frozen = nn.Linear(4, 4)
    model.classifier = nn.Linear(4, 2)
    model.frozen.requires_grad_(False)
    return model


class _LoopEngine(LoopMixin):
    """Only the plugin's epoch-start hook (what ProFDEngine, SoftmaxEngine and TripletEngine inherit)."""

    model = None


def test_plugin_engines_do_not_unfreeze_frozen_parameters():
    from torchreid.reid.engine import Engine

    model = _model_with_frozen_part()
    Engine.two_stepped_transfer_learning(_engine(), 0, 0, None, model=model)
    assert model.frozen.weight.requires_grad  # torchreid's hook (left as it is) opens everything

    engine, model = _LoopEngine(), _model_with_frozen_part()
    engine.two_stepped_transfer_learning(0, 0, None, model=model)
    assert not model.frozen.weight.requires_grad and model.backbone.weight.requires_grad
    # fixbase phase: only the open layers train, and the frozen part stays frozen afterwards
    engine.two_stepped_transfer_learning(0, 1, ["classifier", "frozen"], model=model)
    assert not model.backbone.weight.requires_grad and not model.frozen.weight.requires_grad
    assert model.classifier.weight.requires_grad
    engine.two_stepped_transfer_learning(1, 1, ["classifier"], model=model)
    assert model.backbone.weight.requires_grad and not model.frozen.weight.requires_grad


def _ranking_case():
    rng = np.random.default_rng(0)
    q_pids, g_pids = rng.integers(0, 20, 30), rng.integers(0, 20, 200)
    q_cams, g_cams = rng.integers(0, 4, 30), rng.integers(0, 4, 200)
    return rng.random((30, 200)).astype(np.float32), q_pids, g_pids, q_cams, g_cams


def test_import_leaves_torchreid_numbers_alone():
    from torchreid.reid import metrics
    from torchreid.reid.engine import Engine
    from torchreid.reid.metrics import rank as rank_mod

    for fn in (metrics.evaluate_rank, rank_mod.evaluate_rank, Engine.two_stepped_transfer_learning,
               metrics.compute_distance_matrix, Engine._evaluate, Engine.train):
        assert fn.__module__.startswith("torchreid."), fn  # torchreid's own code, not a plugin patch
    assert metrics.evaluate_rank is rank_mod.evaluate_rank
    dist, q_pids, g_pids, q_cams, g_cams = _ranking_case()
    cmc, mAP = metrics.evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, use_cython=False)
    ref_cmc, ref_mAP = rank_mod.evaluate_py(dist, q_pids, g_pids, q_cams, g_cams, 50, False)
    assert np.array_equal(cmc, ref_cmc) and mAP == ref_mAP


def test_fast_evaluator_is_opt_in_and_handles_tiny_gallery():
    from torchreid.reid import metrics
    from torchreid.reid.metrics import rank as rank_mod

    original = metrics.evaluate_rank
    q_pids, g_pids = np.array([1, 2]), np.array([1, 1, 2, 3])
    q_cams, g_cams = np.array([0, 0]), np.array([0, 1, 1, 0])  # query 1 loses one positive, query 2 none
    dist = np.random.default_rng(0).random((2, 4)).astype(np.float32)
    with pytest.raises(ValueError):  # torchreid's ragged-CMC crash on galleries smaller than max_rank
        original(dist, q_pids, g_pids, q_cams, g_cams, use_cython=False)
    host.install_fast_evaluator()
    try:
        assert metrics.evaluate_rank is rank_mod.evaluate_rank is not original
        cmc, mAP = metrics.evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams)
        assert 0 < mAP <= 1 and cmc[-1] == 1.0
        case = _ranking_case()
        fast_cmc, fast_mAP = metrics.evaluate_rank(*case)
        ref_cmc, ref_mAP = original(*case, use_cython=False)
        assert np.array_equal(fast_cmc, ref_cmc) and fast_mAP == ref_mAP
    finally:
        host.uninstall_fast_evaluator()
    assert metrics.evaluate_rank is rank_mod.evaluate_rank is original


def test_cython_warning_silenced_on_import():
    from torchreid.reid.metrics import rank as rank_mod

    source = inspect.getsource(rank_mod)
    message = re.search(r"warnings\.warn\(\s*'([^']*Cython evaluation[^']*)'", source).group(1)
    with warnings.catch_warnings(record=True) as seen:  # the filters `import profd_plugin` installed
        warnings.simplefilter("default")
        warnings.filterwarnings("ignore", message=profd_plugin.CYTHON_WARNING)
        warnings.warn(message, UserWarning)
    assert not seen
    with warnings.catch_warnings(record=True) as seen:  # what users see without the plugin
        warnings.simplefilter("default")
        warnings.warn(message, UserWarning)
    assert len(seen) == 1
    assert any(f[0] == "ignore" and f[1] is not None and f[1].pattern == profd_plugin.CYTHON_WARNING
               for f in warnings.filters)


def test_registration_is_idempotent():
    from torchreid.reid import models
    from torchreid.reid.data import datasets

    importlib.reload(profd_plugin)
    profd_plugin.registry.register_all()
    profd_plugin.registry.register_all()
    assert "profd" in getattr(models, "__model_factory")
    registered = getattr(datasets, "__image_datasets")
    for name in ["market1501", "dukemtmcreid", "occluded_duke", "occluded_reid", "p_dukemtmc_reid",
                 "synthetic_occluded"]:
        assert name in registered, name
    main_py = os.path.join(os.path.dirname(__file__), "..", "tools", "main.py")
    assert "from profd_plugin" in open(main_py).read()  # the package (and its torchreid hook) comes first


def test_atomic_save_never_leaves_a_half_written_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "model" / "model.pth.tar-1"
    fileio.atomic_torch_save({"epoch": 1}, str(path))
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # the usual permissions, not mkstemp's 0600

    def crash(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        fileio.atomic_torch_save({"epoch": 2}, str(path))
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}  # the previous file is intact
    assert os.listdir(tmp_path / "model") == ["model.pth.tar-1"]  # and no temporary file is left
    (tmp_path / "model" / ".tmp-killed.pth").write_bytes(b"partial")  # what a SIGKILL leaves
    assert fileio.remove_stale_temp_files(str(tmp_path / "model")) == 1
    assert os.listdir(tmp_path / "model") == ["model.pth.tar-1"]
