"""``tools/main.py`` end to end on a tiny synthetic set (CPU): a torchreid built-in and ProFD."""
import json
import os

import pytest
import torch
from conftest import CONFIG, ROOT, load_main, run_dir, tiny_run_opts

MAIN = load_main()


def run_main(*opts) -> int:
    return MAIN.main(["--config-file", CONFIG, *opts])


def _check_results(save_dir, capsys, kind="train", model="profd"):
    out = capsys.readouterr().out
    assert "| dataset" in out and "synthetic_occluded" in out and "R1" in out and "mAP" in out
    results = json.load(open(os.path.join(run_dir(save_dir, kind, model), "results.json")))
    row = results["synthetic_occluded"]
    assert set(row) == {"rank1", "rank5", "rank10", "mAP"}
    assert all(0.0 <= v <= 1.0 for v in row.values())
    return results


def test_builtin_model_trains_evaluates_and_checkpoint_reloads(synthetic_root, tmp_path, capsys):
    save = str(tmp_path / "osnet")
    code = run_main(*tiny_run_opts(synthetic_root, save, **{
        "model.name": "osnet_x0_25", "model.pretrained": False, "loss.name": "softmax",
        "train.optim": "adam"}))
    assert code == 0
    _check_results(save, capsys, model="osnet_x0_25")
    run = run_dir(save, model="osnet_x0_25")
    ckpt_path = os.path.join(run, "model", "model.pth.tar-1")
    ckpt = torch.load(ckpt_path, weights_only=True)  # torch's default loader, no allow-listing
    assert ckpt["epoch"] == 1 and isinstance(ckpt["rank1"], float)
    assert ckpt["model_name"] == "osnet_x0_25" and "osnet_x0_25" in ckpt["config"]
    assert any(f.startswith("train.log") for f in os.listdir(run))

    # evaluation only, from the checkpoint
    code = run_main(*tiny_run_opts(synthetic_root, str(tmp_path / "eval"), **{
        "model.name": "osnet_x0_25", "model.pretrained": False, "model.load_weights": ckpt_path,
        "test.evaluate": True}))
    assert code == 0
    _check_results(str(tmp_path / "eval"), capsys, kind="eval", model="osnet_x0_25")


def test_profd_trains_one_epoch_and_evaluates(trained_run):
    out = trained_run["stdout"]
    assert "| dataset" in out and "| synthetic_occluded" in out and "=> Initialising memory banks" in out
    results = json.load(open(os.path.join(trained_run["run_dir"], "results.json")))
    assert set(results["synthetic_occluded"]) == {"rank1", "rank5", "rank10", "mAP"}
    assert all(0.0 <= v <= 1.0 for v in results["synthetic_occluded"].values())
    ckpt = torch.load(trained_run["checkpoint"], weights_only=True)
    assert bool(ckpt["state_dict"]["memory.bank_global.initialized"])  # banks are checkpointed
    assert bool(ckpt["state_dict"]["memory.bank_parts.initialized"])
    assert ckpt["optimizer"]["state"] and ckpt["scheduler"] is not None


@pytest.mark.parametrize("distance", ["global", "parts"])
def test_eval_only_with_distance_modes(synthetic_root, tmp_path, capsys, distance):
    save = str(tmp_path / distance)
    opts = tiny_run_opts(synthetic_root, save, **{"profd.test.distance": distance,
                                                  "model.load_weights": "none"})
    assert run_main(*opts, "--eval-only") == 0
    _check_results(save, capsys, kind="eval")


def test_missing_dataset_root_is_one_line_error(tmp_path, capsys):
    code = MAIN.main(["--config-file", os.path.join(ROOT, "configs", "profd_occ_duke.yaml"),
                      "data.root", str(tmp_path / "nowhere"), "data.save_dir", str(tmp_path / "log")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("error:") and "nowhere" in err[0]


def test_missing_weights_file_is_one_line_error(synthetic_root, tmp_path, capsys):
    code = run_main(*tiny_run_opts(synthetic_root, str(tmp_path / "w"), **{
        "model.load_weights": str(tmp_path / "missing.pth.tar"), "test.evaluate": True}))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "missing.pth.tar" in err[0]


def test_occluded_reid_protocol_reports_every_target(tmp_path, capsys, market_like, pid_folders):
    """Train on Market-1501, test on Market-1501 and Occluded-ReID: one table row and one JSON entry each."""
    root = tmp_path / "data"
    market_like(str(root / "Market-1501-v15.09.15"))
    pid_folders(str(root / "Occluded_REID" / "occluded_body_images"), [1, 2, 3], 2, ".tif")
    pid_folders(str(root / "Occluded_REID" / "whole_body_images"), [1, 2, 3], 2, ".tif")
    save = str(tmp_path / "log")
    opts = tiny_run_opts(str(root), save, **{"profd.clip.name": "tiny", "profd.clip.pretrained": "none"})
    code = MAIN.main(["--config-file", os.path.join(ROOT, "configs", "profd_occ_reid.yaml"), *opts])
    assert code == 0
    out = capsys.readouterr().out
    assert "| market1501" in out and "| occluded_reid" in out
    results = json.load(open(os.path.join(run_dir(save), "results.json")))
    assert set(results) == {"market1501", "occluded_reid"}


def test_rerank_and_flip_evaluation(synthetic_root, tmp_path, capsys):
    save = str(tmp_path / "rerank")
    assert run_main(*tiny_run_opts(synthetic_root, save, **{"test.rerank": True, "profd.test.flip": True,
                                                            "model.load_weights": "none"}),
                    "--eval-only") == 0
    _check_results(save, capsys, kind="eval")
