"""ProFDDataManager: batch dict, P x K structure, masks on/off, bad input, sharded sampler, from_cfg."""

import logging
import os
import os.path as osp
import random
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torchreid.reid.data.sampler import RandomIdentitySampler

from profd_plugin.config import get_default_config
from profd_plugin.data import datamanager as datamanager_module
from profd_plugin.data import synthetic
from profd_plugin.data.datamanager import ProFDDataManager, dataset_kwargs_from_cfg, read_image
from profd_plugin.data.datasets import DatasetError
from profd_plugin.data.masks import MaskParams
from profd_plugin.data.sampler import ShardedIdentitySampler

SMALL = dict(height=32, width=16, batch_size_train=8, batch_size_test=4, num_instances=2, workers=0)


def manager(root, **kwargs):
    return ProFDDataManager(root=str(root), sources="market1501", **{**SMALL, **kwargs})


@pytest.fixture
def market(tmp_path, market_like):
    return market_like(str(tmp_path / "Market-1501-v15.09.15"))


def test_train_batch_dict(tmp_path, market):
    dm = manager(tmp_path)
    batch = next(iter(dm.train_loader))
    assert batch["img"].shape == (8, 3, 32, 16) and batch["img"].dtype == torch.float32
    for key in ("pid", "camid", "dsetid"):
        assert batch[key].shape == (8,) and batch[key].dtype == torch.int64
    assert len(batch["impath"]) == 8 and isinstance(batch["impath"][0], str)
    assert batch["masks"].shape == (8, 6, 8, 4) and batch["masks"].dtype == torch.float32
    assert torch.allclose(batch["masks"].sum(1), torch.ones(8, 8, 4), atol=1e-5)
    assert batch["visibility"].shape == (8, 6) and batch["visibility"].dtype == torch.bool
    pids = batch["pid"].view(4, 2)  # P=4 identities x K=2 consecutive instances
    assert (pids[:, 0] == pids[:, 1]).all() and len(set(pids[:, 0].tolist())) == 4
    assert dm.num_train_pids == 6 and dm.num_train_cams == 2 and dm.num_parts == 5
    assert dm.part_names[0] == "head" and dm.data_type == "image" and (dm.height, dm.width) == (32, 16)


def test_test_loaders_have_no_masks(tmp_path, market):
    masks = tmp_path / "Market-1501-v15.09.15" / "masks" / "pifpaf_maskrcnn_filtering"
    shutil.rmtree(masks / "query")
    shutil.rmtree(masks / "bounding_box_test")
    dm = manager(tmp_path)
    batch = next(iter(dm.test_loader["market1501"]["gallery"]))
    assert set(batch) == {"img", "pid", "camid", "dsetid", "impath"}
    query, gallery = dm.fetch_test_loaders("market1501")
    assert len(query) == 3 and len(gallery) == 7 and dm.test_dataset["market1501"]["query"] is query


def test_without_masks_reads_no_mask_file(tmp_path, market_like):
    market_like(str(tmp_path / "Market-1501-v15.09.15"), mask_suffix=None)
    dm = manager(tmp_path, with_masks=False)
    batch = next(iter(dm.train_loader))
    assert "masks" not in batch and batch["img"].shape == (8, 3, 32, 16)


def test_missing_masks_error_or_warning(tmp_path, market_like, caplog):
    market_like(str(tmp_path / "Market-1501-v15.09.15"), mask_suffix=None)
    with pytest.raises(
        DatasetError, match=r"missing mask for 24 of 24 train images.*bounding_box_train.*\.npy"
    ):
        manager(tmp_path)
    with caplog.at_level(logging.WARNING):
        dm = manager(tmp_path, mask_params=MaskParams(required=False))
    assert sum("24 of 24 train images have no mask" in r.message for r in caplog.records) == 1
    batch = next(iter(dm.train_loader))
    assert batch["visibility"][:, 1:].sum() == 0 and (batch["masks"][:, 0] > 0.99).all()


def test_bad_files_named_from_getitem(tmp_path, market):
    dm = manager(tmp_path)
    dataset = dm.train_loader.dataset
    img, mask = dataset.items[0][0], dataset.mask_paths[0]
    np.save(mask, np.zeros((4, 2)))
    with pytest.raises(DatasetError, match="malformed mask .*3 dims") as info:
        dataset[0]
    assert img in str(info.value) and mask in str(info.value)
    os.remove(mask)
    with pytest.raises(DatasetError, match="missing mask") as info:
        dataset[0]
    assert img in str(info.value) and mask in str(info.value)
    os.mkdir(mask)  # a folder where the file should be: unreadable
    with pytest.raises(DatasetError, match="malformed mask .*cannot read") as info:
        dataset[0]
    assert img in str(info.value) and mask in str(info.value) and "\n" not in str(info.value)
    with open(dataset.items[1][0], "wb") as f:
        f.write(b"broken")
    with pytest.raises(DatasetError, match="cannot read image .*bounding_box_train"):
        dataset[1]


def test_worker_error_keeps_one_line_message(tmp_path, market):
    for path in market["bounding_box_train"]:
        open(path, "w").close()
    dm = manager(tmp_path, workers=1)
    batches = iter(dm.train_loader)
    with pytest.raises(DatasetError) as info:
        next(batches)
    assert str(info.value).startswith("cannot read image ") and "\n" not in str(info.value)
    # torch's re-raise leaves the error in a reference cycle with its traceback, which holds the iterator.
    # Left to a later garbage collection (in another test), the queues can be finalised before the
    # iterator, whose stop message then never reaches the worker: 5 s of join timeout, then a kill.
    # Breaking the cycle frees the iterator here, and its worker stops at once.
    info.value.__traceback__ = None
    del info, batches


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(DatasetError, match="occluded_duke"):
        ProFDDataManager(root=str(tmp_path), sources="occluded_dukee", **SMALL)


def test_test_only_source_rejected(tmp_path, pid_folders):
    for split in ("occluded_body_images", "whole_body_images"):
        pid_folders(str(tmp_path / "Occluded_REID" / split), [1, 2], 1, ".tif")
    with pytest.raises(DatasetError, match="test-only"):
        ProFDDataManager(root=str(tmp_path), sources="occluded_reid", **SMALL)


def test_sharded_sampler_partitions_groups(tmp_path):
    items = [(f"{i}.jpg", i // 5, 0, 0) for i in range(40)]  # 8 ids x 5 images
    base = RandomIdentitySampler(items, batch_size=8, num_instances=2)
    ranks = [ShardedIdentitySampler(base, r, 2, 2, seed=3) for r in range(2)]
    random.seed(123)
    expected_next = random.random()
    random.seed(123)
    shards = [list(s) for s in ranks]
    assert random.random() == expected_next  # global RNG state restored
    groups = [[tuple(s[i : i + 2]) for i in range(0, len(s), 2)] for s in shards]
    for g in groups[0] + groups[1]:
        assert items[g[0]][1] == items[g[1]][1]  # K indices of one identity stay together
    assert not set(shards[0]) & set(shards[1])  # no overlap
    assert len(shards[0]) == len(shards[1]) == len(ranks[0])
    assert [list(s) for s in ranks] == shards  # deterministic per epoch
    for s in ranks:
        s.set_epoch(1)
    assert [list(s) for s in ranks] != shards


def test_from_cfg_and_distributed_batch(tmp_path, market):
    cfg = get_default_config()
    cfg.merge_from_list(
        [
            "data.root",
            str(tmp_path),
            "data.sources",
            "['market1501']",
            "data.targets",
            "['market1501']",
            "data.height",
            "32",
            "data.width",
            "16",
            "data.workers",
            "0",
            "train.batch_size",
            "8",
            "sampler.num_instances",
            "2",
            "test.batch_size",
            "4",
        ]
    )
    dm = ProFDDataManager.from_cfg(cfg, with_masks=True, rank=1, world_size=2)
    assert isinstance(dm.train_sampler, ShardedIdentitySampler) and dm.train_loader.batch_size == 4
    batch = next(iter(dm.train_loader))
    assert batch["masks"].shape == (4, 6, 8, 4)
    cfg.merge_from_list(["data.transforms", "['random_flip', 'random_crap']"])
    with pytest.raises(ValueError, match="random_crap"):
        ProFDDataManager.from_cfg(cfg, with_masks=True)
    cfg.merge_from_list(["data.transforms", "['random_flip']", "train.batch_size", "6"])
    with pytest.raises(ValueError, match="divisible"):
        ProFDDataManager.from_cfg(cfg, with_masks=True, world_size=2)


def test_worker_seeding_deterministic(tmp_path, market):
    """Workers draw their augmentations from the loader's generator seed only (torch seeds each worker
    from it; no worker_init_fn): the main process's global RNG state must not matter."""

    def first_batch(seed, global_seed, workers=2):
        random.seed(0)  # the host sampler draws from python/numpy global RNGs in the main process
        np.random.seed(0)
        torch.manual_seed(global_seed)  # workers must not depend on (or inherit) this state
        dm = manager(tmp_path, workers=workers, seed=seed)
        return next(iter(dm.train_loader))

    a, b, c = first_batch(7, global_seed=1), first_batch(7, global_seed=2), first_batch(8, global_seed=1)
    assert a["impath"] == b["impath"] == c["impath"]
    assert torch.equal(a["img"], b["img"]) and torch.equal(a["masks"], b["masks"])
    assert not torch.equal(a["img"], c["img"])  # another generator seed, other augmentations
    d, e = first_batch(7, global_seed=3, workers=1), first_batch(7, global_seed=4, workers=1)
    assert (
        d["impath"] == e["impath"] and torch.equal(d["img"], e["img"]) and torch.equal(d["masks"], e["masks"])
    )


def test_multiple_sources_sum(tmp_path, market, market_like):
    market_like(
        str(tmp_path / "Occluded_Duke"), train_pids=(4, 8, 9), mask_suffix=".jpg.confidence_fields.npy"
    )
    dm = ProFDDataManager(root=str(tmp_path), sources=["market1501", "occluded_duke"], **SMALL)
    assert dm.num_train_pids == 9 and dm.num_train_cams == 4 and dm.targets == dm.sources
    items = dm.train_loader.dataset.items
    assert {(i[3], i[1]) for i in items if "Occluded_Duke" in i[0]} == {(1, 6), (1, 7), (1, 8)}
    assert all(p is not None for p in dm.train_loader.dataset.mask_paths)


def test_synthetic_from_dataset_kwargs(synthetic_root, synthetic_params):
    dm = ProFDDataManager(
        root=synthetic_root,
        sources="synthetic_occluded",
        dataset_kwargs={"synthetic_occluded": synthetic_params},
        **SMALL,
    )
    batch = next(iter(dm.train_loader))
    assert batch["masks"].shape == (8, 6, 8, 4) and batch["visibility"][:, 1:].any()


def _epochs(dm, epochs=2):
    """Every batch of ``epochs`` epochs, each seeded as the engine does (global RNGs + loader generator)."""
    batches = []
    for epoch in range(epochs):
        random.seed(epoch)
        np.random.seed(epoch)
        torch.manual_seed(epoch)
        dm.train_loader.generator.manual_seed(100 + epoch)
        batches += list(dm.train_loader)
    return batches


@pytest.mark.parametrize("height, width, workers", [(32, 16, 0), (64, 32, 0), (64, 32, 1)])
def test_cached_train_set_gives_the_same_batches(synthetic_root, synthetic_params, height, width, workers):
    """data.cache_train reads every item once at construction; the batches of every epoch are the uncached
    ones bit for bit (resized or at the native 64x32, in the main process or a forked worker), and the
    augmentations never write into the cached tensors."""
    def build(cache):
        return ProFDDataManager(root=synthetic_root, sources="synthetic_occluded", cache_train=cache,
                                dataset_kwargs={"synthetic_occluded": synthetic_params},
                                **{**SMALL, "height": height, "width": width, "workers": workers})

    plain, cached = build(False), build(True)
    dataset = cached.train_loader.dataset
    assert plain.train_loader.dataset._cache is None and len(dataset._cache) == len(dataset) == 24
    expected, got = _epochs(plain), _epochs(cached)
    assert len(got) == len(expected) >= 4
    for a, b in zip(expected, got):
        assert a["impath"] == b["impath"] and a["pid"].equal(b["pid"])
        for key in ("img", "masks", "visibility"):
            assert a[key].equal(b[key]), key
    assert not expected[0]["img"].equal(expected[-1]["img"])
    for index, (img, parts) in enumerate(dataset._cache):
        fresh_img, fresh_parts = dataset._read(index)
        assert img.equal(fresh_img) and parts.equal(fresh_parts) and img.dtype == torch.uint8


def test_cached_train_set_names_a_bad_file_at_construction(synthetic_root, synthetic_params, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(synthetic_root, root)
    dm = ProFDDataManager(root=str(root), sources="synthetic_occluded",
                          dataset_kwargs={"synthetic_occluded": synthetic_params}, **SMALL)
    bad = dm.train_loader.dataset.items[5][0]
    with open(bad, "wb") as f:
        f.write(b"broken")
    with pytest.raises(DatasetError, match="cannot read image") as info:
        ProFDDataManager(root=str(root), sources="synthetic_occluded", cache_train=True,
                         dataset_kwargs={"synthetic_occluded": synthetic_params}, **SMALL)
    assert bad in str(info.value) and "\n" not in str(info.value)


class FakeDist:
    """``torch.distributed`` stand-in for one rank: records barriers and what existed at each one."""

    def __init__(self, root):
        self.meta = osp.join(root, "synthetic_occluded", "meta.json")
        self.barriers = []

    def is_available(self):
        return True

    def is_initialized(self):
        return True

    def barrier(self):
        self.barriers.append(osp.isfile(self.meta))


@pytest.mark.parametrize("rank", [0, 1])
def test_distributed_rank0_generates_synthetic_before_barrier(tmp_path, synthetic_params, monkeypatch, rank):
    root = str(tmp_path)
    fake = FakeDist(root)
    generated = []
    real_generate = synthetic.generate_synthetic_occluded

    def spy(dataset_dir, **params):
        generated.append(len(fake.barriers))  # barriers passed before this generation
        return real_generate(dataset_dir, **params)

    monkeypatch.setattr(datamanager_module, "dist", fake)
    monkeypatch.setattr(synthetic, "generate_synthetic_occluded", spy)
    if rank == 1:  # rank 0 has generated it (on its side of the barrier)
        synthetic.ensure_synthetic_occluded(root, **synthetic_params)
        generated.clear()
    dm = ProFDDataManager(
        root=root,
        sources="synthetic_occluded",
        dataset_kwargs={"synthetic_occluded": synthetic_params},
        rank=rank,
        world_size=2,
        **SMALL,
    )
    assert fake.barriers == [True]  # one barrier, and the dataset was complete there
    assert generated == ([0] if rank == 0 else [])  # only rank 0 generates, before the barrier
    assert dm.num_train_pids == synthetic_params["num_ids"] and dm.train_loader.batch_size == 4


def test_no_barrier_without_process_group(tmp_path, market, monkeypatch):
    fake = FakeDist(str(tmp_path))
    fake.is_initialized = lambda: False
    monkeypatch.setattr(datamanager_module, "dist", fake)
    manager(tmp_path, rank=1, world_size=2)
    assert fake.barriers == []


def test_dataset_kwargs_from_cfg_and_pil_preprocessing(tmp_path, market):
    cfg = get_default_config()
    kwargs = dataset_kwargs_from_cfg(cfg)["synthetic_occluded"]
    assert kwargs == {**synthetic.DEFAULT_PARAMS, "cache_dir": ""}  # config defaults = generator defaults
    dm = manager(tmp_path)
    path = market["query"][0]
    with Image.open(path) as im:
        assert torch.equal(dm.preprocess_pil_img(im), dm.transform_te(read_image(path)))
