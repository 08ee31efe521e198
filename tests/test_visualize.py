"""Pictures: tools/visualize.py (ranked lists, part attention) and test.visrank; valid PNGs of the documented
size, heatmaps that are not constant, one-line errors."""
import os

import numpy as np
import pytest
import torch
from conftest import load_script, tiny_run_opts, write_image
from PIL import Image
from test_main import CONFIG, MAIN

from profd_plugin.visualize import (
    BORDER,
    GAP,
    GREEN,
    HEADER_H,
    LABEL_W,
    MARGIN,
    QUERY_GAP,
    RED,
    TILE_H,
    TILE_W,
    attention_size,
    ranked_list_size,
)

NUM_PARTS = 5


TOOL = load_script("tools/visualize.py")


def _pngs(folder):
    names = sorted(os.listdir(folder))
    images = []
    for name in names:
        assert name.endswith(".png")
        with Image.open(os.path.join(folder, name)) as im:
            assert im.format == "PNG"
            im.verify()
        images.append(np.asarray(Image.open(os.path.join(folder, name)).convert("RGB")))
    return names, images


def _gallery_border(picture, rank):
    """The colour of the border of the rank-th gallery tile (1-based)."""
    x = MARGIN + LABEL_W + TILE_W + QUERY_GAP + (rank - 1) * (TILE_W + GAP)
    return tuple(picture[MARGIN + HEADER_H + TILE_H // 2, x + BORDER // 2])


def test_ranked_lists_of_a_dataset_split(profd_checkpoint, synthetic_root, tmp_path, capsys):
    out = tmp_path / "vis"
    code = TOOL.main(["ranks", "--checkpoint", profd_checkpoint, "--output", str(out), "--root",
                      synthetic_root, "--dataset", "synthetic_occluded", "--topk", "4", "--num-queries", "2",
                      "--device", "cpu"])
    assert code == 0 and "wrote 2 PNG(s)" in capsys.readouterr().out
    names, pictures = _pngs(out / "ranks")
    assert len(names) == 2 and names[0].startswith("0000_")
    for picture in pictures:
        assert picture.shape == (*ranked_list_size(4, NUM_PARTS)[::-1], 3)
        borders = {_gallery_border(picture, r) for r in range(1, 5)}
        assert borders <= {GREEN, RED} and borders  # labelled split: correct / incorrect borders


def test_ranked_lists_of_folders_skip_unreadable_images(profd_checkpoint, tmp_path, capsys):
    for i in range(3):
        write_image(str(tmp_path / "q" / f"q{i}.jpg"), value=40 * i)
        write_image(str(tmp_path / "g" / f"g{i}.png"), value=30 * i + 10, size=(50, 20))
    (tmp_path / "g" / "broken.jpg").write_bytes(b"not an image")
    code = TOOL.main(["ranks", "--checkpoint", profd_checkpoint, "--output", str(tmp_path / "vis"), "--query",
                      str(tmp_path / "q"), "--gallery", str(tmp_path / "g"), "--topk", "3",
                      "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0 and "warning: skipping cannot read image" in err and "broken.jpg" in err
    _, pictures = _pngs(tmp_path / "vis" / "ranks")
    assert len(pictures) == 3 and pictures[0].shape == (*ranked_list_size(3, NUM_PARTS)[::-1], 3)
    assert _gallery_border(pictures[0], 1) == (150, 150, 150)  # unlabelled: grey


def _attention_cells(picture):
    """The K SPA and K alignment cells of an attention picture, (TILE_H, TILE_W, 3) each."""
    rows = (MARGIN + HEADER_H, MARGIN + HEADER_H + TILE_H + GAP)
    cells = {"spa": [], "alignment": []}
    for k in range(NUM_PARTS):
        x = MARGIN + LABEL_W + (k + 1) * (TILE_W + GAP)
        for name, y in zip(cells, rows):
            cells[name].append(picture[y:y + TILE_H, x:x + TILE_W].astype(np.float32))
    return cells


def test_part_attention_of_a_folder(profd_checkpoint, synthetic_root, tmp_path):
    query = os.path.join(synthetic_root, "synthetic_occluded", "query")
    code = TOOL.main(["attention", "--checkpoint", profd_checkpoint, "--output", str(tmp_path / "vis"),
                      "--images", query, "--num-images", "2", "--device", "cpu"])
    assert code == 0
    _, pictures = _pngs(tmp_path / "vis" / "attention")
    assert len(pictures) == 2
    for picture in pictures:
        assert picture.shape == (*attention_size(NUM_PARTS)[::-1], 3)
        for name, cells in _attention_cells(picture).items():
            for cell in cells:  # a heatmap over the image, not a flat colour
                assert cell.std(axis=(0, 1)).max() > 5, name


def test_attention_of_the_checkpoints_own_test_split(profd_checkpoint, tmp_path):
    # no --root / --dataset: data.root and the first of data.targets of the checkpoint's stored config
    code = TOOL.main(["attention", "--checkpoint", profd_checkpoint, "--output", str(tmp_path / "vis"),
                      "--split", "gallery", "--num-images", "2"])
    assert code == 0
    names, _ = _pngs(tmp_path / "vis" / "attention")
    assert len(names) == 2


@pytest.mark.parametrize("case", ["missing_checkpoint", "empty_folder", "missing_folder", "missing_root",
                                  "unreadable_split_image", "half_folder_pair"])
def test_bad_input_is_one_line(profd_checkpoint, synthetic_root, tmp_path, capsys, case):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    base = ["--output", str(tmp_path / "vis"), "--device", "cpu"]
    argv = {
        "missing_checkpoint": ["attention", "--checkpoint", str(tmp_path / "none.pth"), "--images",
                               str(tmp_path)],
        "empty_folder": ["attention", "--checkpoint", profd_checkpoint, "--images", str(tmp_path / "empty")],
        "missing_folder": ["attention", "--checkpoint", profd_checkpoint, "--images",
                           str(tmp_path / "nowhere")],
        "missing_root": ["ranks", "--checkpoint", profd_checkpoint, "--root", str(tmp_path / "noroot"),
                         "--dataset", "occluded_duke"],
        "unreadable_split_image": ["attention", "--checkpoint", profd_checkpoint, "--root",
                                   str(tmp_path / "copy"), "--dataset", "synthetic_occluded"],
        "half_folder_pair": ["ranks", "--checkpoint", profd_checkpoint, "--query", str(tmp_path)],
    }[case]
    if case == "unreadable_split_image":
        import shutil

        shutil.copytree(synthetic_root, tmp_path / "copy")
        first = sorted((tmp_path / "copy" / "synthetic_occluded" / "query").iterdir())[0]
        first.write_bytes(b"broken")
    assert TOOL.main(argv + base) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not (tmp_path / "vis").exists() or not any((tmp_path / "vis").rglob("*.png"))
    expected = {"missing_checkpoint": "none.pth", "empty_folder": "no readable image",
                "missing_folder": "nowhere", "missing_root": "noroot",
                "unreadable_split_image": "cannot read image",
                "half_folder_pair": "--query and --gallery"}[case]
    assert expected in err[0]


def test_visrank_writes_the_ranked_list_pngs(synthetic_root, profd_checkpoint, tmp_path):
    save = str(tmp_path / "eval")
    opts = tiny_run_opts(synthetic_root, save, **{"model.load_weights": profd_checkpoint,
                                                  "test.visrank": True, "test.visrank_topk": 3})
    assert MAIN.main(["--config-file", CONFIG, *opts, "--eval-only"]) == 0
    run = [d for d in os.listdir(save) if d.startswith("profd-eval-")][0]
    names, pictures = _pngs(os.path.join(save, run, "visrank_synthetic_occluded"))
    assert len(names) == 3  # every query of the split
    assert all(p.shape == (*ranked_list_size(3, NUM_PARTS)[::-1], 3) for p in pictures)


def test_visrank_of_torchreid_models_stays_torchreids(synthetic_root, tmp_path):
    from profd_plugin.evaluation import EvaluationMixin

    query = os.path.join(synthetic_root, "synthetic_occluded", "query")
    gallery = os.path.join(synthetic_root, "synthetic_occluded", "bounding_box_test")
    q_items = [(os.path.join(query, n), i, 0, 0) for i, n in enumerate(sorted(os.listdir(query)))]
    g_items = [(os.path.join(gallery, n), 9, 1, 0) for n in sorted(os.listdir(gallery))[:5]]

    class Manager:
        data_type, width, height, part_names = "image", 32, 64, ()

        def fetch_test_loaders(self, name):
            return q_items, g_items

    engine = EvaluationMixin()
    engine.datamanager = Manager()
    distmat = np.random.default_rng(0).random((len(q_items), len(g_items))).astype(np.float32)
    engine.draw_rankings("x", distmat, torch.zeros(3, 4), torch.zeros(5, 4), str(tmp_path / "v"), 2)
    files = sorted(os.listdir(tmp_path / "v"))
    assert len(files) == len(q_items) and all(f.endswith(".jpg") for f in files)  # torchreid's JPEG strips
