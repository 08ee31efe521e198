"""tools/check_dataset.py and tools/download_masks.py, run in-process."""

import hashlib
import json
import os
import os.path as osp
import threading
import time
import zipfile

import numpy as np
import pytest
from conftest import load_script

from profd_plugin.data.datasets import DukeMTMCreID


def load_tool(name):
    return load_script(f"tools/{name}.py")


@pytest.fixture(scope="module")
def check_dataset():
    return load_tool("check_dataset")


@pytest.fixture(scope="module")
def download_masks():
    return load_tool("download_masks")


def tree_digest(folder) -> str:
    """sha256 over every file's relative path, size and content (what 'nothing changed' means)."""
    digest = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            path = osp.join(dirpath, name)
            digest.update(osp.relpath(path, folder).encode())
            digest.update(open(path, "rb").read())
    return digest.hexdigest()


def last_json(out):
    return json.loads(out.strip().splitlines()[-1])


def test_check_dataset_json_matches_dataset(tmp_path, market_like, check_dataset, capsys):
    data = market_like(str(tmp_path / "dukemtmc-reid" / "DukeMTMC-reID"), junk=False)
    names = [osp.splitext(osp.basename(p))[0] for p in data["bounding_box_train"][:2]]
    mask_dir = (
        tmp_path
        / "dukemtmc-reid"
        / "DukeMTMC-reID"
        / "masks"
        / "pifpaf_maskrcnn_filtering"
        / "bounding_box_train"
    )
    os.remove(mask_dir / f"{names[0]}.npy")
    np.save(mask_dir / f"{names[1]}.npy", np.zeros((7, 4, 2)))
    before = tree_digest(tmp_path)
    args = ["--root", str(tmp_path), "--dataset", "dukemtmcreid", "--json"]
    assert check_dataset.main(args) == 1  # problems found
    assert tree_digest(tmp_path) == before  # the checker never writes
    out = capsys.readouterr().out
    summary = last_json(out)
    ds = DukeMTMCreID(root=str(tmp_path), verbose=False)
    assert list(summary) == [
        "dataset",
        "train_ids",
        "train_images",
        "query_ids",
        "query_images",
        "gallery_ids",
        "gallery_images",
        "unreadable_images",
        "images_without_mask",
    ]
    assert summary["train_images"] == len(ds.train) and summary["train_ids"] == ds.num_train_pids
    assert summary["query_images"] == len(ds.query) and summary["gallery_images"] == len(ds.gallery)
    assert summary["gallery_ids"] == len({pid for _, pid, _, _ in ds.gallery})
    assert summary["images_without_mask"] == 2 and summary["unreadable_images"] == 0
    assert "(missing)" in out and "malformed" in out and names[0] in out


def test_check_dataset_missing_folder(tmp_path, check_dataset, capsys):
    assert check_dataset.main(["--root", str(tmp_path), "--dataset", "occluded_duke"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: dataset 'occluded_duke' not found") and len(err.strip().splitlines()) == 1


def test_check_dataset_synthetic_is_read_only(synthetic_root, synthetic_params, check_dataset, capsys):
    before = tree_digest(synthetic_root)
    # no generator parameters given: the set on disk is checked as it is, not regenerated with the defaults
    assert check_dataset.main(["--root", synthetic_root, "--dataset", "synthetic_occluded", "--json"]) == 0
    summary = last_json(capsys.readouterr().out)
    n = synthetic_params["num_ids"] * synthetic_params["images_per_id"]
    assert summary["train_images"] == n and summary["images_without_mask"] == 0
    assert summary["train_ids"] == synthetic_params["num_ids"]
    assert tree_digest(synthetic_root) == before


def test_check_dataset_synthetic_missing_or_generate(tmp_path, synthetic_params, check_dataset, capsys):
    root = str(tmp_path / "empty")
    assert check_dataset.main(["--root", root, "--dataset", "synthetic_occluded"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not generated" in err[0] and "--generate" in err[0]
    assert not os.path.exists(root)  # nothing written
    opts = [x for k, v in synthetic_params.items() for x in (f"profd.synthetic.{k}", str(v))]
    assert check_dataset.main(["--root", root, "--dataset", "synthetic_occluded", "--generate", "--json",
                               *opts]) == 0
    assert last_json(capsys.readouterr().out)["train_ids"] == synthetic_params["num_ids"]


def test_check_dataset_finds_truncated_images_and_masks(tmp_path, market_like, check_dataset, capsys):
    data = market_like(str(tmp_path / "DukeMTMC-reID"), junk=False)
    good = open(data["query"][0], "rb").read()
    with open(data["query"][0], "wb") as f:  # a truncated JPEG: the header is fine, pixels are missing
        f.write(good[: len(good) // 2])
    with open(data["bounding_box_train"][1], "wb") as f:
        f.write(b"not an image")
    stem = osp.splitext(osp.basename(data["bounding_box_train"][2]))[0]
    masks = osp.join(str(tmp_path), "DukeMTMC-reID", "masks", "pifpaf_maskrcnn_filtering")
    mask = osp.join(masks, "bounding_box_train", stem + ".npy")
    full = open(mask, "rb").read()
    with open(mask, "wb") as f:
        f.write(full[: len(full) - 10])  # truncated .npy
    before = tree_digest(tmp_path)
    assert check_dataset.main(["--root", str(tmp_path), "--dataset", "dukemtmcreid", "--json"]) == 1
    out = capsys.readouterr().out
    summary = last_json(out)  # the summary still comes last
    assert summary["unreadable_images"] == 2 and summary["images_without_mask"] == 1
    assert data["query"][0] in out and data["bounding_box_train"][1] in out and "malformed" in out
    assert tree_digest(tmp_path) == before
    # --quick only checks existence: the truncated files go unnoticed, and it says nothing is wrong
    assert check_dataset.main(["--root", str(tmp_path), "--dataset", "dukemtmcreid", "--quick"]) == 0


@pytest.mark.parametrize("grouping_opts", [["--grouping", "six"], ["profd.masks.grouping", "six"]])
def test_check_dataset_unknown_grouping(tmp_path, market_like, check_dataset, capsys, grouping_opts):
    market_like(str(tmp_path / "DukeMTMC-reID"), junk=False)
    assert check_dataset.main(["--root", str(tmp_path), "--dataset", "dukemtmcreid", *grouping_opts]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "'six'" in err and len(err.strip().splitlines()) == 1
    assert all(name in err for name in ("five_v", "two_v", "full"))


def test_check_dataset_test_only_reports_null(tmp_path, pid_folders, check_dataset, capsys):
    for split in ("occluded_body_images", "whole_body_images"):
        pid_folders(str(tmp_path / "Occluded_REID" / split), [1, 2], 2, ".tif")  # no masks at all
    assert check_dataset.main(["--root", str(tmp_path), "--dataset", "occluded_reid", "--json"]) == 0
    out = capsys.readouterr().out
    summary = last_json(out)
    assert summary["images_without_mask"] is None and "null" in out.strip().splitlines()[-1]
    assert (summary["train_ids"], summary["train_images"]) == (0, 0)
    assert (summary["query_images"], summary["gallery_images"]) == (4, 4)
    assert "not checked (test-only dataset)" in out


def test_download_masks_reachable_is_bounded(download_masks, monkeypatch):
    release = threading.Event()

    def hanging_connect(address, timeout=None):  # a network that never answers (no real connection)
        release.wait(10)
        raise OSError("timed out")

    monkeypatch.setattr(download_masks.socket, "create_connection", hanging_connect)
    start = time.monotonic()
    try:
        assert download_masks.reachable(timeout=0.2) is False
        assert time.monotonic() - start < 2.0
    finally:
        release.set()


def test_download_masks_fails_fast_offline(tmp_path, download_masks, monkeypatch, capsys):
    monkeypatch.setattr(download_masks, "reachable", lambda **kw: False)
    assert download_masks.main(["--root", str(tmp_path), "--dataset", "occluded_duke"]) == 1
    err = capsys.readouterr().err
    assert "drive.google.com/drive/folders/1IbCAbjj3XtV3_tFOsCuqBi79ZiDqNc1H" in err
    assert osp.join(str(tmp_path), "Occluded_Duke", "masks", "pifpaf_maskrcnn_filtering") in err
    assert not os.listdir(tmp_path)  # nothing created


def test_download_masks_installs_local_archive(tmp_path, download_masks, capsys):
    archive = tmp_path / "Occluded_Duke_masks.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("Occluded_Duke/masks/pifpaf_maskrcnn_filtering/query/x.jpg.confidence_fields.npy", b"123")
    root = tmp_path / "data"
    assert download_masks.main(["--root", str(root), "--archive", str(archive)]) == 0
    target = (
        root
        / "Occluded_Duke"
        / "masks"
        / "pifpaf_maskrcnn_filtering"
        / "query"
        / "x.jpg.confidence_fields.npy"
    )
    assert target.read_bytes() == b"123" and str(root / "Occluded_Duke" / "masks") in capsys.readouterr().out
    assert download_masks.guess_dataset("P-DukeMTMC-reID.zip") == "p_dukemtmc_reid"
    assert download_masks.guess_dataset("market1501.tar") == "market1501"


def test_download_masks_archive_installing_nothing_fails(tmp_path, download_masks, capsys):
    archive = tmp_path / "unknown.zip"  # no dataset name in it and no --dataset
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("masks/pifpaf_maskrcnn_filtering/query/x.npy", b"123")
    assert download_masks.main(["--root", str(tmp_path / "data"), "--archive", str(archive)]) == 1
    captured = capsys.readouterr()
    assert "skipped" in captured.out and captured.err.startswith("error: no masks installed")
    assert len(captured.err.strip().splitlines()) == 1


def test_download_masks_error_is_one_line(tmp_path, download_masks, monkeypatch, capsys):
    def failing_install(archive, root, dataset):
        raise RuntimeError("first line\n  second   line\n")

    monkeypatch.setattr(download_masks, "install", failing_install)
    args = ["--root", str(tmp_path), "--archive", str(tmp_path / "a.zip"), "--dataset", "occluded_duke"]
    assert download_masks.main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: RuntimeError: first line second line; download the archive")
    assert len(err.strip().splitlines()) == 1
