"""CLIP ResNet backbones (tiny_rn, RN50): geometry, attention pool, loading, ProFD on top (CPU, no weights).

References are built independently: the feature map against open_clip's unmodified ``ModifiedResNet``
pieces (an open_clip ``Bottleneck`` built with stride 1 for last stride 1), the global feature against
open_clip's own ``attnpool``, the patch tokens against the attention written out with plain tensor
operations, the positional grid against ``F.interpolate`` (the official / CLIP-ReID bilinear resize), the
patch labels against ``F.avg_pool2d`` with the cell size S.
"""
import copy
import os
import time
import warnings
from typing import Tuple

import open_clip
import open_clip.pretrained
import pytest
import torch
import torch.nn.functional as F
from conftest import load_main, run_dir, tiny_run_opts
from open_clip.model import CLIP
from open_clip.modified_resnet import Bottleneck, ModifiedResNet
from open_clip.tokenizer import SimpleTokenizer

from profd_plugin.config import setup_cfg
from profd_plugin.data.masks import part_names
from profd_plugin.errors import ConfigError, WeightsError
from profd_plugin.losses import ProFDCriterion, ProFDTargets
from profd_plugin.modeling import ProFD, build_profd_model, clip_backbone
from profd_plugin.modeling.clip_backbone import TINY_RN_CLIP_CONFIG, ClipResNetBackbone, create_clip
from profd_plugin.modeling.targets import patch_labels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the tiny_rn config's values, written out: the JSON file registered with open_clip must keep them
TINY_RN_VALUES = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 224, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
CHANNELS = 16 * 32  # feature-map channels C = width * 32
HEADS = CHANNELS // 64  # open_clip: width * 32 // head_width (64)
D = TINY_RN_VALUES["embed_dim"]
NATIVE_GRID = (7, 7)  # 224 / 32: the attention pool's pretraining grid
OPENAI_META = dict(input_resolution=224, context_length=77, vocab_size=49408)
PARTS = part_names("five_v")
K = len(PARTS)
TOKENIZER = SimpleTokenizer(context_length=77)
#: documented shapes: (image size, stride) -> feature-map grid
GRIDS = {((256, 128), 32): (8, 4), ((256, 128), 16): (16, 8),
         ((128, 64), 32): (4, 2), ((128, 64), 16): (8, 4)}


def _tiny_rn(seed: int = 0) -> CLIP:
    torch.manual_seed(seed)
    return CLIP(**TINY_RN_VALUES, quick_gelu=True)


def _backbone(image_size: Tuple[int, int], stride: int, seed: int = 0) -> ClipResNetBackbone:
    return ClipResNetBackbone(_tiny_rn(seed).visual, image_size=image_size, stride=stride)


def _images(size: Tuple[int, int], n: int = 2, seed: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(seed))


def _bilinear(pos: torch.Tensor, old: Tuple[int, int], new: Tuple[int, int]) -> torch.Tensor:
    """CLIP-ReID's ``resize_pos_embed``: mean-token embedding kept, grid bilinear, align_corners off."""
    grid = pos[1:].reshape(1, *old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new, mode="bilinear", align_corners=False)
    return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(new[0] * new[1], -1)])


def _reference_feature_map(visual: ModifiedResNet, images: torch.Tensor, stride: int) -> torch.Tensor:
    """layer4 output from open_clip's unmodified blocks; last stride 1 = a stride-1 open_clip Bottleneck."""
    x = visual.layer3(visual.layer2(visual.layer1(visual.stem(images))))
    first = visual.layer4[0]
    if stride == 16:
        block = Bottleneck(first.conv1.in_channels, first.conv1.out_channels, stride=1)
        block.load_state_dict(first.state_dict())  # same tensors: the surgery changed no parameter
        first = block.train(visual.training)
    return visual.layer4[1:](first(x))


def _reference_attention(pool: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Multi-head attention of every token over all tokens, written out: (N, 1+L, C) -> (N, 1+L, D)."""
    n, length, channels = tokens.shape
    head_dim = channels // pool.num_heads

    def heads(x):  # (N, 1+L, C) -> (N, heads, 1+L, head_dim)
        return x.reshape(n, length, pool.num_heads, head_dim).transpose(1, 2)

    q, k, v = heads(pool.q_proj(tokens)), heads(pool.k_proj(tokens)), heads(pool.v_proj(tokens))
    weights = torch.softmax(q @ k.transpose(-1, -2) / head_dim ** 0.5, dim=-1)
    return pool.c_proj((weights @ v).transpose(1, 2).reshape(n, length, channels))


# ---------------------------------------------------------------------------------------------- creation
def test_tiny_rn_config_registered_with_open_clip():
    assert TINY_RN_CLIP_CONFIG == TINY_RN_VALUES
    model = create_clip("tiny_rn")
    assert open_clip.get_model_config("tiny_rn") == TINY_RN_VALUES
    assert isinstance(model.visual, ModifiedResNet) and model.visual.attnpool.num_heads == HEADS
    assert model.visual.attnpool.positional_embedding.shape == (1 + 7 * 7, CHANNELS)
    reference = _tiny_rn(0)
    torch.manual_seed(0)
    state = create_clip("tiny_rn").state_dict()
    assert all(torch.equal(state[key], value) for key, value in reference.state_dict().items())


@pytest.mark.parametrize("stride", [12, 8, 64])
def test_resnet_stride_must_be_16_or_32(stride):
    with pytest.raises(ConfigError, match="profd.clip.stride") as err:
        _backbone((128, 64), stride)
    assert "16" in str(err.value) and "32" in str(err.value) and "\n" not in str(err.value)
    cfg = setup_cfg(None, ["profd.clip.name", "tiny_rn", "profd.clip.pretrained", "none", "profd.clip.stride",
                           str(stride), "data.height", "128", "data.width", "64"])
    with pytest.raises(ConfigError, match="profd.clip.stride"):
        build_profd_model(cfg, 3)


# ---------------------------------------------------------------------------------------------- geometry
#: the plugin's small CLIP ResNet towers (open_clip's ModifiedResNet; the BasicBlock tower, width 12) -> C
TOWERS = {"tiny_rn": CHANNELS, "tiny_rn10": 12 * 32, "tiny_rn10_k3": 12 * 32}
#: input sizes whose feature-map grid is checked; the BasicBlock tower (ceil arithmetic) also takes (33, 17)
GRID_SIZES = [(250, 122), (97, 33), (64, 32), (32, 32)]
GRID_CASES = [(name, size) for name in TOWERS for size in GRID_SIZES] + [
    ("tiny_rn10", (33, 17)), ("tiny_rn10_k3", (33, 17))]


def _tower(name: str, image_size: Tuple[int, int], stride: int, seed: int = 0) -> ClipResNetBackbone:
    """The backbone of the plugin config ``name`` at random init (``tiny_rn``: _backbone's weights)."""
    torch.manual_seed(seed)
    return ClipResNetBackbone(create_clip(name).visual, image_size=image_size, stride=stride)


@pytest.mark.parametrize("name", list(TOWERS))
@pytest.mark.parametrize("image_size, stride", list(GRIDS))
def test_documented_shapes(name, image_size, stride):
    backbone = _tower(name, image_size, stride).eval()
    grid, channels = GRIDS[(image_size, stride)], TOWERS[name]
    assert backbone.grid_size == backbone.grid_for(image_size) == grid
    assert backbone.patch_size == backbone.stride == stride and backbone.embed_dim == D
    assert backbone.visual.attnpool.positional_embedding.shape == (1 + grid[0] * grid[1], channels)
    with torch.no_grad():
        features = backbone.feature_map(_images(image_size))
        cls, patches = backbone(_images(image_size))
    assert features.shape == (2, channels, *grid)
    assert cls.shape == (2, D) and patches.shape == (2, grid[0] * grid[1], D)


@pytest.mark.parametrize("stride", [16, 32])
@pytest.mark.parametrize("name, image_size", GRID_CASES)
def test_grid_for_is_the_feature_map_of_any_size(name, image_size, stride):
    backbone = _tower(name, (128, 64), stride).eval()
    with torch.no_grad():
        features = backbone.feature_map(_images(image_size, n=1))
    assert tuple(features.shape[-2:]) == backbone.grid_for(image_size)


def test_input_too_small_for_the_stride():
    with pytest.raises(ValueError, match="too small"):
        _backbone((128, 64), 32)(torch.zeros(1, 3, 16, 64))
    with pytest.raises(ValueError, match="too small"):
        _backbone((128, 64), 16).grid_for((8, 64))


# ---------------------------------------------------------------------------------------------- forward
@pytest.mark.parametrize("stride", [16, 32])
def test_forward_is_open_clips_resnet_and_attention_pool(stride):
    """Feature map = open_clip's blocks (stride-1 Bottleneck for last stride 1), token 0 = open_clip's
    ``attnpool`` output, tokens 1.. = every feature-map token as a query of the same attention."""
    image_size = (128, 64)
    backbone = _backbone(image_size, stride).eval()
    native = _tiny_rn().visual.attnpool.positional_embedding.detach()
    pos = backbone.visual.attnpool.positional_embedding
    grid = GRIDS[(image_size, stride)]
    assert torch.equal(pos, _bilinear(native, NATIVE_GRID, grid))  # CLIP-ReID's resize, bit-identical
    images = _images(image_size)
    with torch.no_grad():
        cls, patches = backbone(images)
        features = _reference_feature_map(backbone.visual, images, stride)
        assert torch.equal(backbone.feature_map(images), features)
        assert torch.equal(cls, backbone.visual.attnpool(features))  # open_clip's pool at the built grid
        tokens = features.flatten(2).transpose(1, 2)  # (N, L, C)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1) + pos  # (N, 1+L, C)
        expected = _reference_attention(backbone.visual.attnpool, tokens)
    torch.testing.assert_close(cls, expected[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(patches, expected[:, 1:], rtol=1e-5, atol=1e-5)


def test_stride_32_at_224_is_open_clips_image_encoder():
    """Bit for bit open_clip's encoder run channels-last (the trunk's layout here, as built), and equal up
    to float summation order to it in the default layout."""
    backbone = _backbone((224, 224), 32).eval()
    assert backbone.visual.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    reference = _tiny_rn().visual.eval()
    images = _images((224, 224))
    with torch.no_grad():
        cls = backbone(images)[0]
        torch.testing.assert_close(cls, reference(images), rtol=1e-5, atol=1e-6)
        reference.to(memory_format=torch.channels_last)
        assert torch.equal(cls, reference(images.contiguous(memory_format=torch.channels_last)))


@pytest.mark.parametrize("stride", [16, 32])
def test_evaluates_at_another_size_like_a_backbone_regridded_to_it(stride):
    backbone = _backbone((128, 64), stride).eval()
    with torch.no_grad():
        backbone.visual.attnpool.positional_embedding.add_(torch.randn_like(
            backbone.visual.attnpool.positional_embedding))
    regridded = copy.deepcopy(backbone)
    regridded.set_image_size((256, 128))
    assert regridded.grid_size == GRIDS[((256, 128), stride)]
    images = _images((256, 128))
    with torch.no_grad():
        for got, expected in zip(backbone(images), regridded(images)):
            assert torch.equal(got, expected)
    assert backbone.grid_size == GRIDS[((128, 64), stride)]  # the parameter is not re-gridded


# ---------------------------------------------------------------------------------------------- loading
def _assert_same_clip(model: CLIP, reference: CLIP) -> None:
    state = model.state_dict()
    for key, value in reference.state_dict().items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), key
    model.eval(), reference.eval()
    images, text = _images((224, 224)), torch.randint(0, 49408, (2, 77))
    with torch.no_grad():
        assert torch.equal(model.encode_image(images), reference.encode_image(images))
        assert torch.equal(model.encode_text(text), reference.encode_text(text))


def test_load_open_clip_state_dict(tmp_path):
    source = _tiny_rn(4)
    torch.save({"state_dict": {"module." + k: v for k, v in source.state_dict().items()}}, tmp_path / "rn.pt")
    _assert_same_clip(create_clip("tiny_rn", str(tmp_path / "rn.pt")), source)
    cfg = setup_cfg(None, ["profd.clip.name", "tiny_rn", "profd.clip.pretrained", str(tmp_path / "rn.pt"),
                           "data.height", "128", "data.width", "64"])
    model = build_profd_model(cfg, 3)  # last stride 1 by default (profd.clip.stride 16)
    visual, reference = model.backbone.visual, source.visual
    assert torch.equal(visual.layer4[0].conv2.weight, reference.layer4[0].conv2.weight)
    assert torch.equal(visual.attnpool.c_proj.weight, reference.attnpool.c_proj.weight)
    assert torch.equal(visual.attnpool.positional_embedding,
                       _bilinear(reference.attnpool.positional_embedding.detach(), NATIVE_GRID, (8, 4)))


def test_load_openai_jit_archive(tmp_path):
    """An OpenAI-style TorchScript release (fp16, metadata tensors, no causal-mask buffer)."""
    source = _tiny_rn(5).eval()
    traced_model = copy.deepcopy(source)
    del traced_model._buffers["attn_mask"]
    for key, value in OPENAI_META.items():
        traced_model.__dict__.pop(key, None)
        traced_model.register_buffer(key, torch.tensor(value))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(traced_model, {"encode_image": (torch.ones(1, 3, 224, 224),)},
                                        check_trace=False)
        torch.jit.save(traced.half(), str(tmp_path / "RN.pt"))
    reference = copy.deepcopy(source)
    reference.load_state_dict({k: v.half().to(v.dtype) if v.is_floating_point() else v
                               for k, v in source.state_dict().items()})
    _assert_same_clip(create_clip("tiny_rn", str(tmp_path / "RN.pt")), reference)


def test_vit_checkpoint_does_not_fit_a_resnet(tmp_path):
    torch.save(create_clip("tiny").state_dict(), tmp_path / "vit.pt")
    with pytest.raises(WeightsError, match="tiny_rn") as err:
        create_clip("tiny_rn", str(tmp_path / "vit.pt"))
    assert "\n" not in str(err.value) and "vit.pt" in str(err.value)


def test_rn50_openai_offline_fails_fast_with_instructions(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", offline)
    monkeypatch.setattr(clip_backbone, "_cached_weights", lambda *a, **k: None)
    monkeypatch.setattr(clip_backbone, "_host_reachable", lambda host: False)
    start = time.monotonic()
    with pytest.raises(WeightsError) as err:
        create_clip("RN50", "openai")
    assert time.monotonic() - start < 5.0
    message = str(err.value)
    assert "\n" not in message and "OpenAI CLIP RN50 checkpoint" in message and "RN50.pt" in message


# ---------------------------------------------------------------------------------------------- ProFD
def _profd(stride: int) -> ProFD:
    torch.manual_seed(0)
    return ProFD(create_clip("tiny_rn"), 4, part_names=PARTS, image_size=(128, 64), stride=stride,
                 tokenizer=TOKENIZER)


@pytest.mark.parametrize("stride", [16, 32])
def test_profd_trains_one_step_with_every_loss_finite(stride):
    model = _profd(stride).train()
    grid = GRIDS[((128, 64), stride)]
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(8, 3, 128, 64, generator=gen)
    masks = torch.softmax(3 * torch.randn(8, K + 1, 32, 16, generator=gen), dim=1)
    pids = torch.arange(4).repeat_interleave(2)
    labels = model.patch_labels(masks)
    cell = stride // 4  # masks at image / 4: the S x S cell of a feature-map position is S/4 mask pixels
    assert torch.equal(labels, torch.softmax(64.0 * F.avg_pool2d(masks, cell), dim=1))
    assert torch.equal(labels, patch_labels(masks, grid_size=grid, image_size=(128, 64), patch_size=stride,
                                            stride=stride, label_scale=64.0))
    out = model(images)
    assert out.spa_attention.shape == (8, K + 2, grid[0] * grid[1])
    assert out.alignment_scores.shape == (8, K + 1, *grid)
    assert out.global_feat.shape == (8, D) and out.part_feats.shape == (8, K, D)
    targets = ProFDTargets(pids=pids, masks=masks, visibility=torch.rand(8, K + 1, generator=gen) > 0.3,
                           patch_labels=labels)
    losses = {**ProFDCriterion()(out, targets), **model.memory.losses(out.global_bn, out.concat_bn, pids)}
    assert len(losses) == 10 and all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    params = dict(model.named_parameters())
    for name in ("backbone.visual.conv1.weight", "backbone.visual.layer4.0.bn3.weight",  # bn3: zero-init
                 "backbone.visual.layer4.0.downsample.0.weight",
                 "backbone.visual.attnpool.positional_embedding", "backbone.visual.attnpool.q_proj.weight",
                 "backbone.visual.attnpool.c_proj.weight", "decoder.layers.0.spa_attn.in_proj_weight"):
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name
    assert "backbone.visual.attnpool.positional_embedding" in model.no_weight_decay()
    with torch.no_grad():
        emb = model.eval()(_images((256, 128), n=3), return_attention=True)
    assert emb.attention.shape == (3, K + 2, 4 * grid[0] * grid[1])  # any eval size: its own grid


#: (config, CLIP name, positional parameter, its trained shape at 64x32): the main job (tiny_rn10 at stride
#: 32, 2x1 map, 384 channels) and the tiny-ViT config (4x2 patches, width 128) train and evaluate through
#: tools/main.py alike
MAIN_CASES = [
    ("profd_synthetic.yaml", "tiny_rn10", "backbone.visual.attnpool.positional_embedding",
     (1 + 2 * 1, 384)),
    ("profd_synthetic_vit.yaml", "tiny", "backbone.visual.positional_embedding", (1 + 4 * 2, 128)),
]


@pytest.mark.parametrize("config_name, clip_name, positional, shape", MAIN_CASES)
def test_main_trains_and_evaluates_both_synthetic_configs(synthetic_root, tmp_path, capsys, config_name,
                                                          clip_name, positional, shape):
    main = load_main()
    config = os.path.join(ROOT, "configs", config_name)
    assert setup_cfg(config).profd.clip.name == clip_name
    assert main.main(["--config-file", config, *tiny_run_opts(synthetic_root, str(tmp_path / "train"))]) == 0
    checkpoint = os.path.join(run_dir(str(tmp_path / "train")), "model", "model.pth.tar-1")
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert state[positional].shape == shape  # re-gridded to the 64x32 input
    eval_opts = tiny_run_opts(synthetic_root, str(tmp_path / "eval"), **{"model.load_weights": checkpoint})
    assert main.main(["--config-file", config, "--eval-only", *eval_opts]) == 0
    assert "synthetic_occluded" in capsys.readouterr().out
    run_dir(str(tmp_path / "eval"), kind="eval")


# ---------------------------------------------------------------------------------------------- RN50
@pytest.fixture(scope="module")
def rn50_openai_file(tmp_path_factory):
    """A random-init full RN50 saved as an OpenAI (fp16 + metadata) state dict."""
    torch.manual_seed(0)
    source = CLIP(**open_clip.get_model_config("RN50"), quick_gelu=True)
    state = {k: v.half() if v.is_floating_point() else v for k, v in source.state_dict().items()}
    state.update({k: torch.tensor(v) for k, v in OPENAI_META.items()})
    path = tmp_path_factory.mktemp("rn50") / "RN50.pt"
    torch.save(state, path)
    return str(path), state


def test_rn50_config_loads_openai_weights_and_trains_one_step(rn50_openai_file):
    path, state = rn50_openai_file
    config = os.path.join(ROOT, "configs", "profd_rn50_occ_duke.yaml")
    cfg = setup_cfg(config, ["profd.clip.pretrained", path])
    assert cfg.profd.clip.name == "RN50" and cfg.profd.clip.stride == 16 and cfg.train.lr == 3.5e-4
    assert cfg.profd.optim.backbone_lr_mult == 1.0 and cfg.profd.train.warmup_factor == 0.01
    assert cfg.train.max_epoch == 120 and list(cfg.train.stepsize) == [40, 70]
    model = build_profd_model(cfg, num_classes=2)
    visual = model.backbone.visual
    for key in ("layer4.0.downsample.0.weight", "layer4.2.bn3.running_var", "attnpool.c_proj.weight"):
        assert torch.equal(visual.state_dict()[key], state["visual." + key].float()), key
    native = state["visual.attnpool.positional_embedding"].float()
    assert torch.equal(visual.attnpool.positional_embedding, _bilinear(native, NATIVE_GRID, (16, 8)))
    block = "transformer.resblocks.11.mlp.c_fc.weight"
    assert torch.equal(model.prompt_learner.text_encoder.state_dict()[block], state[block].float())
    assert model.grid_size == (16, 8) and model.embed_dim == 1024

    gen = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 256, 128, generator=gen)
    masks = torch.softmax(3 * torch.randn(4, K + 1, 64, 32, generator=gen), dim=1)
    pids = torch.tensor([0, 0, 1, 1])
    out = model.train()(images)
    targets = ProFDTargets(pids=pids, masks=masks, visibility=masks.amax(dim=(2, 3)) > 0.3,
                           patch_labels=model.patch_labels(masks))
    losses = {**ProFDCriterion()(out, targets), **model.memory.losses(out.global_bn, out.concat_bn, pids)}
    assert len(losses) == 10 and all(torch.isfinite(v) for v in losses.values()), losses
    assert out.part_feats.shape == (4, K, 1024) and out.spa_attention.shape == (4, K + 2, 16 * 8)
