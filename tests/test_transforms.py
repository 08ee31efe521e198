"""Joint image + mask augmentation: identical geometry, erasing -> background, names, test transform."""

import pytest
import torch
from torchvision import tv_tensors

from profd_plugin.data.transforms import (
    TRAIN_TRANSFORMS,
    AugmentParams,
    build_test_transform,
    build_train_transform,
    check_transform_names,
)

H, W = 32, 16
NORM = dict(norm_mean=[0.5] * 3, norm_std=[0.5] * 3)


def feature_pair():
    """A black image with an asymmetric white block and a mask channel marking exactly that block."""
    img = torch.zeros(3, H, W, dtype=torch.uint8)
    img[:, 4:13, 2:7] = 255
    mask = torch.zeros(2, H, W)
    mask[0, 4:13, 2:7] = 1.0
    return tv_tensors.Image(img), tv_tensors.Mask(mask)


def test_unknown_transform_name_lists_valid():
    with pytest.raises(ValueError, match="random_flip, random_crop"):
        check_transform_names(["random_flip", "random_flipp"])
    assert check_transform_names("random_erase") == ("random_erase",)


def test_mask_follows_image_under_flip_crop_erase():
    t = build_train_transform(
        height=H,
        width=W,
        transforms=["random_flip", "random_crop", "random_erase"],
        **NORM,
        augment=AugmentParams(pad=4, erase_prob=0.7),
    )
    torch.manual_seed(0)
    positions, erased_any = set(), False
    for _ in range(40):
        img, mask = t(*feature_pair())
        feature = (img == 1.0).all(0)  # white -> +1 after normalisation
        black = (img == -1.0).all(0)  # black and zero padding -> -1
        erased = ~(feature | black)  # per-pixel N(0, 1) noise
        assert torch.equal(mask[0] == 1.0, feature), "mask must mark exactly the (visible) feature"
        assert (mask[0][black | erased] == 0).all() and (mask[1] == 0).all()
        erased_any |= bool(erased.any())
        if feature.any():
            ys, xs = feature.nonzero(as_tuple=True)
            positions.add((int(ys.min()), int(xs.min())))
    assert len(positions) > 5 and erased_any  # flips and crops really moved the feature


def test_erased_box_becomes_background_in_mask():
    t = build_train_transform(
        height=H, width=W, transforms=["random_erase"], **NORM, augment=AugmentParams(erase_prob=1.0)
    )
    torch.manual_seed(1)
    img, mask = t(
        tv_tensors.Image(torch.zeros(3, H, W, dtype=torch.uint8)), tv_tensors.Mask(torch.ones(5, H, W))
    )
    erased = img[0] != -1.0
    assert erased.any() and (mask[:, erased] == 0).all() and (mask[:, ~erased] == 1).all()


def test_color_jitter_is_image_only_and_resize_is_bilinear():
    t = build_train_transform(
        height=H,
        width=W,
        transforms=["color_jitter"],
        **NORM,
        augment=AugmentParams(jitter_prob=1.0, brightness=0.5),
    )
    img = tv_tensors.Image(torch.full((3, 64, 32), 100, dtype=torch.uint8))
    step = torch.zeros(5, 4, 2)
    step[:, 2:] = 1.0  # a step between rows 1 and 2 of the 4-row mask
    torch.manual_seed(0)
    out, mask = t(img, tv_tensors.Mask(step))
    assert out.shape == (3, H, W) and mask.shape == (5, H, W)
    # bilinear, align_corners=False, 8x: output row y samples source row (y + 0.5) / 8 - 0.5
    assert torch.allclose(mask[:, 15], torch.full((5, W), 0.4375))  # source row 1.4375
    assert torch.allclose(mask[:, 16], torch.full((5, W), 0.5625))  # source row 1.5625
    assert (mask[:, :4] == 0).all() and (mask[:, -4:] == 1).all()
    expected = torch.nn.functional.interpolate(step[None], size=(H, W), mode="bilinear", align_corners=False)
    assert torch.allclose(mask, expected[0])  # the mask is resized, not jittered
    plain = build_test_transform(height=H, width=W, **NORM)(img)  # the same resize, no jitter
    assert not torch.allclose(out, plain, atol=1e-3)  # the image was jittered


def test_test_transform_resizes_and_normalises():
    t = build_test_transform(height=H, width=W, **NORM)
    out = t(tv_tensors.Image(torch.full((3, 64, 32), 255, dtype=torch.uint8)))
    assert out.shape == (3, H, W) and torch.allclose(out, torch.ones(3, H, W))


def test_all_names_build():
    t = build_train_transform(height=H, width=W, transforms=list(TRAIN_TRANSFORMS), **NORM)
    img, mask = t(*feature_pair())
    assert img.dtype == torch.float32 and mask.shape == (2, H, W)


def test_crop_probability_switch():
    """``profd.augment.crop_prob``: 1.0 always crops (official), 0 never does (the image is only resized)."""
    import torch
    from torchvision import tv_tensors

    from profd_plugin.data.transforms import AugmentParams, build_train_transform

    img = tv_tensors.Image(torch.arange(3 * 32 * 16, dtype=torch.uint8).reshape(3, 32, 16))
    kw = dict(height=32, width=16, transforms=["random_crop"], norm_mean=[0.0] * 3, norm_std=[1.0] * 3)
    never = build_train_transform(**kw, augment=AugmentParams(pad=4, crop_prob=0.0))
    always = build_train_transform(**kw, augment=AugmentParams(pad=4, crop_prob=1.0))
    plain = never(img)
    outs = [always(img) for _ in range(8)]
    assert all(torch.equal(never(img), plain) for _ in range(4))
    assert any(not torch.equal(o, plain) for o in outs)
