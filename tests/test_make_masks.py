"""tools/make_masks.py: human-parsing masks for any dataset (docs/DATASETS.md, "Making masks").

A stub backend (known keypoints, known silhouette) pins the field format and the output paths; the real
MediaPipe backend runs on the photographs that scikit-image bundles, and its masks feed a one-epoch training
run.
"""
import math
import os
import os.path as osp
import sys

import numpy as np
import pytest
import torch
from conftest import (
    load_script,
    make_market_like,
    make_pid_folders,
    require_extra,
    tiny_run_opts,
    write_image,
)
from PIL import Image

from profd_plugin.data.datasets import DATASETS
from profd_plugin.data.masks import PIFPAF_FIELDS, PIFPAF_KEYPOINTS, load_part_masks, part_names, part_targets
from profd_plugin.fileio import TMP_PREFIX
from profd_plugin.parsing import BackendError, Person, PoseBackend, get_backend, image_fields
from profd_plugin.parsing.backends import torchvision_rcnn

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
H, W = 64, 32  # stub images: an 8 x 4 field grid
DARK = 50  # stub: flat images darker than this hold nobody
KP = {name: i for i, name in enumerate(PIFPAF_KEYPOINTS)}


def load_tool(name):
    return load_script(f"tools/{name}.py")


MAKE_MASKS = load_tool("make_masks")


def centre(i, j):
    """Pixel centre (x, y) of field cell (row i, column j)."""
    return (j + 0.5) * 8, (i + 0.5) * 8


def stub_person():
    """The centred person: silhouette rows 8-55, columns 8-23 (cells 1-6 x 1-2), keypoints on cell centres."""
    cells = {"nose": (1, 1), "left_eye": (1, 2), "right_eye": (1, 1), "left_ear": (1, 2), "right_ear": (1, 1),
             "left_shoulder": (2, 2), "right_shoulder": (2, 1), "left_elbow": (3, 2), "right_elbow": (3, 1),
             "left_wrist": (4, 0), "right_wrist": (4, 1), "left_hip": (4, 2), "right_hip": (4, 1),
             "left_knee": (5, 2), "right_knee": (5, 1), "left_ankle": (6, 2), "right_ankle": (6, 1)}
    keypoints = np.array([centre(*cells[n]) for n in PIFPAF_KEYPOINTS])
    scores = np.linspace(0.6, 1.0, 17)
    scores[KP["left_ear"]] = 0.3  # below the keypoint threshold: dropped
    keypoints[KP["right_ankle"]] = (12.0, 70.0)  # below the image: dropped
    mask = np.zeros((H, W), np.float32)
    mask[8:56, 8:24] = 0.9
    return Person(keypoints=keypoints, scores=scores, mask=mask)


def corner_person():
    """A second, bigger and surer person off centre (left strip): must be ignored."""
    mask = np.zeros((H, W), np.float32)
    mask[:, :6] = 1.0
    return Person(keypoints=np.tile([3.0, 30.0], (17, 1)), scores=np.ones(17), mask=mask)


class StubBackend(PoseBackend):
    """Bright images: the centred and the corner person; dark ones: nobody. Counts its images."""

    def __init__(self):
        self.seen = 0

    def predict(self, images):
        self.seen += len(images)
        return [self._people(img) for img in images]

    @staticmethod
    def _people(img):
        if img.mean() < DARK:
            return []
        if img.shape[:2] == (H, W):
            return [corner_person(), stub_person()]
        h, w = img.shape[:2]  # other sizes: the stub person, scaled, filling the image
        person = stub_person()
        return [Person(keypoints=person.keypoints * (w / W, h / H), scores=person.scores,
                       mask=np.ones((h, w), np.float32))]


def expected_fields(person):
    """The spec, written out: blobs and bands on cell centres, times min(1, 2 x silhouette coverage)."""
    sil = person.mask >= 0.5
    rows = np.flatnonzero(sil.any(1))
    height = rows[-1] - rows[0] + 1
    sigma_k, sigma_l = max(0.04 * height, 0.8 * 8), max(0.03 * height, 0.75 * 8)
    conf = {}
    for k, name in enumerate(PIFPAF_KEYPOINTS):
        (x, y), s = person.keypoints[k], person.scores[k]
        conf[name] = s if s >= 0.5 and 0 <= x < W and 0 <= y < H else 0.0
    out = np.zeros((36, H // 8, W // 8))
    for i in range(H // 8):
        for j in range(W // 8):
            c = np.array(centre(i, j))
            support = min(1.0, 2 * sil[8 * i:8 * i + 8, 8 * j:8 * j + 8].mean())
            for f, name in enumerate(PIFPAF_FIELDS):
                if f < 17:
                    dist2 = np.sum((c - person.keypoints[f]) ** 2)
                    value = conf[name] * math.exp(-dist2 / (2 * sigma_k ** 2))
                else:
                    a_name, b_name = name.split("_to_")
                    a, b = person.keypoints[KP[a_name]], person.keypoints[KP[b_name]]
                    t = np.clip(np.dot(c - a, b - a) / max(np.dot(b - a, b - a), 1e-6), 0, 1)
                    dist2 = np.sum((c - a - t * (b - a)) ** 2)
                    value = min(conf[a_name], conf[b_name]) * math.exp(-dist2 / (2 * sigma_l ** 2))
                out[f, i, j] = value * support
    return out


def run_tool(*argv, backend=None):
    return MAKE_MASKS.main([*argv, "--quiet"], backend=backend)


def run_folder(tmp_path):
    """The tool on ``tmp_path/imgs`` -> ``tmp_path/out`` with the stub backend."""
    return run_tool("--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "out"), backend=StubBackend())


# --- the format, with a stub backend ---------------------------------------------------------------------


def test_fields_are_exactly_the_spec(tmp_path):
    write_image(str(tmp_path / "imgs" / "a.jpg"), 200, size=(H, W))
    write_image(str(tmp_path / "imgs" / "dark.png"), 10, size=(H, W))
    assert run_folder(tmp_path) == 0
    fields = np.load(tmp_path / "out" / "a.npy")
    assert fields.shape == (36, 8, 4) and fields.dtype == np.float32
    np.testing.assert_allclose(fields, expected_fields(stub_person()), rtol=1e-6, atol=1e-7)
    f = {name: fields[k] for k, name in enumerate(PIFPAF_FIELDS)}
    assert f["nose"][1, 1] == np.float32(stub_person().scores[0])  # peak = score, on the keypoint's cell
    assert not f["left_ear"].any() and not f["right_ankle"].any()  # dropped keypoints
    assert not f["left_ear_to_left_shoulder"].any() and not f["right_ankle_to_right_knee"].any()
    assert not fields[:, :, 0].any() and not fields[:, 0].any()  # zero off the silhouette
    dark = np.load(tmp_path / "out" / "dark.npy")  # nobody: zeros of the same format
    assert dark.shape == (36, 8, 4) and dark.dtype == np.float32 and not dark.any()


def test_odd_image_sizes_round_the_grid_up(tmp_path):
    write_image(str(tmp_path / "imgs" / "odd.jpg"), 200, size=(H + 3, W + 5))
    assert run_folder(tmp_path) == 0
    fields = np.load(tmp_path / "out" / "odd.npy")
    assert fields.shape == (36, 9, 5) and 0 <= fields.min() and fields.max() <= 1 and fields.any()


def _market(root, name="Market-1501-v15.09.15"):
    return make_market_like(str(root / name), mask_suffix=None)


def _pduke(root):
    base = root / "P-DukeMTMC-reID"
    for split in ("train", "test"):
        for kind in ("whole_body_images", "occluded_body_images"):
            make_pid_folders(str(base / split / kind), [1, 2, 3], 2, ".jpg")


def _occ_reid(root):
    for kind in ("occluded_body_images", "whole_body_images"):
        make_pid_folders(str(root / "Occluded_REID" / kind), [1, 2], 2, ".tif")


@pytest.mark.parametrize("dataset, build", [
    ("market1501", _market), ("occluded_duke", lambda r: _market(r, "Occluded_Duke")),
    ("p_dukemtmc_reid", _pduke), ("occluded_reid", _occ_reid),
])
def test_dataset_masks_land_where_the_loader_reads(tmp_path, dataset, build, capsys):
    build(tmp_path)
    backend = StubBackend()
    assert run_tool("--root", str(tmp_path), "--dataset", dataset, backend=backend) == 0
    ds = DATASETS[dataset](root=str(tmp_path), verbose=False)
    images = {item[0] for split in ("train", "query", "gallery") for item in getattr(ds, split)}
    assert backend.seen == len(images)
    for img in images:
        assert load_part_masks(ds.mask_path(img), "five_v").shape == (5, 4, 2)
    if dataset == "occluded_duke":
        assert all(ds.mask_path(img).endswith(".jpg.confidence_fields.npy") for img in images)
    assert ds.train_mask_problems("five_v", load=True) == []
    assert f"{len(images)} written" in capsys.readouterr().out


def test_folder_mode_mirrors_the_tree_and_reproduces_market_paths(tmp_path):
    market = tmp_path / "Market-1501-v15.09.15"
    data = _market(tmp_path)
    out = market / "masks" / "pifpaf_maskrcnn_filtering"
    assert run_tool("--images", str(market), "--out", str(out), "--preview", "1", backend=StubBackend()) == 0
    ds = DATASETS["market1501"](root=str(tmp_path), verbose=False)
    for img in data["bounding_box_train"]:
        assert osp.isfile(osp.join(out, "bounding_box_train", osp.splitext(osp.basename(img))[0] + ".npy"))
    assert ds.train_mask_problems("five_v", load=True) == []
    first = min(path for paths in data.values() for path in paths)  # folder mode: every image, sorted
    assert os.listdir(out / "_preview") == [f"0000_{osp.splitext(osp.basename(first))[0]}.png"]
    # a second run does not pick up its own outputs or previews as images
    assert run_tool("--images", str(market), "--out", str(out), backend=StubBackend()) == 0


# --- resuming, atomic writes, bad files and bad input -----------------------------------------------------


def test_rerun_skips_finished_files_and_clears_stale_temp_files(tmp_path, capsys):
    for n in range(3):
        write_image(str(tmp_path / "imgs" / f"{n}.jpg"), 200, size=(H, W))
    args = ("--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "out"))
    assert run_tool(*args, backend=StubBackend()) == 0
    os.remove(tmp_path / "out" / "1.npy")
    stale = tmp_path / "out" / f"{TMP_PREFIX}killed"
    stale.write_bytes(b"half a file")  # what a killed run leaves
    mtime = os.stat(tmp_path / "out" / "0.npy").st_mtime_ns
    capsys.readouterr()
    backend = StubBackend()
    assert run_tool(*args, backend=backend) == 0
    out = capsys.readouterr().out
    assert backend.seen == 1 and "1 written" in out and "2 skipped" in out
    assert os.stat(tmp_path / "out" / "0.npy").st_mtime_ns == mtime and not stale.exists()
    assert sorted(os.listdir(tmp_path / "out")) == ["0.npy", "1.npy", "2.npy"]


def test_interrupted_write_leaves_no_mask_file(tmp_path, monkeypatch):
    write_image(str(tmp_path / "imgs" / "a.jpg"), 200, size=(H, W))

    def dies_mid_write(f, array, **kwargs):
        f.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt  # the run is stopped while the file is being written

    monkeypatch.setattr(np, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        run_tool("--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "out"), backend=StubBackend())
    assert os.listdir(tmp_path / "out") == []


def test_corrupt_image_is_reported_and_skipped(tmp_path, capsys):
    write_image(str(tmp_path / "imgs" / "good.jpg"), 200, size=(H, W))
    (tmp_path / "imgs" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    args = ("--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "out"))
    assert run_tool(*args, backend=StubBackend()) == 1
    out = capsys.readouterr().out
    assert "1 written" in out and "1 failed" in out
    assert f"failed: {tmp_path / 'imgs' / 'bad.jpg'}: cannot read" in out
    assert os.listdir(tmp_path / "out") == ["good.npy"]


@pytest.mark.parametrize("argv, names", [
    (["--images", "{tmp}/nowhere", "--out", "{tmp}/out"], "nowhere"),
    (["--root", "{tmp}", "--dataset", "no_such_set"], "no_such_set"),
    (["--root", "{tmp}", "--dataset", "synthetic_occluded"], "generated with its masks"),
    (["--root", "{tmp}", "--dataset", "market1501"], "Market-1501"),
    (["--images", "{tmp}/imgs", "--out", "{tmp}/out", "--backend", "schp"], "schp"),
    (["--images", "{tmp}/imgs", "--out", "{tmp}/out", "--root", "{tmp}"], "either"),
    (["--images", "{tmp}/imgs", "--out", "{tmp}/out", "--backend", "torchvision"], "keypointrcnn_resnet50"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, argv, names):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no torchvision weights there
    write_image(str(tmp_path / "imgs" / "a.jpg"), 200, size=(H, W))
    assert MAKE_MASKS.main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and names in err[0]
    assert not (tmp_path / "out").exists()


def test_missing_mediapipe_is_one_line_with_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe.python.solutions", None)  # as if not installed
    with pytest.raises(BackendError, match=r"pip install -e '\.\[masks\]'") as e:
        get_backend("mediapipe")
    assert "\n" not in str(e.value)


def test_torchvision_weights_hint_says_what_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(BackendError) as e:
        get_backend("torchvision")
    folder = osp.join(str(tmp_path), "hub", "checkpoints")
    for url in torchvision_rcnn.weight_urls().values():
        assert url in str(e.value)
    assert folder in str(e.value) and "\n" not in str(e.value)


def test_torchvision_pairs_masks_with_keypoints(tmp_path, monkeypatch):
    urls = torchvision_rcnn.weight_urls()
    for url in urls.values():
        (tmp_path / osp.basename(url)).write_bytes(b"")
    mask = torch.zeros(3, 1, H, W)
    mask[0, 0, 8:56, 8:24], mask[1, 0, :, :6], mask[2, 0, 20:30, 20:30] = 0.9, 0.9, 0.9
    mask_out = {"boxes": torch.tensor([[8.0, 8, 24, 56], [0, 0, 6, 64], [20, 20, 30, 30]]),
                "labels": torch.tensor([1, 1, 3]), "scores": torch.tensor([0.9, 0.95, 0.99]), "masks": mask}
    kps = torch.zeros(2, 17, 3)
    kps[0, :, :2] = torch.tensor([15.0, 30])
    kp_out = {"boxes": torch.tensor([[9.0, 9, 23, 55], [0, 0, 6, 64]]), "scores": torch.tensor([0.8, 0.2]),
              "keypoints": kps, "keypoints_scores": torch.full((2, 17), 2.0)}
    models = (lambda imgs: [kp_out] * len(imgs), lambda imgs: [mask_out] * len(imgs))
    monkeypatch.setattr(torchvision_rcnn, "build_models", lambda paths, device: models)
    backend = get_backend("torchvision", weights=str(tmp_path))
    (centred, strip), = backend.predict([np.zeros((H, W, 3), np.uint8)])  # the car (label 3) is no person
    np.testing.assert_allclose(centred.keypoints, np.tile([15.0, 30], (17, 1)))
    np.testing.assert_allclose(centred.scores, 1 / (1 + math.exp(-2.0)), rtol=1e-6)
    assert not strip.scores.any()  # its keypoint detection scored below the threshold
    fields = image_fields([strip, centred], H, W)
    assert fields[:, 1:7, 1:3].any() and not fields[:, :, 0].any()  # the centred one is kept


# --- the real MediaPipe backend on real photographs ----------------------------------------------------


def _need_mediapipe():
    """The [masks] extra: skipped without it, except in CI, where a skipped test counts as not done."""
    require_extra("mediapipe", "masks")
    return require_extra("skimage.data", "masks")


@pytest.fixture(scope="module")
def mediapipe_backend():
    _need_mediapipe()
    backend = get_backend("mediapipe")
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def photos():
    data = _need_mediapipe()
    return {"astronaut": data.astronaut(), "camera": np.stack([data.camera()] * 3, -1)}  # (512, 512, 3) each


def _parts_of(tmp_path, name, image, backend):
    Image.fromarray(image).save(tmp_path / f"{name}.png")
    assert run_tool("--images", str(tmp_path), "--out", str(tmp_path / "out"), backend=backend) == 0
    return load_part_masks(str(tmp_path / "out" / f"{name}.npy"), "five_v")  # (5, 64, 64)


@pytest.mark.parametrize("name, in_frame", [
    ("astronaut", {"head", "upper_arms_torso"}),  # a portrait: no legs, no feet
    ("camera", {"head", "upper_arms_torso", "lower_arms_torso", "legs"}),  # the feet are below the frame
])
def test_mediapipe_parts_are_plausible(tmp_path, mediapipe_backend, photos, name, in_frame):
    image = photos[name]
    parts = _parts_of(tmp_path, name, image, mediapipe_backend)
    names = part_names("five_v")
    _, visible = part_targets(parts, bg_threshold=0.5, sharpness=15.0, size=parts.shape[1:])
    assert {n for n, v in zip(names, visible[1:].tolist()) if v} == in_frame
    rows = torch.arange(parts.shape[1], dtype=torch.float32)[:, None]
    mean_row = {n: float((p * rows).sum() / p.sum()) for n, p in zip(names, parts) if n in in_frame}
    order = [n for n in names if n in in_frame]  # head, upper torso, lower torso, legs, feet
    assert [mean_row[n] for n in order] == sorted(mean_row[n] for n in order), mean_row
    (person,), = mediapipe_backend.predict([image])
    coverage = torch.from_numpy(person.mask >= 0.5).float()[None, None]
    inside = torch.nn.functional.avg_pool2d(coverage, 8)[0, 0] > 0  # (64, 64) cells touching the person
    assert (parts.amax(0) > 0).sum() > 0 and not (parts.amax(0)[~inside] > 0).any()
    assert inside.float().mean() < 0.7 and not inside[0, 0]  # the mask is the person, not the picture


def _real_crop(photos, pid, n):
    """A 128 x 64 re-id-like crop of one of the two photographs, varied per identity and image."""
    src = photos["astronaut"][0:512, 40:420] if pid % 2 else photos["camera"][60:512, 20:330]
    crop = np.asarray(Image.fromarray(np.ascontiguousarray(src)).resize((64, 128), Image.BILINEAR))
    crop = crop[:, ::-1] if n % 2 else crop
    return np.clip(crop * (0.7 + 0.05 * (pid % 7)), 0, 255).astype(np.uint8)


def test_generated_masks_train_profd_for_one_epoch(tmp_path, mediapipe_backend, photos, capsys):
    data = make_market_like(str(tmp_path / "Market-1501-v15.09.15"), mask_suffix=None, junk=False)
    for paths in data.values():
        for n, path in enumerate(paths):
            pid = int(osp.basename(path).split("_")[0])
            Image.fromarray(_real_crop(photos, pid, n)).save(path)
    assert run_tool("--root", str(tmp_path), "--dataset", "market1501", backend=mediapipe_backend) == 0
    ds = DATASETS["market1501"](root=str(tmp_path), verbose=False)
    seen = [load_part_masks(ds.mask_path(img), "five_v").amax() > 0.5 for img, *_ in ds.train]
    assert sum(seen) >= 0.75 * len(seen)  # MediaPipe finds the person in (nearly) every crop

    from profd_plugin.config import setup_cfg
    from profd_plugin.data.datamanager import ProFDDataManager

    config = osp.join(ROOT, "configs", "profd_synthetic.yaml")
    opts = tiny_run_opts(str(tmp_path), str(tmp_path / "log"), **{
        "data.sources": "['market1501']", "data.targets": "['market1501']", "data.transforms": "[]"})
    dm = ProFDDataManager.from_cfg(setup_cfg(config, opts), with_masks=True)
    visibility = torch.stack([dm.train_loader.dataset[i]["visibility"] for i in range(len(ds.train))])
    assert visibility[:, 1:].any(1).float().mean() >= 0.75  # the training targets come from the masks
    main = load_tool("main")
    assert main.main(["--config-file", config, *opts]) == 0
    assert "market1501" in capsys.readouterr().out
