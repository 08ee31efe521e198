"""Self-describing checkpoints and run folders: every loader either loads exactly or stops with one line.

Checkpoints: the quick-start one (tiny ProFD trained by ``tools/main.py``), a full-size ViT-B/16 ProFD
one, a torchreid ResNet one (written by the plugin, and a bare torchreid-style state dict), a truncated
file and a file that is not a checkpoint. Loaders: ``model.load_weights`` (train and ``--eval-only``),
``model.resume`` and ``checkpoint.build_from_checkpoint``.
"""
import json
import os

import pytest
import torch
from conftest import copy_run, run_dir, tiny_run_opts
from test_main import MAIN, run_main

from profd_plugin.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    build_from_checkpoint,
    make_checkpoint,
    read_checkpoint,
)
from profd_plugin.config import setup_cfg
from profd_plugin.errors import CheckpointError
from profd_plugin.modeling import build_profd_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")


@pytest.fixture
def quick_start(trained_run):
    """(save_dir, checkpoint) of a 1-epoch run of the main job's config (shared: read only)."""
    return trained_run["save_dir"], trained_run["checkpoint"]


@pytest.fixture(scope="module")
def resnet_ckpt(tmp_path_factory):
    """A torchreid resnet18 checkpoint written by the plugin (self-describing)."""
    from torchreid.reid.models import build_model

    cfg = setup_cfg(os.path.join(CONFIGS, "baseline_osnet_synthetic.yaml"), ["model.name", "resnet18"])
    model = build_model("resnet18", 6, loss="triplet", pretrained=False)
    path = str(tmp_path_factory.mktemp("resnet") / "resnet18.pth.tar")
    torch.save(make_checkpoint(model, cfg, num_classes=6, epoch=1), path)
    return path


def _one_line_error(capsys, code, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("error:"), err
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    assert "weights_only" not in err[0]  # never the advice to disable safe loading
    return err[0]


def test_checkpoint_describes_itself(quick_start):
    _, path = quick_start
    ckpt = torch.load(path, weights_only=True)  # plain torch, safe loading
    assert ckpt["format"] == FORMAT and ckpt["format_version"] == FORMAT_VERSION
    assert ckpt["model_name"] == "profd" and ckpt["num_classes"] == 6
    cfg = setup_cfg(None, [])
    cfg.merge_from_other_cfg(cfg.load_cfg(ckpt["config"]))
    assert cfg.profd.clip.name == "tiny_rn10" and cfg.data.height == 64
    assert set(ckpt) >= {"state_dict", "epoch", "rank1", "optimizer", "scheduler", "seed"}


def test_quick_start_checkpoint_rebuilds_exactly(quick_start, synthetic_root):
    _, path = quick_start
    model, cfg, ckpt = build_from_checkpoint(path)
    assert cfg.profd.clip.name == "tiny_rn10" and not model.training
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in ckpt["state_dict"].items())


def test_eval_only_with_the_quick_start_checkpoint(trained_run, synthetic_root, tmp_path, capsys):
    save = str(tmp_path / "log")  # a copy of the run: evaluating writes a folder next to it
    path = os.path.join(copy_run(trained_run, save), "model", "model.pth.tar-1")
    train_results = json.load(open(os.path.join(run_dir(save), "results.json")))
    code = run_main(*tiny_run_opts(synthetic_root, save, **{"model.load_weights": path}), "--eval-only")
    assert code == 0
    evaluated = json.load(open(os.path.join(run_dir(save, "eval"), "results.json")))
    assert evaluated == train_results  # same weights, same numbers, in its own folder
    assert json.load(open(os.path.join(run_dir(save), "results.json"))) == train_results  # untouched


def test_load_weights_with_another_identity_count_reinitialises(quick_start, tmp_path, capsys):
    _, path = quick_start
    save, root = str(tmp_path / "more_ids"), str(tmp_path / "data")  # own data root: 8 train identities
    opts = tiny_run_opts(root, save, **{"model.load_weights": path, "profd.synthetic.num_ids": 8})
    assert run_main(*opts) == 0
    out = capsys.readouterr().out
    assert "6 identities, this run has 8" in out and "re-initialised" in out
    assert out.index("Loaded weights") < out.index("Initialising memory banks")  # the init pass ran
    ckpt = torch.load(os.path.join(run_dir(save), "model", "model.pth.tar-1"), weights_only=True)
    assert ckpt["num_classes"] == 8 and bool(ckpt["state_dict"]["memory.bank_global.initialized"])


def _contents(folder):
    return {n: open(os.path.join(dp, n), "rb").read() for dp, _, names in os.walk(folder) for n in names}


def test_resume_with_another_identity_count_stops(trained_run, tmp_path, capsys):
    path, run = trained_run["checkpoint"], trained_run["run_dir"]
    files = _contents(run)
    opts = tiny_run_opts(str(tmp_path / "data"), str(tmp_path / "r"),
                         **{"model.resume": path, "profd.synthetic.num_ids": 8})
    _one_line_error(capsys, run_main(*opts), path, "classifier.global_fc.weight")
    after = _contents(run)
    assert {n: after[n] for n in files} == files  # the run it refused to continue is untouched
    assert all(n.startswith("train.log") for n in set(after) - set(files))  # (plus the attempt's log)


@pytest.mark.parametrize("loader", ["model.load_weights", "model.resume"])
def test_resnet_checkpoint_into_profd_stops(resnet_ckpt, synthetic_root, tmp_path, capsys, loader):
    opts = tiny_run_opts(synthetic_root, str(tmp_path / "x"), **{loader: resnet_ckpt})
    _one_line_error(capsys, run_main(*opts), resnet_ckpt, "model.name", "resnet18")
    with pytest.raises(CheckpointError, match="resnet18"):
        build_from_checkpoint(resnet_ckpt)


def test_bare_torchreid_state_dict_checked_tensor_by_tensor(resnet_ckpt, synthetic_root, tmp_path, capsys):
    bare = str(tmp_path / "bare.pth")
    torch.save(torch.load(resnet_ckpt, weights_only=True)["state_dict"], bare)  # a torchreid model-zoo file
    assert read_checkpoint(bare)["format_version"] == 0
    opts = tiny_run_opts(synthetic_root, str(tmp_path / "x"), **{"model.load_weights": bare})
    _one_line_error(capsys, run_main(*opts, "--eval-only"), bare, "tensor", "does not fit")
    with pytest.raises(CheckpointError, match="stores no config"):
        build_from_checkpoint(bare)


def test_resnet_checkpoint_loads_into_resnet(resnet_ckpt, synthetic_root, tmp_path, capsys):
    opts = tiny_run_opts(synthetic_root, str(tmp_path / "rn"), **{
        "model.name": "resnet18", "model.load_weights": resnet_ckpt, "loss.name": "triplet",
        "train.optim": "adam"})
    assert run_main(*opts, "--eval-only") == 0
    assert "Loaded weights" in capsys.readouterr().out


def test_full_size_vit_checkpoint(tmp_path, synthetic_root, capsys):
    """A ViT-B/16 ProFD* checkpoint rebuilds exactly, and stops with one line in the tiny config."""
    cfg = setup_cfg(os.path.join(CONFIGS, "profd_occ_duke.yaml"), ["profd.clip.pretrained", "none"])
    torch.manual_seed(0)
    model = build_profd_model(cfg, 3).eval()
    path = str(tmp_path / "vit.pth.tar")
    torch.save(make_checkpoint(model, cfg, num_classes=3, epoch=60), path)
    rebuilt, rebuilt_cfg, _ = build_from_checkpoint(path)
    assert rebuilt_cfg.profd.clip.stride == 12 and rebuilt.grid_size == (21, 10)
    expected, state = model.state_dict(), rebuilt.state_dict()
    assert set(state) == set(expected) and all(torch.equal(state[k], v) for k, v in expected.items())
    del model, rebuilt, expected, state
    opts = tiny_run_opts(synthetic_root, str(tmp_path / "x"), **{"model.load_weights": path})
    _one_line_error(capsys, run_main(*opts, "--eval-only"), path, "profd.clip.name", "ViT-B-16")


def test_truncated_and_foreign_files(quick_start, synthetic_root, tmp_path, capsys):
    _, path = quick_start
    truncated, text, folder = tmp_path / "truncated.pth.tar", tmp_path / "notes.txt", tmp_path / "folder"
    data = open(path, "rb").read()
    truncated.write_bytes(data[: len(data) // 2])
    text.write_text("not a checkpoint\n")
    folder.mkdir()
    for bad, needle in ((truncated, "truncated"), (text, "truncated or not a PyTorch checkpoint"),
                        (folder, "is a folder"), (tmp_path / "missing.pth", "not found")):
        for loader in ("model.load_weights", "model.resume"):
            opts = tiny_run_opts(synthetic_root, str(tmp_path / "x"), **{loader: str(bad)})
            _one_line_error(capsys, run_main(*opts), str(bad), needle)


def test_runs_never_overwrite_each_other(trained_run, synthetic_root, tmp_path, capsys):
    save = str(tmp_path / "shared")
    first = copy_run(trained_run, save)  # a finished ProFD run of tiny_run_opts' config
    results = open(os.path.join(first, "results.json")).read()
    osnet = tiny_run_opts(synthetic_root, save, **{"model.name": "osnet_x0_25", "loss.name": "softmax",
                                                   "train.optim": "adam"})
    assert run_main(*osnet) == 0
    other_lr = tiny_run_opts(synthetic_root, save, **{"train.lr": 0.003})
    assert run_main(*other_lr) == 0
    assert open(os.path.join(first, "results.json")).read() == results
    assert len([n for n in os.listdir(save) if n.startswith("profd-train-")]) == 2
    mode = os.stat(os.path.join(first, "results.json")).st_mode & 0o777
    assert mode & 0o044 == 0o044  # readable by group and others (umask permitting), not mkstemp's 0600
    capsys.readouterr()
    # resume auto continues the run with the same config, not the osnet run or the lr 0.003 run
    resume = tiny_run_opts(synthetic_root, save, **{"model.resume": "auto", "train.max_epoch": 2})
    assert run_main(*resume) == 0
    assert os.path.exists(os.path.join(first, "model", "model.pth.tar-2"))
    assert f"Resumed from \"{os.path.join(first, 'model', 'model.pth.tar-1')}\"" in capsys.readouterr().out
    # nothing to resume for a config without a run
    opts = tiny_run_opts(synthetic_root, save, **{"model.resume": "auto", "train.lr": 0.01})
    _one_line_error(capsys, run_main(*opts), "model.resume auto", "no checkpoint")


def test_eval_only_needs_weights(synthetic_root, tmp_path, capsys):
    save = str(tmp_path / "e")
    _one_line_error(capsys, run_main(*tiny_run_opts(synthetic_root, save), "--eval-only"),
                    "model.load_weights")
    assert not os.path.exists(save)  # nothing written
    opts = tiny_run_opts(synthetic_root, save, **{"model.load_weights": "none"})
    config = os.path.join(CONFIGS, "profd_synthetic.yaml")
    assert MAIN.main(["--config-file", config, *opts, "--eval-only"]) == 0
