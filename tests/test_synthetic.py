"""The procedural synthetic occluded dataset: layout, masks, occlusion, siblings, determinism, atomicity."""
import json
import os
import re
from collections import defaultdict

import numpy as np
import pytest

from profd_plugin.data import synthetic as syn
from profd_plugin.data.datasets import SyntheticOccluded

TINY = {"num_ids": 6, "num_test_ids": 4, "images_per_id": 4, "height": 128, "width": 64, "seed": 3}
NAME = re.compile(r"^(\d{4})_c(\d)_f(\d{8})\.jpg$")
SPLIT_DIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}  # as Occ-Duke
MASK_DIR = os.path.join("masks", "pifpaf_maskrcnn_filtering")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny dataset generated once: (folder, stats, meta)."""
    root = tmp_path_factory.mktemp("syn") / "ds"
    stats = syn.generate_synthetic_occluded(str(root), **TINY)
    with open(root / "meta.json") as f:
        return root, stats, json.load(f)


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, n), root) for d, _, names in os.walk(root) for n in names)


def _images(root, split):
    """(pid, cam, file name) of every image of ``split``."""
    folder = root / SPLIT_DIRS[split]
    out = []
    for name in sorted(os.listdir(folder)):
        m = NAME.match(name)
        assert m, name
        out.append((int(m.group(1)), int(m.group(2)), name))
    return out


def test_deterministic(tiny, tmp_path):
    root = tiny[0]
    syn.generate_synthetic_occluded(str(tmp_path / "again"), **TINY)
    assert _files(root) == _files(tmp_path / "again")
    for rel in _files(root):
        assert (root / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel


def test_layout_names_and_counts(tiny):
    root, stats, meta = tiny
    assert {split: dirs[0] for split, dirs in SyntheticOccluded.split_dirs.items()} == SPLIT_DIRS
    assert sorted(os.listdir(root / MASK_DIR)) == sorted(SPLIT_DIRS.values())
    n = TINY["images_per_id"]
    train, query, gallery = (_images(root, s) for s in ("train", "query", "gallery"))
    assert all(1 <= cam <= 8 for _, cam, _ in train + query + gallery)
    assert len(train) == TINY["num_ids"] * n and len({p for p, _, _ in train}) == TINY["num_ids"]
    assert len(query) + len(gallery) == TINY["num_test_ids"] * n
    test_ids = {p for p, _, _ in query}
    assert test_ids == {p for p, _, _ in gallery} and len(test_ids) == TINY["num_test_ids"]
    assert not test_ids & {p for p, _, _ in train}
    assert stats == meta["stats"]
    assert stats["train"]["ids"] == TINY["num_ids"] and stats["train"]["images"] == len(train)
    assert stats["query"]["images"] == len(query) and stats["gallery"]["images"] == len(gallery)
    assert meta["params"] == TINY and meta["format_version"] == syn.FORMAT_VERSION


def test_every_query_has_gallery_match_in_another_camera(tiny):
    root = tiny[0]
    gallery_cams = defaultdict(set)
    for pid, cam, _ in _images(root, "gallery"):
        gallery_cams[pid].add(cam)
    for pid, cam, name in _images(root, "query"):
        assert gallery_cams[pid] - {cam}, name


def test_masks_paths_shapes_and_range(tiny):
    root = tiny[0]
    h, w = TINY["height"] // 8, TINY["width"] // 8
    for split, folder in SPLIT_DIRS.items():
        for _, _, name in _images(root, split):
            path = root / "masks" / "pifpaf_maskrcnn_filtering" / folder / (name + ".confidence_fields.npy")
            fields = np.load(path)
            assert fields.shape == (36, h, w) and fields.dtype == np.float32
            assert fields.min() >= 0 and fields.max() <= 1
            assert 0.2 < fields.max() < 1  # a detected person, with detector-like confidence below 1


def test_occlusion_rates_and_query_coverage(tiny):
    root, stats, meta = tiny
    occ = meta["occlusions"]
    queries = {f"query/{name}" for _, _, name in _images(root, "query")}
    assert queries <= set(occ) and stats["query"]["occluded"] == stats["query"]["images"]
    for rec in occ.values():
        assert 0.2 <= rec["coverage"] <= 0.6 and rec["kind"] in syn.OCCLUDER_KINDS
    for split in ("train", "gallery"):
        frac = stats[split]["occluded"] / stats[split]["images"]
        assert 0 < frac <= 0.15, (split, frac)


def test_masks_are_zero_under_occluders(tiny):
    root = tiny[0]
    p = TINY
    outfits, jobs = syn.build_plan(num_ids=p["num_ids"], num_test_ids=p["num_test_ids"],
                                   images_per_id=p["images_per_id"], seed=p["seed"])
    occluded = [j for j in jobs if j.occluded]
    assert occluded
    s = syn.MASK_STRIDE
    for job in occluded:
        sample = syn.render_job(job, outfits[job.pid], height=p["height"], width=p["width"], seed=p["seed"])
        saved = np.load(root / MASK_DIR / SPLIT_DIRS[job.split] / (job.filename + ".confidence_fields.npy"))
        np.testing.assert_array_equal(saved, sample.fields)
        h, w = saved.shape[1:]
        covered = sample.occluder.reshape(h, s, w, s).mean((1, 3)) >= 0.5
        assert covered.any()
        assert np.all(saved[:, covered] == 0)
        hidden = (sample.body & sample.occluder).sum() / sample.body.sum()
        assert 0.2 <= hidden <= 0.6 and np.isclose(hidden, sample.coverage)


def test_sibling_identities_share_one_half(tiny):
    ids = tiny[2]["identities"]
    upper = ("hair", "upper", "bag")
    lower = ("lower", "shoes")
    test_pids = {p for p in ids if int(p) > TINY["num_ids"]}
    for pids in (set(ids) - test_pids, test_pids):
        pairs = [(a, b) for a in pids for b in pids if a < b]
        same = {k: [all(ids[a][f] == ids[b][f] for f in half) for a, b in pairs] for k, half in
                (("upper", upper), ("lower", lower))}
        assert any(u and not lo for u, lo in zip(same["upper"], same["lower"]))  # share upper, differ lower
        assert any(lo and not u for u, lo in zip(same["upper"], same["lower"]))  # and vice versa


@pytest.mark.parametrize("name,value", [("num_ids", 1), ("num_test_ids", 0), ("images_per_id", 1),
                                        ("height", 100), ("width", 60), ("seed", -1), ("height", 64.0)])
def test_bad_params_raise_naming_them(tmp_path, name, value):
    with pytest.raises(ValueError, match=name):
        syn.generate_synthetic_occluded(str(tmp_path / "x"), **{**TINY, name: value})
    with pytest.raises(ValueError, match=name):
        syn.ensure_synthetic_occluded(str(tmp_path), **{**TINY, name: value})
    assert not os.listdir(tmp_path)


def test_unknown_param_raises_naming_it(tmp_path):
    with pytest.raises(ValueError, match="num_idz"):
        syn.generate_synthetic_occluded(str(tmp_path / "x"), **{**TINY, "num_idz": 3})
    assert not os.listdir(tmp_path)


def test_ensure_regenerates_on_param_change_and_is_atomic(tmp_path, monkeypatch):
    folder = syn.ensure_synthetic_occluded(str(tmp_path), **TINY)
    assert folder == str(tmp_path / "synthetic_occluded")
    before = {rel: (tmp_path / "synthetic_occluded" / rel).read_bytes() for rel in _files(folder)}
    mtime = os.path.getmtime(os.path.join(folder, "meta.json"))
    assert syn.ensure_synthetic_occluded(str(tmp_path), **TINY) == folder  # up to date: no regeneration
    assert os.path.getmtime(os.path.join(folder, "meta.json")) == mtime

    calls = []
    real = syn.render_job

    def failing(*args, **kwargs):  # the generator dies half-way through
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(syn, "render_job", failing)
    with pytest.raises(KeyboardInterrupt):
        syn.ensure_synthetic_occluded(str(tmp_path), **{**TINY, "seed": 4})
    assert os.listdir(tmp_path) == ["synthetic_occluded"]  # no partial dataset left behind
    assert {rel: (tmp_path / "synthetic_occluded" / rel).read_bytes() for rel in _files(folder)} == before

    monkeypatch.setattr(syn, "render_job", real)
    syn.ensure_synthetic_occluded(str(tmp_path), **{**TINY, "seed": 4})
    with open(os.path.join(folder, "meta.json")) as f:
        assert json.load(f)["params"]["seed"] == 4
    assert sorted(os.listdir(tmp_path)) == ["synthetic_occluded"]

    os.remove(os.path.join(folder, "meta.json"))  # a folder without meta.json is not a complete dataset
    syn.ensure_synthetic_occluded(str(tmp_path), **{**TINY, "seed": 4})
    assert os.path.isfile(os.path.join(folder, "meta.json"))


def test_ensure_first_generation_failure_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(syn, "render_job", boom)
    with pytest.raises(RuntimeError):
        syn.ensure_synthetic_occluded(str(tmp_path), **TINY)
    assert os.listdir(tmp_path) == []
