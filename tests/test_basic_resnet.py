"""The BasicBlock CLIP ResNet towers (tiny_rn10, tiny_rn10_k3): architecture, geometry, loading, ProFD (CPU).

References are built independently: the trunk against the network written out with torch.nn.functional on
the same weights (last stride 1: the first layer4 convolution and shortcut at stride 1), the global feature
against open_clip's ``attnpool``, the patch tokens against the attention written out with plain tensor
operations.
"""
import os
from typing import Tuple

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import AttentionPool2d
from test_clip_resnet import TOKENIZER, _images, _reference_attention
from timm.models.resnet import BasicBlock

from profd_plugin.config import setup_cfg
from profd_plugin.data.masks import part_names
from profd_plugin.errors import WeightsError
from profd_plugin.losses import ProFDCriterion, ProFDTargets
from profd_plugin.modeling import ProFD, build_profd_model
from profd_plugin.modeling.basic_resnet import BasicBlockResNet
from profd_plugin.modeling.clip_backbone import (
    BASIC_BLOCK_CLIP_CONFIGS,
    PLUGIN_CLIP_CONFIGS,
    ClipResNetBackbone,
    create_clip,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "tiny_rn10_k3"  # the 3x3-stem tower (parametrised tests cover both)
#: the two BasicBlock towers and their stem kernels
STEMS = {"tiny_rn10": 7, "tiny_rn10_k3": 3}
#: both configs' values, written out: the JSON files registered with open_clip must keep them
VALUES = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 224, "layers": [1, 1, 1, 1], "width": 12, "patch_size": None},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
STAGES = (48, 96, 192, 384)  # 4w .. 32w for width 12: ModifiedResNet's stage widths, ResNet-10's depth
D = 128
PARTS = part_names("five_v")
K = len(PARTS)
#: documented shapes: (image size, stride) -> feature-map grid
GRIDS = {((256, 128), 32): (8, 4), ((256, 128), 16): (16, 8),
         ((128, 64), 32): (4, 2), ((128, 64), 16): (8, 4)}


def _backbone(image_size: Tuple[int, int], stride: int, seed: int = 0,
              name: str = NAME) -> ClipResNetBackbone:
    torch.manual_seed(seed)
    return ClipResNetBackbone(create_clip(name).visual, image_size=image_size, stride=stride)


def _reference_trunk(visual: BasicBlockResNet, images: torch.Tensor, stride: int) -> torch.Tensor:
    """The trunk written out with torch.nn.functional on the tower's weights (eval-mode BatchNorm): kxk/2
    conv (padding k // 2), BN, ReLU, 3x3/2 max pool; per stage one BasicBlock,
    relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut),
    the first conv and the 1x1 shortcut strided 2 (stage 1: 1; stage 4 at stride 16: 1)."""
    state = visual.state_dict()

    def bn(x, key):
        return F.batch_norm(x, state[f"{key}.running_mean"], state[f"{key}.running_var"],
                            state[f"{key}.weight"], state[f"{key}.bias"], training=False)

    pad = state["conv1.weight"].shape[-1] // 2
    x = F.relu(bn(F.conv2d(images, state["conv1.weight"], stride=2, padding=pad), "bn1"))
    x = F.max_pool2d(x, 3, 2, 1)
    for stage, step in zip(range(1, 5), (1, 2, 2, 2 if stride == 32 else 1)):
        key = f"layer{stage}.0"
        y = F.relu(bn(F.conv2d(x, state[f"{key}.conv1.weight"], stride=step, padding=1), f"{key}.bn1"))
        y = bn(F.conv2d(y, state[f"{key}.conv2.weight"], padding=1), f"{key}.bn2")
        shortcut = x
        if f"{key}.downsample.0.weight" in state:
            shortcut = F.conv2d(x, state[f"{key}.downsample.0.weight"], stride=step)
            shortcut = bn(shortcut, f"{key}.downsample.1")
        x = F.relu(y + shortcut)
    return x


# ---------------------------------------------------------------------------------------------- creation
@pytest.mark.parametrize("name", sorted(STEMS))
def test_config_registered_with_open_clip_and_built_as_the_basic_block_tower(name):
    assert BASIC_BLOCK_CLIP_CONFIGS[name] == STEMS[name] and PLUGIN_CLIP_CONFIGS[name] == VALUES
    model = create_clip(name)
    assert open_clip.get_model_config(name) == VALUES
    visual = model.visual
    assert isinstance(visual, BasicBlockResNet)
    stages = (visual.layer1, visual.layer2, visual.layer3, visual.layer4)
    assert [stage[0].conv2.out_channels for stage in stages] == list(STAGES)
    kernel = STEMS[name]
    assert visual.conv1.kernel_size == (kernel, kernel) and visual.conv1.stride == (2, 2)
    assert visual.conv1.padding == (kernel // 2, kernel // 2)
    assert visual.conv1.out_channels == 48
    assert visual.layer1[0].downsample is None  # a 4w-wide stem: no 1x1 projection into layer1
    assert isinstance(visual.layer1[0], BasicBlock) and visual.layer4[0].downsample[0].stride == (2, 2)
    assert isinstance(visual.attnpool, AttentionPool2d) and visual.attnpool.num_heads == 384 // 64
    assert visual.attnpool.positional_embedding.shape == (1 + 7 * 7, 384)
    assert visual.attnpool.c_proj.out_features == D
    for key, param in visual.named_parameters():  # no zero-init of the blocks' last BatchNorm
        if key.endswith(("bn1.weight", "bn2.weight")):
            assert torch.equal(param, torch.ones_like(param)), key
    std = 384 ** -0.5  # the attention pool initialised as ModifiedResNet's
    assert abs(visual.attnpool.q_proj.weight.std().item() - std) < 0.1 * std
    torch.manual_seed(0)
    first = create_clip(name).state_dict()
    torch.manual_seed(0)
    assert all(torch.equal(first[k], v) for k, v in create_clip(name).state_dict().items())  # seeded
    with torch.no_grad():  # a drop-in clip.visual: encode_image is the attention-pooled trunk
        images = _images((224, 224))
        encoded = model.eval().encode_image(images)
        torch.testing.assert_close(encoded, visual.attnpool(_reference_trunk(visual, images, 32)), rtol=1e-4,
                                   atol=1e-5)


# ---------------------------------------------------------------------------------------------- geometry
# documented shapes and grid_for against the feature map: tests/test_clip_resnet.py (both towers)
@pytest.mark.parametrize("stride", [16, 32])
@pytest.mark.parametrize("image_size", [(250, 122), (97, 33), (64, 32), (33, 17)])
def test_grid_is_the_ceiling_of_size_over_stride(image_size, stride):
    expected = tuple(-(-side // stride) for side in image_size)
    assert _backbone((128, 64), stride).grid_for(image_size) == expected


# ---------------------------------------------------------------------------------------------- forward
@pytest.mark.parametrize("name", sorted(STEMS))
@pytest.mark.parametrize("stride", [16, 32])
def test_forward_is_the_written_out_trunk_and_open_clips_attention_pool(stride, name):
    backbone = _backbone((128, 64), stride, name=name).eval()
    images = _images((128, 64))
    with torch.no_grad():
        cls, patches = backbone(images)
        features = _reference_trunk(backbone.visual, images, stride)
        torch.testing.assert_close(backbone.feature_map(images), features, rtol=1e-5, atol=1e-5)
        assert torch.equal(cls, backbone.visual.attnpool(backbone.feature_map(images)))
        tokens = features.flatten(2).transpose(1, 2)  # (N, L, C)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1) \
            + backbone.visual.attnpool.positional_embedding
        expected = _reference_attention(backbone.visual.attnpool, tokens)
    torch.testing.assert_close(cls, expected[:, 0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(patches, expected[:, 1:], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------- loading
def test_load_open_clip_state_dict_written_at_random_init(tmp_path):
    torch.manual_seed(4)
    source = create_clip(NAME)
    wrapped = {"state_dict": {"module." + k: v for k, v in source.state_dict().items()}}  # DataParallel
    torch.save(wrapped, tmp_path / "rn10.pt")
    torch.manual_seed(5)  # another random init, then overwritten by the file
    loaded = create_clip(NAME, str(tmp_path / "rn10.pt"))
    state = loaded.state_dict()
    assert all(torch.equal(state[k], v) for k, v in source.state_dict().items())
    cfg = setup_cfg(None, ["profd.clip.name", NAME, "profd.clip.pretrained", str(tmp_path / "rn10.pt"),
                           "data.height", "128", "data.width", "64"])
    model = build_profd_model(cfg, 3)
    assert torch.equal(model.backbone.visual.layer4[0].conv2.weight, source.visual.layer4[0].conv2.weight)
    assert model.backbone.visual.layer4[0].conv1.stride == (1, 1)  # last stride 1 by default


@pytest.mark.parametrize("other", ["tiny_rn", "tiny_rn10"])
def test_a_checkpoint_of_another_tower_does_not_fit(tmp_path, other):
    torch.save(create_clip(other).state_dict(), tmp_path / "rn.pt")
    with pytest.raises(WeightsError, match=NAME) as err:
        create_clip(NAME, str(tmp_path / "rn.pt"))
    assert "\n" not in str(err.value) and "rn.pt" in str(err.value)
    if other == "tiny_rn10":  # the same tower but for the stem: the mismatch is named
        assert "conv1.weight" in str(err.value)


@pytest.mark.parametrize("kernel", [0, 4, -3])
def test_the_stem_kernel_must_be_odd_and_positive(kernel):
    with pytest.raises(ValueError, match=f"stem_kernel must be odd and positive.*got {kernel}"):
        BasicBlockResNet([1, 1, 1, 1], D, width=12, stem_kernel=kernel)


# ---------------------------------------------------------------------------------------------- ProFD
@pytest.mark.parametrize("stride", [16, 32])
def test_profd_trains_one_step_with_every_loss_finite(stride):
    torch.manual_seed(0)
    model = ProFD(create_clip(NAME), 4, part_names=PARTS, image_size=(128, 64), stride=stride,
                  tokenizer=TOKENIZER).train()
    grid = GRIDS[((128, 64), stride)]
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(8, 3, 128, 64, generator=gen)
    masks = torch.softmax(3 * torch.randn(8, K + 1, 32, 16, generator=gen), dim=1)
    pids = torch.arange(4).repeat_interleave(2)
    labels = model.patch_labels(masks)
    assert torch.equal(labels, torch.softmax(64.0 * F.avg_pool2d(masks, stride // 4), dim=1))  # S x S cells
    out = model(images)
    assert out.spa_attention.shape == (8, K + 2, grid[0] * grid[1])
    assert out.alignment_scores.shape == (8, K + 1, *grid)
    targets = ProFDTargets(pids=pids, masks=masks, visibility=torch.rand(8, K + 1, generator=gen) > 0.3,
                           patch_labels=labels)
    losses = {**ProFDCriterion()(out, targets), **model.memory.losses(out.global_bn, out.concat_bn, pids)}
    assert len(losses) == 10 and all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    params = dict(model.named_parameters())
    for name in ("backbone.visual.conv1.weight", "backbone.visual.layer1.0.bn2.weight",
                 "backbone.visual.layer4.0.downsample.0.weight",
                 "backbone.visual.attnpool.positional_embedding",
                 "backbone.visual.attnpool.q_proj.weight", "decoder.layers.0.spa_attn.in_proj_weight"):
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name
    assert "backbone.visual.attnpool.positional_embedding" in model.no_weight_decay()
