"""Dataset adapters on fake trees: layouts, parsing, relabel order, mask paths, errors, registration."""

import os
import os.path as osp
import shutil

import numpy as np
import pytest
from torchreid.reid.data.datasets import init_image_dataset
from torchreid.reid.data.datasets.image.dukemtmcreid import DukeMTMCreID as HostDuke
from torchreid.reid.data.datasets.image.market1501 import Market1501 as HostMarket

from profd_plugin.choices import PLUGIN_DATASETS
from profd_plugin.data.builtin import ADAPTER_CLASSES, host_dataset_registry, register_datasets
from profd_plugin.data.datasets import (
    DATASETS,
    DatasetError,
    DukeMTMCreID,
    Market1501,
    OccludedDuke,
    OccludedReID,
    PDukeMTMCreID,
    SyntheticOccluded,
    split_counts,
)

MASKS = osp.join("masks", "pifpaf_maskrcnn_filtering")


def raw_items(items, inverse=None):
    """Set of (path, raw pid, camid); ``inverse`` maps relabelled train pids back to raw pids."""
    return {(p, inverse[pid] if inverse else pid, c) for p, pid, c, *_ in items}


def inverse_relabel(items):
    """label -> raw pid, read from the file names."""
    return {pid: int(osp.basename(p).split("_")[0]) for p, pid, *_ in items}


def test_market_official_layout_counts_and_parsing(tmp_path, market_like):
    market_like(str(tmp_path / "Market-1501-v15.09.15"))
    ds = Market1501(root=str(tmp_path), verbose=False)
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (24, 3, 7)
    assert ds.num_train_pids == 6 and ds.num_train_cams == 2
    # sorted relabel: raw (1, 3, 7, 12, 20, 25) -> 0..5, files sorted
    assert inverse_relabel(ds.train) == {0: 1, 1: 3, 2: 7, 3: 12, 4: 20, 5: 25}
    assert [p for p, *_ in ds.train] == sorted(p for p, *_ in ds.train)
    assert {c for _, _, c, _ in ds.train} == {0, 1}  # cameras 0-based
    assert 0 in {pid for _, pid, _, _ in ds.gallery}  # distractor kept
    assert all(pid != -1 for _, pid, _, _ in ds.train + ds.gallery)  # junk dropped
    assert {c for _, _, c, _ in ds.query} == {0}


@pytest.mark.parametrize(
    "host_cls, ours, nested, key",
    [
        (HostMarket, Market1501, "market1501/Market-1501-v15.09.15", "market1501"),
        (HostDuke, DukeMTMCreID, "dukemtmc-reid/DukeMTMC-reID", "dukemtmcreid"),
    ],
)
def test_same_lists_as_torchreid(tmp_path, market_like, host_cls, ours, nested, key):
    market_like(str(tmp_path / nested), junk=host_cls is HostMarket, cams=(1, 2, 6))
    host = host_cls(root=str(tmp_path), verbose=False)
    mine = ours(root=str(tmp_path), verbose=False)
    assert raw_items(mine.train, inverse_relabel(mine.train)) == raw_items(
        host.train, inverse_relabel(host.train)
    )
    assert raw_items(mine.query) == raw_items(host.query) and raw_items(mine.gallery) == raw_items(
        host.gallery
    )
    assert mine.num_train_pids == host.num_train_pids and mine.num_train_cams == host.num_train_cams


def test_resize_folders_preferred_and_mask_paths(tmp_path, market_like):
    data_dir = str(tmp_path / "Occluded_Duke")
    market_like(data_dir, mask_suffix=None)
    market_like(data_dir, resize=True, mask_suffix=".jpg.confidence_fields.npy")
    ds = OccludedDuke(root=str(tmp_path), verbose=False)
    img = ds.train[0][0]
    assert osp.basename(osp.dirname(img)) == "bounding_box_train_resize"
    name = osp.splitext(osp.basename(img))[0]
    expected = osp.join(data_dir, MASKS, "bounding_box_train_resize", name + ".jpg.confidence_fields.npy")
    assert ds.mask_path(img) == expected and osp.isfile(expected)


def test_mask_folder_falls_back_to_resize_toggle(tmp_path, market_like):
    data_dir = str(tmp_path / "Market-1501-v15.09.15")
    market_like(data_dir, resize=True, mask_suffix=None)
    market_like(str(tmp_path / "other"), mask_suffix=".npy")  # masks made for the original folders
    shutil.move(str(tmp_path / "other" / "masks"), osp.join(data_dir, "masks"))
    ds = Market1501(root=str(tmp_path), verbose=False)
    path = ds.mask_path(ds.train[0][0])
    assert osp.basename(osp.dirname(path)) == "bounding_box_train" and osp.isfile(path)


def test_occluded_reid_tif_test_only(tmp_path, pid_folders):
    base = tmp_path / "occluded_reid" / "Occluded_REID"
    pid_folders(
        str(base / "occluded_body_images"),
        [1, 2, 3],
        2,
        ".tif",
        mask_dir=str(base / MASKS / "occluded_body_images"),
    )
    pid_folders(str(base / "whole_body_images"), [1, 2, 3], 2, ".tif")
    ds = OccludedReID(root=str(tmp_path), verbose=False)
    assert (len(ds.query), len(ds.gallery)) == (6, 6) and ds.test_only and len(ds.train) == 12
    assert {c for _, _, c, _ in ds.query} == {0} and {c for _, _, c, _ in ds.gallery} == {1}
    assert {pid for _, pid, _, _ in ds.query} == {1, 2, 3}  # raw pids in test splits
    q = ds.query[0][0]
    assert ds.mask_path(q) == str(base / MASKS / "occluded_body_images" / "0001_00.npy")
    assert osp.isfile(ds.mask_path(q))


def test_p_dukemtmc_layout(tmp_path, pid_folders):
    base = tmp_path / "P-DukeMTMC-reID"
    pid_folders(
        str(base / "train_resize" / "whole_body_images"),
        [5, 9],
        2,
        ".jpg",
        mask_dir=str(base / MASKS / "train_resize" / "whole_body_images"),
    )
    pid_folders(str(base / "train_resize" / "occluded_body_images"), [9, 11], 1, ".jpg")
    pid_folders(str(base / "test_resize" / "occluded_body_images"), [20], 1, ".jpg")
    pid_folders(str(base / "test_resize" / "whole_body_images"), [20, 21], 2, ".jpg")
    ds = PDukeMTMCreID(root=str(tmp_path), verbose=False)
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (6, 1, 4)
    assert inverse_relabel(ds.train) == {0: 5, 1: 9, 2: 11}
    cams = {osp.basename(osp.dirname(osp.dirname(p))): c for p, _, c, _ in ds.train}
    assert cams == {"whole_body_images": 1, "occluded_body_images": 0}
    assert ds.query[0][2] == 0 and {c for *_, c, _ in ds.gallery} == {1}
    img = ds.train[0][0]
    assert ds.mask_path(img) == str(base / MASKS / "train_resize" / "whole_body_images" / "0005_00.npy")
    assert osp.isfile(ds.mask_path(img))


@pytest.mark.parametrize(
    "missing",
    [
        "train_resize/occluded_body_images",
        "train_resize/whole_body_images",
        "test_resize/occluded_body_images",
        "test_resize/whole_body_images",
    ],
)
def test_p_dukemtmc_requires_all_four_sub_folders(tmp_path, pid_folders, missing):
    base = tmp_path / "P-DukeMTMC-reID"
    for top in ("train_resize", "test_resize"):
        for sub in ("whole_body_images", "occluded_body_images"):
            pid_folders(str(base / top / sub), [5, 9], 1, ".jpg")
    shutil.rmtree(base / missing)
    with pytest.raises(DatasetError, match="missing folder") as info:
        PDukeMTMCreID(root=str(tmp_path), verbose=False)
    assert str(base / missing) in str(info.value) and "\n" not in str(info.value)


def test_split_folders_derive_from_one_mapping():
    assert Market1501.required_dirs() == ("bounding_box_train", "query", "bounding_box_test")
    assert OccludedReID.required_dirs() == ("occluded_body_images", "whole_body_images")
    assert PDukeMTMCreID.required_dirs() == ("train", "test")
    assert SyntheticOccluded.split_dirs == OccludedDuke.split_dirs == DukeMTMCreID.split_dirs


def test_junk_pids_market_only(tmp_path, market_like):
    """``combineall`` skips ``_junk_pids``: Market's distractors (pid 0) stay out of train, Duke's do not."""
    assert Market1501._junk_pids == [0, -1]
    for cls in (DukeMTMCreID, OccludedDuke, PDukeMTMCreID, SyntheticOccluded, OccludedReID):
        assert cls._junk_pids == [], cls.__name__
    market_like(str(tmp_path / "Market-1501-v15.09.15"), junk=False)
    market_like(str(tmp_path / "Occluded_Duke"), junk=False, mask_suffix=None)
    for cls, distractors_in_train in ((Market1501, False), (OccludedDuke, True)):
        ds = cls(root=str(tmp_path), combineall=True, verbose=False)
        train_files = {osp.basename(p) for p, *_ in ds.train}
        assert any(f.startswith("0000_") for f in train_files) == distractors_in_train, cls.__name__
        assert len(train_files) == 24 + 3 + 6 + distractors_in_train  # train + query + gallery (+ pid 0)


def test_train_mask_problems_and_split_counts(tmp_path, market_like):
    data = market_like(str(tmp_path / "DukeMTMC-reID"), junk=False)
    ds = DukeMTMCreID(root=str(tmp_path), verbose=False)
    missing, broken = ds.train[0][0], ds.train[1][0]
    os.remove(ds.mask_path(missing))
    np.save(ds.mask_path(broken), np.zeros((7, 4, 2)))
    assert ds.train_mask_problems("five_v", load=False) == [(missing, ds.mask_path(missing), "missing")]
    problems = ds.train_mask_problems("five_v", load=True)
    assert [p[:2] for p in problems] == [(img, ds.mask_path(img)) for img in (missing, broken)]
    assert problems[0][2] == "missing"
    reason = problems[1][2]
    assert reason.startswith("malformed: shape (7, 4, 2)") and ds.mask_path(broken) not in reason
    gallery = (4, len(data["bounding_box_test"]))  # 3 test ids + the distractor pid 0
    assert split_counts(ds) == {"train": (6, 24), "query": (3, 3), "gallery": gallery}


def test_missing_dataset_names_paths_and_tool(tmp_path):
    with pytest.raises(DatasetError) as info:
        OccludedDuke(root=str(tmp_path))
    msg = str(info.value)
    assert osp.join(str(tmp_path), "Occluded_Duke") in msg and "bounding_box_train/" in msg
    assert "download_masks.py" in msg and "\n" not in msg


def test_missing_split_folder_named(tmp_path, market_like):
    market_like(str(tmp_path / "Occluded_Duke"), mask_suffix=None)
    shutil.rmtree(tmp_path / "Occluded_Duke" / "query")
    with pytest.raises(DatasetError, match=r"Occluded_Duke lacks query/"):
        OccludedDuke(root=str(tmp_path))


def test_empty_split_named(tmp_path, market_like):
    data = market_like(str(tmp_path / "DukeMTMC-reID"), junk=False)
    for path in data["query"]:
        os.remove(path)
    with pytest.raises(DatasetError, match="split 'query' is empty"):
        DukeMTMCreID(root=str(tmp_path))


def test_unparsable_name_named(tmp_path, market_like, image_file):
    market_like(str(tmp_path / "DukeMTMC-reID"), junk=False)
    bad = image_file(str(tmp_path / "DukeMTMC-reID" / "query" / "oops.jpg"))
    with pytest.raises(DatasetError, match="oops.jpg"):
        DukeMTMCreID(root=str(tmp_path))
    assert osp.isfile(bad)


def test_registration_idempotent_and_host_kwargs(tmp_path, market_like):
    register_datasets()
    register_datasets()
    registry = host_dataset_registry()
    assert set(ADAPTER_CLASSES) == set(DATASETS) == set(PLUGIN_DATASETS)
    for name, cls in DATASETS.items():
        assert registry[name].adapter is cls  # a lazy constructor of the adapter
    market_like(str(tmp_path / "Market-1501-v15.09.15"))
    ds = init_image_dataset(  # the kwargs torchreid's ImageDataManager passes
        "market1501",
        transform=None,
        k_tfm=1,
        mode="query",
        combineall=False,
        root=str(tmp_path),
        split_id=0,
        cuhk03_labeled=False,
        cuhk03_classic_split=False,
        market1501_500k=False,
        verbose=False,
    )
    assert isinstance(ds, Market1501) and len(ds) == 3 and ds[0]["pid"] == ds.query[0][1]


def test_synthetic_adapter(synthetic_root, synthetic_params):
    ds = SyntheticOccluded(root=synthetic_root, verbose=False, **synthetic_params)
    assert ds.num_train_pids == synthetic_params["num_ids"]
    assert len(ds.train) == synthetic_params["num_ids"] * synthetic_params["images_per_id"]
    path = ds.mask_path(ds.train[0][0])
    assert path.endswith(".jpg.confidence_fields.npy") and osp.isfile(path)


def test_torchreid_image_datamanager_uses_adapters(tmp_path, market_like, pid_folders):
    import torchreid

    market_like(str(tmp_path / "Occluded_Duke"), resize=True, mask_suffix=None)
    for split in ("occluded_body_images", "whole_body_images"):
        pid_folders(str(tmp_path / "Occluded_REID" / split), [1, 2], 2, ".tif")
    register_datasets()
    dm = torchreid.reid.data.ImageDataManager(
        root=str(tmp_path),
        sources="occluded_duke",
        targets=["occluded_duke", "occluded_reid"],
        height=32,
        width=16,
        workers=0,
        batch_size_train=4,
        batch_size_test=4,
        train_sampler="RandomIdentitySampler",
        num_instances=2,
    )
    assert next(iter(dm.train_loader))["img"].shape == (4, 3, 32, 16)
    query = next(iter(dm.test_loader["occluded_reid"]["query"]))
    assert query["camid"].tolist() == [0, 0, 0, 0]
