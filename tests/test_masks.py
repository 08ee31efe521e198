"""Mask loading, 36 -> K grouping, background, sharpening, resizing and visibility targets."""

import numpy as np
import pytest
import torch

from profd_plugin.data.masks import (
    NUM_PIFPAF_FIELDS,
    PART_GROUPS,
    PIFPAF_FIELDS,
    MalformedMaskError,
    MaskParams,
    add_background,
    group_fields,
    load_part_masks,
    part_names,
    part_targets,
    resize_masks,
    sharpen,
    visibility_targets,
)

FIVE = part_names("five_v")  # head, upper_arms_torso, lower_arms_torso, legs, feet


def fields_with(values: dict, h: int = 4, w: int = 2) -> torch.Tensor:
    f = torch.zeros(NUM_PIFPAF_FIELDS, h, w)
    for name, v in values.items():
        f[PIFPAF_FIELDS.index(name)] = v
    return f


def test_table_names_are_pifpaf_fields():
    for grouping, parts in PART_GROUPS.items():
        for members in parts.values():
            assert set(members) <= set(PIFPAF_FIELDS), grouping


def test_left_ankle_only_in_feet():
    parts = group_fields(fields_with({"left_ankle": 0.8}), "five_v")
    assert parts.shape == (5, 4, 2)
    assert torch.allclose(parts[FIVE.index("feet")], torch.full((4, 2), 0.8))
    assert parts[[i for i, n in enumerate(FIVE) if n != "feet"]].abs().sum() == 0


def test_hip_in_two_parts_max_and_clamp():
    parts = group_fields(
        fields_with({"left_hip": 0.6, "nose": 0.3, "left_eye": 0.7, "left_knee": 1.7}), "five_v"
    )
    peak = parts.amax(dim=(-1, -2))
    assert peak[FIVE.index("head")] == pytest.approx(0.7)  # max over members
    assert peak[FIVE.index("lower_arms_torso")] == pytest.approx(0.6)
    assert peak[FIVE.index("legs")] == pytest.approx(1.0)  # clamped
    assert peak[FIVE.index("upper_arms_torso")] == 0


def test_grouping_works_on_batches():
    batch = torch.stack([fields_with({"nose": 0.5}), fields_with({"right_ankle": 0.9})])
    parts = group_fields(batch, "two_v")
    assert parts.shape == (2, 2, 4, 2)
    assert parts[0, 0].max() == 0.5 and parts[1, 1].max() == pytest.approx(0.9)


def test_unknown_grouping_lists_valid():
    with pytest.raises(KeyError, match="five_v"):
        part_names("six_parts")


def test_background_and_sharpening_values():
    parts = torch.tensor([[[0.2, 0.9]], [[0.4, 0.1]]])  # (K=2, 1, 2)
    masks = add_background(parts, threshold=0.5)
    assert masks[0].tolist() == [[1.0, 0.0]]  # pixel 0: max 0.4 < 0.5 -> background
    sharp = sharpen(masks, 15.0)
    expected = torch.softmax(15.0 * torch.tensor([1.0, 0.2, 0.4]), dim=0)
    assert torch.allclose(sharp[:, 0, 0], expected)
    assert torch.allclose(sharp.sum(0), torch.ones(1, 2))


def test_part_targets_resize_and_visibility():
    parts = torch.zeros(5, 8, 4)
    parts[0, :2] = 1.0  # head at the top
    parts[4, 6:] = 1.0  # feet at the bottom
    masks, vis = part_targets(parts, bg_threshold=0.5, sharpness=15.0, size=(4, 2))
    assert masks.shape == (6, 4, 2) and vis.dtype == torch.bool
    assert vis.tolist() == [True, True, False, False, False, True]
    assert torch.allclose(masks.sum(0), torch.ones(4, 2))
    assert resize_masks(torch.rand(3, 6, 8, 4), (4, 2)).shape == (3, 6, 4, 2)
    assert visibility_targets(masks[None].repeat(3, 1, 1, 1)).shape == (3, 6)


@pytest.mark.parametrize("size", [(64, 32), (16, 8), (8, 4), (32, 16), (5, 3), (7, 5)])
def test_part_targets_resize_first_equals_official_order(size):
    torch.manual_seed(0)
    parts = torch.rand(4, 5, 32, 16) * 1.2 - 0.1  # (N, K, H, W), many values around the threshold
    masks, vis = part_targets(parts, bg_threshold=0.5, sharpness=15.0, size=size)
    with_bg = resize_masks(add_background(parts, 0.5), size, mode="nearest")  # official order
    assert torch.equal(add_background(resize_masks(parts, size, mode="nearest"), 0.5), with_bg)
    official = sharpen(with_bg, 15.0)
    assert torch.equal(vis, visibility_targets(official))
    if size[0] * size[1] % 16 == 0:  # standard grids: bit-identical
        assert torch.equal(masks, official)
    else:  # odd grids: the vectorised softmax kernel may round the last bit differently
        torch.testing.assert_close(masks, official, rtol=0, atol=1e-7)


@pytest.mark.parametrize("channels, transposed", [(36, False), (36, True), (5, False), (5, True)])
def test_load_accepts_layouts(tmp_path, channels, transposed):
    fields = np.arange(channels * 4 * 2, dtype=np.float32).reshape(channels, 4, 2)
    fields = fields / fields.max() * 1.1  # distinct per channel and pixel; the top values get clamped
    path = str(tmp_path / "m.npy")
    np.save(path, np.moveaxis(fields, 0, -1) if transposed else fields)  # (h, w, C) or (C, h, w)
    parts = load_part_masks(path, "five_v")
    assert parts.shape == (5, 4, 2) and parts.dtype == torch.float32
    f = torch.from_numpy(fields)
    expected = group_fields(f, "five_v") if channels == NUM_PIFPAF_FIELDS else f.clamp(0, 1)
    for k, name in enumerate(FIVE):
        assert torch.equal(parts[k], expected[k]), name
    assert len({tuple(p.flatten().tolist()) for p in parts}) == 5  # the parts really differ


@pytest.mark.parametrize(
    "array, reason",
    [
        (np.zeros((4, 2)), "3 dims"),
        (np.zeros((7, 4, 2)), "channels"),
        (np.full((36, 4, 2), np.nan), "non-finite"),
    ],
)
def test_load_rejects_malformed(tmp_path, array, reason):
    path = str(tmp_path / "bad.npy")
    np.save(path, array)
    with pytest.raises(MalformedMaskError, match=reason) as info:
        load_part_masks(path, "five_v")
    assert path in str(info.value) and info.value.path == path and isinstance(info.value, ValueError)
    assert reason in info.value.detail and path not in info.value.detail


def test_load_rejects_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.npy"
    path.write_bytes(b"not a numpy file")
    with pytest.raises(MalformedMaskError, match="corrupt.npy"):
        load_part_masks(str(path), "five_v")
    with pytest.raises(FileNotFoundError):  # missing is not malformed: callers tell them apart
        load_part_masks(str(tmp_path / "absent.npy"), "five_v")


def test_mask_params_num_parts():
    assert MaskParams().num_parts == 5 and MaskParams(grouping="full").num_parts == 1
