"""Reproduction guard: dataset counts against the published ones, the run against the official recipe."""
import logging
import os

import pytest
from conftest import load_script

from profd_plugin.config import setup_cfg
from profd_plugin.reproduction import (
    count_warnings,
    effective_precision,
    recipe_warnings,
    reproduction_warnings,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_CONFIGS = ["profd_occ_duke", "profd_market1501", "profd_dukemtmc", "profd_p_duke", "profd_occ_reid"]


def _cfg(name, *opts):
    return setup_cfg(os.path.join(ROOT, "configs", f"{name}.yaml"), list(opts))


def test_published_counts_give_no_warning():
    occ = {"train": (702, 15618), "query": (519, 2210), "gallery": (1110, 17661)}
    assert count_warnings("occluded_duke", occ) == []
    # Occluded-ReID is test only: its dummy train list (counted 0) is not compared
    occ_reid = {"train": (0, 0), "query": (200, 1000), "gallery": (200, 1000)}
    assert count_warnings("occluded_reid", occ_reid) == []
    # ids that are not published (Market gallery) are not compared
    market = {"train": (751, 12936), "query": (750, 3368), "gallery": (752, 15913)}
    assert count_warnings("market1501", market) == []


def test_fewer_images_from_a_resize_copy_name_the_resize_copy():
    found = {"train": (702, 15000), "query": (519, 2210), "gallery": (1110, 17661)}
    (line,) = count_warnings("occluded_duke", found, resize_used=True)
    assert "train 15000 images (published 15618)" in line and "*_resize copy" in line
    assert "query" not in line.split("likely cause")[0]
    (line,) = count_warnings("occluded_duke", found, resize_used=False)
    assert "missing files" in line and "_resize" not in line


def test_another_dataset_in_the_folder_is_named():
    duke = {"train": (702, 16522), "query": (702, 2228), "gallery": (1110, 17661)}
    (line,) = count_warnings("occluded_duke", duke)
    assert "'dukemtmcreid'" in line and "another dataset" in line


def test_more_images_point_to_another_version():
    found = {"train": (751, 12936), "query": (750, 3368), "gallery": (752, 19732)}
    (line,) = count_warnings("market1501", found)
    assert "gallery 19732 images (published 15913)" in line and "another version" in line
    (line,) = count_warnings("market1501", found, resize_used=True)
    assert "*_resize folders" in line


def test_other_ids_with_the_right_images_are_reported():
    found = {"train": (700, 15618), "query": (519, 2210), "gallery": (1110, 17661)}
    (line,) = count_warnings("occluded_duke", found)
    assert "train 700 ids (published 702)" in line


def test_datasets_without_published_counts_are_not_checked():
    assert count_warnings("synthetic_occluded", {"train": (1, 1), "query": (1, 1), "gallery": (1, 1)}) == []


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_shipped_paper_configs_follow_the_official_recipe(name):
    assert recipe_warnings(_cfg(name), world_size=1, precision="fp32") == []


def test_each_recipe_difference_is_one_line():
    cfg = _cfg("profd_occ_duke", "train.batch_size", "32", "train.lr", "5e-5", "profd.clip.stride", "16")
    lines = recipe_warnings(cfg, world_size=2, precision="bf16")
    assert len(lines) == 5, lines
    text = "\n".join(lines)
    assert "train.batch_size 32" in text and "(64)" in text
    assert "train.lr 5e-05" in text and "(4e-05)" in text and "profd.clip.stride 16" in text
    assert "2 training processes" in text and "16 images per process" in text
    assert "precision bf16" in text and "plain fp32" in text


def test_no_recipe_warnings_for_the_synthetic_set_or_baselines():
    assert recipe_warnings(_cfg("profd_synthetic"), world_size=4, precision="fp16") == []
    baseline = _cfg("profd_occ_duke", "model.name", "resnet50", "train.batch_size", "32")
    assert recipe_warnings(baseline, world_size=4, precision="fp16") == []


def test_effective_precision():
    assert effective_precision("bf16", use_gpu=False) == "fp32"  # amp is ignored on CPU
    assert effective_precision("fp16", use_gpu=True) == "fp16"
    assert effective_precision("none", use_gpu=True, float32_matmul_precision="high") == "tf32"
    assert effective_precision("none", use_gpu=True) == "fp32"


def test_data_manager_counts_and_resize_flags_feed_the_guard(tmp_path, market_like, caplog):
    """A (tiny) Market-1501 folder read from *_resize copies: setup_engine logs the count warning."""
    from profd_plugin.training import setup_engine

    root = tmp_path / "data"
    market_like(str(root / "Market-1501-v15.09.15"), resize=True)
    cfg = _cfg("profd_market1501", "data.root", str(root), "data.save_dir", str(tmp_path / "log"),
               "data.height", "64", "data.width", "32", "data.workers", "0", "train.batch_size", "8",
               "profd.clip.name", "tiny", "profd.clip.pretrained", "none")
    with caplog.at_level(logging.WARNING, logger="profd_plugin.reproduction"):
        engine, _ = setup_engine(cfg)
    dm = engine.datamanager
    assert dm.dataset_counts["market1501"]["train"] == (6, 24) and dm.resize_used == {"market1501": True}
    lines = [r.getMessage() for r in caplog.records if r.name == "profd_plugin.reproduction"]
    assert any("dataset 'market1501': train 24 images (published 12936)" in m and "*_resize copy" in m
               for m in lines), lines
    assert any("train.batch_size 8" in m for m in lines)  # and the recipe difference
    assert not reproduction_warnings(cfg, dm, world_size=1, use_gpu=False, training=False)[1:], \
        "evaluation-only runs get the count warning only"


def test_check_dataset_compares_with_the_published_counts(tmp_path, market_like, capsys):
    tool = load_script("tools/check_dataset.py")
    market_like(str(tmp_path / "Market-1501-v15.09.15"))
    assert tool.main(["--root", str(tmp_path), "--dataset", "market1501", "--quick"]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("published counts")]
    assert len(line) == 1 and "train 24 images (published 12936)" in line[0] and "missing files" in line[0]
